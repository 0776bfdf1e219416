"""rtnl.transact against a real kernel: requests go many per datagram and only a datagram's
last one asks for an acknowledgement, so a refusal in the middle must still be reported
with its position, and later datagrams must not be sent."""
import errno
import functools
import ipaddress

import pytest

from astara_netns import in_netns
from astara_router import rtnl

pytestmark = pytest.mark.netns


def _adds(index, count, bad=None, bad_index=999999):
    """``count`` address adds on link ``index``; request number ``bad`` (0-based) names a
    link that does not exist."""
    return [functools.partial(rtnl.address_request, add=True,
                              index=bad_index if i == bad else index,
                              address=ipaddress.ip_interface(f"198.18.{i // 250}.{i % 250 + 1}/32"))
            for i in range(count)]


def _addresses_on(index):
    """The IPv4 addresses of link ``index`` (the kernel adds an IPv6 link-local one)."""
    return {a for a in rtnl.addresses().get(index, ()) if ":" not in a}


def test_a_clean_batch_is_applied_whole(lab):
    ns = lab.netns("clean")
    lab.plug(ns, "eth0", lab.bridge("b-clean"))
    with in_netns(ns.name):
        index = next(i for i, name, *_ in rtnl.links() if name == "eth0")
        count = 2 * rtnl.BATCH + 10  # three datagrams
        assert rtnl.transact(_adds(index, count)) == (count, None)
        assert len(_addresses_on(index)) == count


def test_a_refusal_midway_is_reported_and_stops_later_datagrams(lab):
    ns = lab.netns("refuse")
    lab.plug(ns, "eth0", lab.bridge("b-refuse"))
    with in_netns(ns.name):
        index = next(i for i, name, *_ in rtnl.links() if name == "eth0")
        bad = rtnl.BATCH + 5  # in the second datagram, not its last request
        done, error = rtnl.transact(_adds(index, 3 * rtnl.BATCH, bad=bad))
        assert done == bad
        assert error.errno == errno.ENODEV
        present = {str(ipaddress.ip_interface(a).ip) for a in _addresses_on(index)}
        first = {f"198.18.{i // 250}.{i % 250 + 1}" for i in range(rtnl.BATCH)}
        third = {f"198.18.{i // 250}.{i % 250 + 1}" for i in range(2 * rtnl.BATCH,
                                                                    3 * rtnl.BATCH)}
        assert first <= present
        assert not third & present  # the datagram after the refusal was not sent
