"""A test double of the compute driver: instances are in-memory records and "booting" is
instant. Unit tests hand it to the orchestrator (``Orchestrator(settings, driver=...)``) and
pair it with simulated appliances; it is not a driver the product can select."""
import itertools
import threading
import time

from orchestrator_lite.drivers.base import ACTIVE, ComputeDriver, DriverError, Instance


class FakeDriver(ComputeDriver):
    name = "fake"

    def __init__(self, clock=time.time):
        self._instances = {}
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._clock = clock
        self.fail_create = None  # set to a message to make create() fail
        self.calls = []  # (method, name or id) in call order
        self.hints = {}  # instance name -> {"image", "server_group", "tls"} it was created with

    def create(self, name, nics, management_cidr, image=None, server_group=None, tls=None):
        with self._lock:
            self.calls.append(("create", name))
            self.hints[name] = {"image": image, "server_group": server_group, "tls": tls}
            if self.fail_create:
                raise DriverError(self.fail_create)
            if any(i.name == name for i in self._instances.values()):
                raise DriverError(f"an instance named {name} exists")
            instance = Instance(id=f"fake-{next(self._ids)}", name=name, status=ACTIVE,
                                management_address=management_cidr.split("/")[0],
                                created_at=self._clock(), nics=tuple(nics),
                                details={"image": image or "", "image_id": image or ""})
            self._instances[instance.id] = instance
            return instance

    def get(self, instance_id):
        return self._instances.get(instance_id)

    def list(self, prefix):
        return sorted((i for i in self._instances.values() if i.name.startswith(prefix)),
                      key=lambda i: i.name)

    def delete(self, instance_id):
        with self._lock:
            self.calls.append(("delete", instance_id))
            self._instances.pop(instance_id, None)

    def attach(self, instance_id, nic):
        return self._replace(instance_id, lambda i: i.nics + (nic,), "attach")

    def detach(self, instance_id, mac):
        return self._replace(instance_id, lambda i: tuple(n for n in i.nics if n.mac != mac),
                             "detach")

    def set_status(self, instance_id, status):
        self._replace(instance_id, None, "set_status", status=status)

    def _replace(self, instance_id, nics, what, status=None):
        with self._lock:
            self.calls.append((what, instance_id))
            instance = self._instances.get(instance_id)
            if instance is None:
                raise DriverError(f"no instance {instance_id}")
            new = Instance(instance.id, instance.name, status or instance.status,
                           instance.management_address, instance.created_at,
                           nics(instance) if nics else instance.nics, instance.details)
            self._instances[instance_id] = new
            return new
