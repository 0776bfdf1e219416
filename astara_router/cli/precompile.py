"""``python3 -OO -m astara_router.cli.precompile``: write the .opt-2.pyc files of every module
the agent imports, itself included.

The agent runs without docstrings (-OO: cli/api.py), whose byte code Python caches apart
from the plain one; an agent that may not write where its modules are (the image's
``astara-agent`` user, the least-privilege tests) would compile every one of them again at
each start. Run as root by the image build (install.d/60-astara-agent) and by
scripts/install-deps: importing each of the agent's modules writes the files of what they
import, from the standard library to Flask.
"""
import importlib
import pkgutil
import sys

import astara_router


def main():
    if sys.flags.optimize < 2:
        print("astara_router.cli.precompile: run it with python3 -OO", file=sys.stderr)
        return 2
    modules = [info.name for info in pkgutil.walk_packages(astara_router.__path__,
                                                           "astara_router.")]
    for name in modules:
        importlib.import_module(name)
    import gunicorn.workers.gthread  # noqa: F401 (the worker class, imported by name)
    print(f"astara_router.cli.precompile: {len(sys.modules)} modules compiled with -OO")
    return 0


if __name__ == "__main__":
    sys.exit(main())
