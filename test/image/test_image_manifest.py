"""The built image's Python distributions: the agent and locks/agent.txt, nothing more.

The astara element records every distribution in the image's ``/opt/astara`` venv in
``/etc/dib-manifests/astara-python-packages``, which diskimage-builder copies to
``out/<image>.d/dib-manifests/``. Run with the boot test (``make image-test``), which
also reads the list in the booted VM.
"""
from astara_lab.image import REPO_ROOT


def test_image_venv_holds_exactly_the_agent_lock(built_image, assert_agent_set):
    manifest = built_image["manifests"] / "astara-python-packages"
    assert_agent_set(manifest.read_text(), manifest.relative_to(REPO_ROOT))
