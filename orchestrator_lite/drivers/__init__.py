"""Compute drivers: where appliance instances run (``[compute] driver``)."""

DRIVERS = ("netns", "qemu")


def make_driver(settings):
    """The driver named by ``settings.compute_driver``."""
    name = settings.compute_driver
    if name == "netns":
        from .netns import NetnsDriver
        return NetnsDriver.from_settings(settings)
    if name == "qemu":
        from .qemu import QemuDriver
        return QemuDriver.from_settings(settings)
    raise ValueError(f"[compute] driver: unknown driver {name!r} ({', '.join(DRIVERS)})")
