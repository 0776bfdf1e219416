"""The built image's Python distributions: the agent and locks/agent.txt, nothing more.

The astara element records every distribution in the image's ``/opt/astara`` venv in
``/etc/dib-manifests/astara-python-packages``, which diskimage-builder copies to
``out/<image>.d/dib-manifests/``. Run with the boot test (``make image-test``), which
also reads the list in the booted VM.
"""
import os
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
IMAGE_NAME = os.environ.get("ASTARA_IMAGE_NAME", "astara")
MANIFEST = REPO / "out" / f"{IMAGE_NAME}.d" / "dib-manifests" / "astara-python-packages"

pytestmark = [
    pytest.mark.skipif(not MANIFEST.exists(), reason=f"no {MANIFEST}: make image"),
]


def test_image_venv_holds_exactly_the_agent_lock(assert_agent_set):
    assert_agent_set(MANIFEST.read_text(), MANIFEST.relative_to(REPO))
