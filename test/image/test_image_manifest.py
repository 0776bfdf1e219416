"""The built image's Python distributions: the agent and locks/agent.txt, nothing more.

The astara element records every distribution in the image's ``/opt/astara`` venv in
``/etc/dib-manifests/astara-python-packages``, which diskimage-builder copies to
``out/<image>.d/dib-manifests/``. Run with the boot test (``make image-test``), which
also reads the list in the booted VM.
"""
import pytest

from astara_lab.image import REPO_ROOT, outputs

MANIFEST = outputs()["manifests"] / "astara-python-packages"

pytestmark = pytest.mark.skipif(not MANIFEST.exists(),
                                reason=f"no {MANIFEST}: make image (make image-test builds it)")


def test_image_venv_holds_exactly_the_agent_lock(assert_agent_set):
    assert_agent_set(MANIFEST.read_text(), MANIFEST.relative_to(REPO_ROOT))
