"""Pure parts of the rtnetlink client: a message's address record."""
import ipaddress
import socket

import pytest

from astara_router import rtnl


def address_message(address, index=7, flags=rtnl.IFA_F_PERMANENT):
    family = socket.AF_INET if address.version == 4 else socket.AF_INET6
    return (rtnl.IFADDRMSG.pack(family, address.network.prefixlen, flags, 0, index)
            + rtnl.attribute(rtnl.IFA_LOCAL, address.ip.packed))


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


def test_wanted_attributes_are_those_of_a_full_read():
    data = b"".join(rtnl.attribute(kind, value) for kind, value in
                    ((3, b"eth0\0"), (4, b"\xdc\x05\0\0"), (3, b"second"), (1, b"\2" * 6),
                     (23, b"\0" * 64), (18, rtnl.attribute(1, b"veth\0"))))
    full = rtnl.attributes(data)
    assert full[3] == b"eth0\0" and full[1] == b"\2" * 6  # the first of each type
    assert rtnl.attributes(data, 0, {1, 3, 18}) == {k: full[k] for k in (1, 3, 18)}
    assert rtnl.attributes(data, 0, {99}) == {}
