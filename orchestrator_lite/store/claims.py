"""A claim: this orchestrator's ownership of one resource at one epoch (the fencing token).

The coordination layer (``orchestrator_lite.coordination``) makes claims through the store
(``Store.claim``, which raises the resource's epoch in one transaction); the instance
manager carries its resource's claim into every store write (checked in the write's
transaction) and every config push (``X-Astara-Epoch``, checked by the appliance). The
epoch can only go up, and only through the store.
"""
import dataclasses
from typing import Callable, Optional

from .errors import Fenced


@dataclasses.dataclass
class Claim:
    kind: str
    id: str
    owner: str
    epoch: int
    # True while the coordination backend has confirmed our lease recently enough; a
    # process that was paused past its lease must not act before it checked again.
    lease_ok: Optional[Callable[[], bool]] = dataclasses.field(default=None, compare=False,
                                                                repr=False)

    @property
    def key(self):
        return (self.kind, self.id)

    def check_lease(self):
        if self.lease_ok is not None and not self.lease_ok():
            raise Fenced(f"{self.kind} {self.id}: the coordination lease of {self.owner} is "
                         "not confirmed; not acting until it is")
