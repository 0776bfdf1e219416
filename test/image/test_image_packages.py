"""The built image holds only the Debian packages of the allow-list in the astara element's
README (each with its reason), and every package the appliance needs.

diskimage-builder's dpkg element writes the installed packages to
``out/<image>.d/dib-manifests/dib-manifest-dpkg-<image>``; ``make image-test`` builds the
image first. The list's parser is checked on its own (no image needed).
"""
import fnmatch
import json
import re

import pytest
import yaml

from astara_lab.image import REPO_ROOT, image_name, outputs

ELEMENT = REPO_ROOT / "diskimage-builder" / "elements" / "astara"
MANIFEST = outputs()["manifests"] / f"dib-manifest-dpkg-{image_name()}"
BUILD_ONLY = {"python3-venv"}  # package-installs.yaml installs it, 90-astara-lean purges it


def allowed_packages(readme_text):
    """The package names (and ``*`` patterns) of the list after ``.. allowed-packages``,
    up to the next section: each item is "- ``name``, ``name``: why"."""
    _, marker, rest = readme_text.partition(".. allowed-packages")
    assert marker, "the element README has no '.. allowed-packages' list"
    lines = []
    for line in rest.splitlines():
        if re.fullmatch(r"[-=~^]{3,}", line.strip()):
            lines.pop()  # that was the next section's title
            break
        lines.append(line)
    names = set()
    for item in re.split(r"^- ", "\n".join(lines), flags=re.M)[1:]:
        listed, colon, _why = item.partition("``:")
        assert colon, f"no reason given for: {item.strip()[:60]}"
        names |= set(re.findall(r"``([a-z0-9*][a-z0-9.+*-]*)", listed))
    return names


def installed_packages(manifest_text):
    return {p["package"].split(":")[0] for p in json.loads(manifest_text)["packages"]
            if p.get("status", "ii").startswith("ii")}


def runtime_packages(arch="amd64"):
    """What package-installs.yaml installs for ``arch`` and stays in the image."""
    wanted = yaml.safe_load((ELEMENT / "package-installs.yaml").read_text())
    return {name for name, spec in wanted.items()
            if (spec or {}).get("arch", arch) == arch} - BUILD_ONLY


def test_allow_list_parses_its_section_only():
    text = ("intro ``nope``\n\n.. allowed-packages\n\n- ``bash``, ``linux-image-*-cloud-amd64``:"
            " why\n- ``libc6``,\n  ``zlib1g``: why ``x`` too\n\nNext\n----\n\n- ``after``: no\n")
    assert allowed_packages(text) == {"bash", "linux-image-*-cloud-amd64", "libc6", "zlib1g"}
    with pytest.raises(AssertionError, match="no reason"):
        allowed_packages(".. allowed-packages\n\n- ``bash``\n")


def test_every_runtime_package_is_allowed():
    allowed = allowed_packages((ELEMENT / "README.rst").read_text())
    missing = {p for p in runtime_packages() if not any(fnmatch.fnmatchcase(p, a)
                                                        for a in allowed)}
    assert not missing, f"package-installs.yaml installs {sorted(missing)}, which the " \
                        "README's allow-list does not explain"


@pytest.mark.skipif(not MANIFEST.exists(), reason=f"no {MANIFEST}: make image "
                                                  "(make image-test builds it)")
def test_image_holds_only_allowed_packages():
    allowed = allowed_packages((ELEMENT / "README.rst").read_text())
    installed = installed_packages(MANIFEST.read_text())
    extra = sorted(p for p in installed if not any(fnmatch.fnmatchcase(p, a)
                                                   for a in allowed))
    assert not extra, f"the image holds packages that are not on the allow-list in " \
                      f"{ELEMENT.relative_to(REPO_ROOT)}/README.rst: {extra}"
    missing = sorted(runtime_packages() - installed)
    assert not missing, f"the image lacks {missing}"
    unused = sorted(a for a in allowed
                    if not any(fnmatch.fnmatchcase(p, a) for p in installed))
    assert not unused, f"the allow-list names packages the image does not hold: {unused}"
    for gone in ("packagekit", "polkitd", "software-properties-common", "gnupg",
                 "libgstreamer1.0-0", "python3-lazr.restfulclient", "linux-image-amd64",
                 "rsync", "python3-venv"):
        assert gone not in installed
