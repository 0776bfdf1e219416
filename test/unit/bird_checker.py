"""BIRD's own parser (`bird -p`) for the tests of rendered configurations; skipped where
bird is not installed."""
import shutil
import subprocess

import pytest

needs_bird = pytest.mark.skipif(shutil.which("bird") is None, reason="bird is not installed")


def bird_parse(tmp_path, text):
    conf = tmp_path / "bird.conf"
    conf.write_text(text)
    return subprocess.run(["bird", "-p", "-c", str(conf)], capture_output=True, text=True,
                          timeout=30)
