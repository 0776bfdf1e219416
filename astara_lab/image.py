"""The appliance image in ``out/``: built when missing or stale, reused otherwise.

``out/astara.qcow2`` (+ ``.vmlinuz``, ``.initrd``, ``.d/dib-manifests/``) is current when
``out/astara.inputs`` holds the digest of everything the image is made of:

* ``diskimage-builder/`` (the elements; not their documentation), ``scripts/build-image``
  and ``scripts/build-agent-wheel``;
* the agent's wheel inputs: ``packaging/astara-router/``, ``requirements.txt`` and
  ``astara_router/`` (sources and data, not caches);
* ``locks/agent.txt`` (the agent's dependencies);
* the diskimage-builder version and the build's settings (``DIB_RELEASE``, mirrors).

Debian's packages are not inputs: a rebuild takes the mirror's current versions (CI builds
once per run anyway, on a fresh machine). ``ensure()`` builds under an exclusive lock
(``out/.build.lock``), so concurrent callers wait for one build instead of starting two.

    python -m astara_lab.image ensure [--force]   # build if missing or stale (make image)
    python -m astara_lab.image digest             # the inputs digest
    python -m astara_lab.image status             # current, stale or missing
"""
import argparse
import configparser
import contextlib
import fcntl
import hashlib
import os
import pathlib
import re
import shutil
import subprocess
import sys
import time

import yaml

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
INPUT_TREES = ("diskimage-builder", "packaging/astara-router", "astara_router")
INPUT_FILES = ("scripts/build-image", "scripts/build-agent-wheel", "requirements.txt",
               "locks/agent.txt")
BUILD_SETTINGS = ("DIB_RELEASE", "DIB_DISTRIBUTION_MIRROR", "DIB_DEBIAN_SECURITY_MIRROR",
                  "ASTARA_IMAGE_TYPES", "DIB_ASTARA_ENABLED_SERVICES")
SKIPPED_PARTS = {"__pycache__", ".pytest_cache"}
SKIPPED_SUFFIXES = (".pyc", ".pyo", ".rst", ".md")  # caches and documentation
ASTARA_ELEMENT = REPO_ROOT / "diskimage-builder" / "elements" / "astara"
BUILD_ONLY = {"python3-venv"}  # package-installs.yaml installs it, 90-astara-lean purges it


class ImageError(Exception):
    pass


def parse_unit(path):
    """A systemd unit file as a ConfigParser (sections, case-sensitive keys)."""
    parser = configparser.ConfigParser(
        interpolation=None, strict=False, delimiters=("=",),
        comment_prefixes=("#", ";"), empty_lines_in_values=False)
    parser.optionxform = str  # systemd keys are case-sensitive
    parser.read(path)
    return parser


def image_name():
    return os.environ.get("ASTARA_IMAGE_NAME", "astara")


def outputs(out_dir=None, name=None):
    """{kind: path} of the image files ``scripts/build-image`` writes."""
    out = pathlib.Path(out_dir or REPO_ROOT / "out")
    name = name or image_name()
    return {"qcow2": out / f"{name}.qcow2", "vmlinuz": out / f"{name}.vmlinuz",
            "initrd": out / f"{name}.initrd",
            "manifests": out / f"{name}.d" / "dib-manifests"}


def stamp_path(out_dir=None, name=None):
    return outputs(out_dir, name)["qcow2"].with_suffix(".inputs")


def input_files(root=REPO_ROOT):
    """Every file the image is made of, relative to ``root``, sorted."""
    root = pathlib.Path(root)
    files = [root / f for f in INPUT_FILES]
    for tree in INPUT_TREES:
        for path in (root / tree).rglob("*"):
            relative = path.relative_to(root)
            if path.is_file() and not SKIPPED_PARTS & set(relative.parts) \
                    and not path.name.endswith(SKIPPED_SUFFIXES):
                files.append(path)
    return sorted(p.relative_to(root) for p in files)


def dib_version():
    try:
        from importlib.metadata import version
        return version("diskimage-builder")
    except Exception:  # noqa: BLE001 - not installed: the build fails on its own
        return "none"


