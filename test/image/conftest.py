"""The image suite's shared fixtures: ``built_image``, and each test's call outcome on its
node (``rep_call``), so fixtures can keep diagnostics of failed tests (the VM's serial
console)."""
import os

import pytest

from astara_lab.image import outputs

REQUIRE_IMAGE = "ASTARA_REQUIRE_IMAGE"  # set to 1 by make test / make image-test


@pytest.fixture(scope="session")
def built_image():
    """``outputs()`` of the image scripts/build-image wrote. Without them a bare pytest run
    skips the suite; under make (ASTARA_REQUIRE_IMAGE=1, after building) it fails, so the
    suite cannot pass by skipping when the build and ``outputs()`` disagree."""
    image = outputs()
    missing = [str(path) for path in image.values() if not path.exists()]
    if missing:
        message = f"no built image: {', '.join(missing)} missing (make image-test builds it)"
        if os.environ.get(REQUIRE_IMAGE) == "1":
            pytest.fail(f"{message}; {REQUIRE_IMAGE}=1 requires it", pytrace=False)
        pytest.skip(message)
    return image


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)
