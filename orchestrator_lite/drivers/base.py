"""The compute driver interface: create/get/list-by-name-prefix/delete/attach/detach.

Instance names are deterministic (``ak-<kind>-<resource id>_<n>``, astara's scheme), so
``list(prefix)`` is how a restarted orchestrator finds and adopts the appliances that
are already running instead of rebooting them. Ports (MACs, management address) are the
orchestrator's business (the store's appliance ports); a driver only plugs NICs with the
MACs it is given into the networks it is told, like Nova with pre-created Neutron ports.
"""
import abc
import dataclasses
from typing import Optional

BUILD = "BUILD"
ACTIVE = "ACTIVE"
ERROR = "ERROR"  # the instance exists but is broken (crashed, lost its namespace...)


class DriverError(Exception):
    """The driver could not do what was asked (message says why)."""


@dataclasses.dataclass(frozen=True)
class Nic:
    mac: str
    network_id: str
    role: str = "data"  # "mgt" or "data"
    mtu: Optional[int] = None


@dataclasses.dataclass(frozen=True)
class Instance:
    id: str
    name: str
    status: str
    management_address: Optional[str]
    created_at: float  # epoch seconds (HA priority: the oldest instance wins)
    nics: tuple = ()
    details: dict = dataclasses.field(default_factory=dict, compare=False)


class ComputeDriver(abc.ABC):
    name = "base"

    @abc.abstractmethod
    def create(self, name, nics, management_cidr, image=None, server_group=None, tls=None):
        """Boot instance ``name`` with ``nics`` (MGT first); its boot command configures
        ``management_cidr`` ("address/prefixlen") on the MGT NIC. Returns an Instance
        whose ``details["image"]`` records ``image``. ``image``: the appliance image to boot
        (None or "": the driver's default; a placement, store/placements.py, may name
        another). ``server_group``: instances given the same
        group must not share a host (the two of an HA pair), where the driver can say so.
        ``tls``: a pki.Bundle the boot data must deliver (its ``boot_files``: certificate,
        key, CA, and the agent's [api] settings for them); None: the agent serves plain
        HTTP. Raises DriverError when an instance of that name already exists."""

    @abc.abstractmethod
    def get(self, instance_id):
        """The Instance, or None when it does not exist."""

    @abc.abstractmethod
    def list(self, prefix):
        """Instances whose name starts with ``prefix``."""

    @abc.abstractmethod
    def delete(self, instance_id):
        """Destroy the instance (idempotent: a missing instance is not an error)."""

    @abc.abstractmethod
    def attach(self, instance_id, nic):
        """Hot-plug ``nic``; returns the updated Instance."""

    @abc.abstractmethod
    def detach(self, instance_id, mac):
        """Hot-unplug the NIC with ``mac``; returns the updated Instance."""

    def image_id(self, image=None):
        """What ``image`` resolves to now, as recorded in ``details["image_id"]`` of the
        instances booted from it (a fleet upgrade replaces the instances whose id
        differs). Drivers whose images are only labels return the label."""
        return image or ""

    def driver_name_of(self, instance_id):
        """The name of the driver that runs the instance (a DriverSet answers for the
        driver among its own)."""
        return self.name

    def shell_command(self, instance_id):
        """argv that opens a shell on the instance (astara-ctl ssh), or None."""
        return None

    def close(self):
        """Release driver resources; never destroys instances (they must be adoptable)."""
