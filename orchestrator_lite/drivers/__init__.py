"""Compute drivers: where appliance instances run (``[compute] driver``, the default, plus
``[compute] drivers``: more that placements may name, store/placements.py)."""
import threading

from .base import ComputeDriver, DriverError

DRIVERS = ("netns", "openstack", "qemu")
QEMU_ACCELS = ("auto", "tcg", "kvm")  # [qemu] accel (here: config checks it without QEMU's)


def make_driver(settings, name=None, cloud=None):
    """The driver named ``name`` (default ``settings.compute_driver``); ``cloud`` is the
    openstacksdk Connection the openstack driver uses (its caller closes it)."""
    name = name or settings.compute_driver
    if name == "netns":
        from .netns import NetnsDriver
        return NetnsDriver.from_settings(settings)
    if name == "openstack":
        from .openstack import OpenStackDriver
        return OpenStackDriver.from_settings(settings, cloud)
    if name == "qemu":
        from .qemu import QemuDriver
        return QemuDriver.from_settings(settings)
    raise ValueError(f"[compute] driver: unknown driver {name!r} ({', '.join(DRIVERS)})")


def make_drivers(settings, cloud=None):
    """A DriverSet: the default driver (from the settings) and every other enabled one."""
    default = make_driver(settings, cloud=cloud)
    drivers = {default.name: default}
    for name in settings.compute_drivers:
        if name not in drivers:
            drivers[name] = make_driver(settings, name, cloud)
    return DriverSet(drivers, default.name)


class DriverSet(ComputeDriver):
    """Several drivers behind one: ``create`` on the one a placement names (else the
    default), everything else on whichever driver has the instance. Listing asks every
    driver, so instances are adopted wherever they run."""

    def __init__(self, drivers, default):
        self.drivers = dict(drivers)
        self.default = default
        self.name = default
        self._owner = {}  # instance id -> driver name
        self._lock = threading.Lock()

    @property
    def names(self):
        return tuple(self.drivers)

    def _note(self, driver_name, instances):
        with self._lock:
            for instance in instances:
                self._owner[instance.id] = driver_name
        return instances

    def _driver_of(self, instance_id):
        with self._lock:
            name = self._owner.get(instance_id)
        if name is None:
            for candidate, driver in self.drivers.items():
                if driver.get(instance_id) is not None:
                    name = candidate
                    break
        if name is None:
            return None
        return self.drivers[name]

    def create(self, name, nics, management_cidr, image=None, server_group=None,
               driver=None, tls=None):
        driver_name = driver or self.default
        if driver_name not in self.drivers:
            raise DriverError(f"driver {driver_name!r} is not enabled ([compute] drivers)")
        instance = self.drivers[driver_name].create(name, nics, management_cidr, image=image,
                                                    server_group=server_group, tls=tls)
        self._note(driver_name, [instance])
        return instance

    def get(self, instance_id):
        driver = self._driver_of(instance_id)
        return driver.get(instance_id) if driver else None

    def list(self, prefix):
        found = []
        for name, driver in self.drivers.items():
            found += self._note(name, driver.list(prefix))
        return sorted(found, key=lambda i: i.name)

    def delete(self, instance_id):
        driver = self._driver_of(instance_id)
        if driver is not None:
            driver.delete(instance_id)
        with self._lock:
            self._owner.pop(instance_id, None)

    def attach(self, instance_id, nic):
        return self._require(instance_id).attach(instance_id, nic)

    def detach(self, instance_id, mac):
        return self._require(instance_id).detach(instance_id, mac)

    def _require(self, instance_id):
        driver = self._driver_of(instance_id)
        if driver is None:
            raise DriverError(f"no instance {instance_id}")
        return driver

    def driver_name_of(self, instance_id):
        with self._lock:
            return self._owner.get(instance_id)

    def image_id(self, image=None, driver=None):
        """What ``image`` resolves to on ``driver`` (a placement's; None: the default)."""
        driver_name = driver or self.default
        if driver_name not in self.drivers:
            raise DriverError(f"driver {driver_name!r} is not enabled ([compute] drivers)")
        return self.drivers[driver_name].image_id(image)

    def shell_command(self, instance_id):
        driver = self._driver_of(instance_id)
        return driver.shell_command(instance_id) if driver else None

    def close(self):
        for driver in self.drivers.values():
            driver.close()
