"""Placements (astara's "bring your own network function"): an operator gives a tenant, or
one resource, its own appliance image and/or compute driver; everything else boots the
default image on the default driver. Stored with the desired state (the ``placements``
table, written through the change log like the debug flags), so every orchestrator sharing
the store boots the same. A resource's own placement beats its tenant's; an empty field
falls back to the next level. A placement applies to the next boot (``astara-ctl resource
rebuild`` to move a running appliance).
"""
import dataclasses
import time

from .errors import StoreError

PLACEMENT_SCOPES = ("tenant", "resource")


@dataclasses.dataclass(frozen=True)
class Placement:
    driver: str = ""  # "" = the default driver ([compute] driver)
    image: str = ""  # "" = the driver's default image
    source: str = "default"  # where it came from: "resource", "tenant" or "default"

    def as_dict(self):
        return dataclasses.asdict(self)


class Placements:
    """Readers get the current dict without a lock (copy-on-write), replaced when this
    process or another one changes it."""

    def __init__(self, store, entries):
        self._store = store
        self._entries = dict(entries)
        self.drivers = None  # names a placement may use (None: not checked); the service sets it

    def set(self, scope, key, driver="", image=""):
        if scope not in PLACEMENT_SCOPES:
            raise StoreError(f"scope must be one of {', '.join(PLACEMENT_SCOPES)}", "scope")
        if not isinstance(key, str) or not key:
            raise StoreError("a tenant or resource id is required", "key")
        for field, value in (("driver", driver), ("image", image)):
            if not isinstance(value, str):
                raise StoreError(f"{field} must be a string", field)
        if not driver and not image:
            raise StoreError("a placement needs a driver or an image", "image")
        if driver and self.drivers is not None and driver not in self.drivers:
            raise StoreError(f"driver {driver!r} is not enabled ({', '.join(self.drivers)}; "
                             "[compute] driver and drivers)", "driver")
        self._store.write_placement(scope, key, driver, image, time.time())

    def clear(self, scope, key):
        self._store.write_placement(scope, key, "", "", None)

    def replace(self, entries):
        """The store's current placements (after a write or a catch-up)."""
        self._entries = dict(entries)

    def all(self):
        return [{"scope": scope, "key": key, **entry}
                for (scope, key), entry in sorted(self._entries.items())]

    def resolve(self, ref):
        """The Placement for ``ref`` (a ResourceRef)."""
        entries = self._entries
        driver = image = ""
        source = "default"
        for scope, key in (("tenant", ref.tenant_id), ("resource", ref.id)):
            entry = entries.get((scope, key))
            if entry is None:
                continue
            driver, image = entry["driver"] or driver, entry["image"] or image
            source = scope
        return Placement(driver, image, source)
