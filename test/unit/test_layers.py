"""The architecture as a test: the layering contracts in ``.importlinter`` (product code
never imports the lab; the model and renderers stay pure; the agent stands alone)."""
import pathlib
import subprocess
import sys

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_import_contracts_are_kept():
    lint_imports = pathlib.Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint_imports), "--no-cache", "--config",
                             str(REPO_ROOT / ".importlinter")],
                            cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout
