"""Contract tests against a small OpenStack on 127.0.0.1 (astara_lab/fakecloud.py) with the
real openstacksdk; no root, no namespaces."""
import pathlib
import sys

import pytest

from astara_lab.fakecloud import FakeCloud
from orchestrator_lite.config import OpenStackSettings

sys.path.insert(0, str(pathlib.Path(__file__).parent))


@pytest.fixture
def cloud():
    with FakeCloud() as fake:
        yield fake


@pytest.fixture
def os_settings(cloud):
    return OpenStackSettings(auth_url=cloud.auth_url, username="astara", password="secret",
                             project_name="service", image="astara", flavor="astara.small",
                             availability_zone="nova", api_timeout=10)
