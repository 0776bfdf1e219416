"""Pure parts of the rtnetlink client: a message's address record."""
import ipaddress
import socket

import pytest

from astara_router import rtnl


def address_message(address, index=7, flags=rtnl.IFA_F_PERMANENT):
    family = socket.AF_INET if address.version == 4 else socket.AF_INET6
    return (rtnl.IFADDRMSG.pack(family, address.network.prefixlen, flags, 0, index)
            + rtnl._attribute(rtnl.IFA_LOCAL, address.ip.packed))


@pytest.mark.parametrize("text", ["198.51.100.7/24", "198.18.1.1/32", "2001:db8::5/64"])
def test_an_address_record_is_the_interface_the_kernel_reports(text):
    address = ipaddress.ip_interface(text)
    index, found, flags = rtnl.address_record(address_message(address))
    assert (index, found, found.network, flags) == (7, address, address.network,
                                                    rtnl.IFA_F_PERMANENT)
    assert hash(found) == hash(address)


def test_a_record_without_an_address_is_none():
    header = rtnl.IFADDRMSG.pack(socket.AF_INET, 24, 0, 0, 7)
    assert rtnl.address_record(header) is None