def inputs_digest(root=REPO_ROOT, environ=None):
    """sha256 over the inputs' paths, modes and contents, the diskimage-builder version and
    the build settings."""
    root = pathlib.Path(root)
    environ = os.environ if environ is None else environ
    digest = hashlib.sha256()
    for relative in input_files(root):
        path = root / relative
        digest.update(f"{relative}\0{path.stat().st_mode & 0o111:o}\0".encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    digest.update(f"diskimage-builder {dib_version()}\n".encode())
    for key in BUILD_SETTINGS:
        digest.update(f"{key}={environ.get(key, '')}\n".encode())
    return digest.hexdigest()


def status(out_dir=None, name=None, root=REPO_ROOT):
    """"missing", "stale" or "current"."""
    files = outputs(out_dir, name)
    if not all(path.exists() for path in files.values()):
        return "missing"
    try:
        recorded = stamp_path(out_dir, name).read_text().strip()
    except OSError:
        return "stale"
    return "current" if recorded == inputs_digest(root) else "stale"


@contextlib.contextmanager
def build_lock(out_dir=None):
    out = pathlib.Path(out_dir or REPO_ROOT / "out")
    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".build.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def ensure(force=False, progress=None, log_path=None, root=REPO_ROOT):
    """Build the image unless it is current; returns (built, seconds). ``progress``:
    called with each line of the build's output (else it goes to stdout)."""
    with build_lock():
        state = "forced" if force else status(root=root)
        if state == "current":
            return False, 0.0
        digest = inputs_digest(root)
        started = time.monotonic()
        stamp = stamp_path()
        stamp.unlink(missing_ok=True)
        # The old image is stale: gone before the build, so diskimage-builder does not
        # keep it as out/<name>-<date>.qcow2 (its default).
        for path in outputs().values():
            if path.is_dir():
                shutil.rmtree(path.parent)
            else:
                path.unlink(missing_ok=True)
        log = open(log_path, "w") if log_path else None
        try:
            proc = subprocess.Popen(["bash", str(root / "scripts" / "build-image")],
                                    cwd=root, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True, errors="replace")
            tail = []
            for line in proc.stdout:
                tail = (tail + [line])[-40:]
                if log:
                    log.write(line)
                if progress:
                    progress(line.rstrip("\n"))
                else:
                    sys.stdout.write(line)
            if proc.wait() != 0:
                raise ImageError(f"scripts/build-image failed ({proc.returncode}):\n"
                                 + "".join(tail))
        finally:
            if log:
                log.close()
        stamp.write_text(digest + "\n")
        return True, time.monotonic() - started


def allowed_packages(readme_text):
    """The package names (and ``*`` patterns) of the element README's list after
    ``.. allowed-packages``, up to the next section: each item is "- ``name``, ``name``:
    why"; ValueError when the list is missing or an item gives no reason."""
    _, marker, rest = readme_text.partition(".. allowed-packages")
    if not marker:
        raise ValueError("the element README has no '.. allowed-packages' list")
    lines = []
    for line in rest.splitlines():
        if re.fullmatch(r"[-=~^]{3,}", line.strip()):
            lines.pop()  # that was the next section's title
            break
        lines.append(line)
    names = set()
    for item in re.split(r"^- ", "\n".join(lines), flags=re.M)[1:]:
        listed, colon, _why = item.partition("``:")
        if not colon:
            raise ValueError(f"no reason given for: {item.strip()[:60]}")
        names |= set(re.findall(r"``([a-z0-9*][a-z0-9.+*-]*)", listed))
    return names


def runtime_packages(arch="amd64"):
    """What the element's package-installs.yaml installs for ``arch`` and stays in the
    image."""
    wanted = yaml.safe_load((ASTARA_ELEMENT / "package-installs.yaml").read_text())
    return {name for name, spec in wanted.items()
            if (spec or {}).get("arch", arch) == arch} - BUILD_ONLY


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m astara_lab.image",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("ensure", "digest", "status"))
    parser.add_argument("--force", action="store_true", help="ensure: build even if current")
    args = parser.parse_args(argv)
    if args.command == "digest":
        print(inputs_digest())
        return 0
    if args.command == "status":
        print(status())
        return 0
    try:
        built, seconds = ensure(force=args.force)
    except ImageError as exc:
        print(f"image: {exc}", file=sys.stderr)
        return 1
    files = outputs()
    size = files["qcow2"].stat().st_size / 2**20
    if built:
        print(f"image: built {files['qcow2']} ({size:.0f} MiB) in {seconds:.0f}s")
    else:
        print(f"image: {files['qcow2']} ({size:.0f} MiB) is current (inputs unchanged since "
              "its build), reused")
    return 0


if __name__ == "__main__":
    sys.exit(main())
