"""The built image holds only the Debian packages of the allow-list in the astara element's
README (each with its reason), and every package the appliance needs.

diskimage-builder's dpkg element writes the installed packages to
``out/<image>.d/dib-manifests/dib-manifest-dpkg-<image>``; ``make image-test`` builds the
image first. The list's parser, and that package-installs.yaml stays within the list, need
no image: test/unit/test_image_elements.py checks them (astara_lab/image.py parses both).
"""
import fnmatch
import json

from astara_lab.image import (ASTARA_ELEMENT as ELEMENT, REPO_ROOT, allowed_packages,
                              image_name, runtime_packages)


def installed_packages(manifest_text):
    return {p["package"].split(":")[0] for p in json.loads(manifest_text)["packages"]
            if p.get("status", "ii").startswith("ii")}


def test_image_holds_only_allowed_packages(built_image):
    allowed = allowed_packages((ELEMENT / "README.rst").read_text())
    manifest = built_image["manifests"] / f"dib-manifest-dpkg-{image_name()}"
    installed = installed_packages(manifest.read_text())
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
