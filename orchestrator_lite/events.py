"""Events and the per-resource event queue with coalescing.

An event says "something happened to resource R" (``ResourceRef``: kind, id, tenant) with
one action. Each resource has one ``EventQueue``; when a worker takes the resource it pops
one *collapsed* action, so a burst of changes costs one config push:

* ``delete`` anywhere in the queue wins: everything else is dropped;
* ``poll`` is dropped whenever real work is queued (in front of it or behind it);
* ``create`` absorbs ``update`` (either order: the result is ``create``);
* ``rebuild`` absorbs ``create``/``update``/``cluster_rebuild``/``manage`` next to it;
* ``manage`` (operator: resume and clear error) absorbs ``create``/``update``;
* identical neighbours merge; merging stops at the first action that does not merge.
"""
import collections
import dataclasses
import logging
import threading

LOG = logging.getLogger(__name__)

CREATE = "create"
UPDATE = "update"
DELETE = "delete"
POLL = "poll"
REBUILD = "rebuild"
CLUSTER_REBUILD = "cluster_rebuild"
MANAGE = "manage"
ACTIONS = (CREATE, UPDATE, DELETE, POLL, REBUILD, CLUSTER_REBUILD, MANAGE)

ROUTER = "router"
LOADBALANCER = "loadbalancer"
RESOURCE_KINDS = (ROUTER, LOADBALANCER)

QUEUE_WARNING_THRESHOLD = 100


@dataclasses.dataclass(frozen=True, order=True)
class ResourceRef:
    """A resource that owns appliances (a router or a load balancer)."""
    kind: str
    id: str
    tenant_id: str = dataclasses.field(default="", compare=False)

    @property
    def key(self):
        return (self.kind, self.id)

    def __str__(self):
        return f"{self.kind} {self.id}"


@dataclasses.dataclass(frozen=True)
class Event:
    """``ref`` None means every resource (a broadcast, e.g. ``astara-ctl poll``);
    ``force``: push even when the appliance already has the desired config; ``image`` and
    ``instance``: what a rebuild boots and replaces (None: the running image, all)."""
    ref: object
    action: str
    reason: str = ""
    force: bool = False
    image: str = None
    instance: str = None

    def __post_init__(self):
        if self.action not in ACTIONS:
            raise ValueError(f"unknown action {self.action!r}")


def merge(first, second):
    """The single action equivalent to ``first`` then ``second``, or None if they must
    stay separate steps. (``delete`` and ``poll`` are handled by the queue itself.)"""
    if first == second:
        return first
    pair = {first, second}
    if pair <= {CREATE, UPDATE}:
        return CREATE
    absorbed_by_rebuild = {CREATE, UPDATE, CLUSTER_REBUILD, MANAGE}
    if REBUILD in pair and (pair - {REBUILD}) <= absorbed_by_rebuild:
        return REBUILD
    if MANAGE in pair and (pair - {MANAGE}) <= {CREATE, UPDATE}:
        return MANAGE
    return None


def follow_ups(queue):
    """The actions queued behind a resource's delete that a fresh automaton must act on
    (the id was made again meanwhile); polls and deletes are moot."""
    return [action for action in queue.snapshot() if action not in (POLL, DELETE)]


class EventQueue:
    """Thread-safe queue of actions for one resource."""

    def __init__(self, name=""):
        self._items = collections.deque()
        self._lock = threading.Lock()
        self._name = name

    def __len__(self):
        with self._lock:
            return len(self._items)

    def __bool__(self):
        return len(self) > 0

    def snapshot(self):
        with self._lock:
            return list(self._items)

    def push(self, action):
        with self._lock:
            if self._items and self._items[-1] == action:
                return  # identical neighbour: nothing new to do
            self._items.append(action)
            if len(self._items) == QUEUE_WARNING_THRESHOLD:
                LOG.warning("%s: %d events queued", self._name, len(self._items))

    def clear(self):
        with self._lock:
            dropped = list(self._items)
            self._items.clear()
            return dropped

    def pop(self):
        """The next collapsed action, or None when empty."""
        with self._lock:
            items = self._items
            if not items:
                return None
            if DELETE in items:
                items.clear()
                return DELETE
            real = [a for a in items if a != POLL]
            if not real:
                items.clear()
                return POLL
            action, rest = real[0], collections.deque(real[1:])
            while rest:
                merged = merge(action, rest[0])
                if merged is None:
                    break
                action = merged
                rest.popleft()
            self._items = rest
            return action
