"""The transaction: parse → plan → check → apply the delta → verify → commit.

* **parse** (outside the writer lock): the body becomes an immutable model; an invalid body
  never waits for, or touches, anything.
* **plan** (pure): every subsystem turns the model into what it wants — address and route
  sets, the nftables ruleset, daemon configurations — with no I/O.
* **check**: every daemon's own checker (``dnsmasq --test``, ``bird -p``, ...) runs on the
  plan *before the kernel is touched*, so a refused configuration costs no rollback
  (``dnsmasq --test`` begins once its plan exists, while the other subsystems are planned;
  refusals still come in the subsystems' order).
* **apply**: each subsystem changes only the difference between its plan and its *base*:
  the plan committed last, kept in memory, when nothing changed behind the agent's back
  since (``watch.KernelWatch``; daemons are checked by PID); otherwise (boot, drift, after a
  failed apply) the live state it reads. One that waits on the kernel or a daemon may go
  on beside the next one's apply (``start_apply``: a whole nftables table beside the
  links, dnsmasq's start beside the metadata proxy), waited for before anything else.
* **verify**: cheap — netlink and nft acknowledgements, daemons' own reports; full read-backs
  only on the live path.
* **commit**: the new generation is persisted atomically. Persisting is part of the
  transaction: if it fails, everything is rolled back like any other failure.

Before the lock is taken, the payload is checked against the management path of the
request (its source and the address it came in on: ``model.check_management_path``).
**Commit-confirm**: ``apply(..., confirm_timeout=N)`` commits a generation that reverts to
the last confirmed one (a transaction of its own) unless ``confirm()`` comes within N
seconds; only such a push may re-address or move the management network.

If any step fails, every subsystem that changed something is restored from the snapshot it
took first, and the last good generation stays committed. An identical push whose base is
intact returns at once, before even parsing (the raw body is compared with the bytes last
pushed).

One writer at a time (a lock); readers use ``engine.committed``, an immutable snapshot
swapped in by one assignment, so GETs never wait for an apply. Subsystems and their
protocol: ``apply/__init__.py``.
"""
import gc
import json
import logging
import os
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Mapping, Optional

import msgspec

from .apply import default_subsystems
from .errors import ApplyError, state_full_is_507
from .history import History
from .memory import TrimWhenQuiet
from .metrics import Metrics
from .model import (PayloadError, SystemConfig, check_management_path, parse_hashed,
                    parse_payload, prepare_schema)
from .model.change import common_ends, floating_ip_change
from .naming import InterfaceNames, list_nics
from .render.firewall import TABLE
from .store import Store
from .watch import Expected, KernelWatch

LOG = logging.getLogger(__name__)

REDACTED = "<redacted>"
SECRET_KEYS = {"psk", "password", "secret", "auth_key", "shared_secret"}
SECRET_KEY = re.compile(rb'"(?:%s)"\s*:' % b"|".join(k.encode() for k in sorted(SECRET_KEYS)))
QUOTED_SECRET_KEY = re.compile(rb'"(?:%s)"' % b"|".join(k.encode() for k in sorted(SECRET_KEYS)))
SECRET_KEY_LENGTH = max(map(len, SECRET_KEYS)) + 2  # with its quotes
JSON_SPACE = re.compile(rb"\s*:")  # what SECRET_KEY asks after the quoted key


def holds_secret(raw, before=None):
    """Whether the JSON bytes ``raw`` name a secret key (``SECRET_KEY``: then the view is
    redacted). ``before``: the bytes of an earlier payload that names none; a match then
    overlaps the part of ``raw`` that differs from them (the pattern looks at nothing
    outside its match), so only that part and its edges are searched: a push that adds
    one floating IP searches a few kilobytes, not the whole body (0.4 ms at 250 KB)."""
    if before is None:
        return SECRET_KEY.search(raw) is not None
    head, tail = common_ends(raw, before)
    end = len(raw) - tail
    start = head
    while start and raw[start - 1:start].isspace():  # a key may end before the spaces
        start -= 1
    for key in QUOTED_SECRET_KEY.finditer(raw, max(0, start - SECRET_KEY_LENGTH),
                                          end + SECRET_KEY_LENGTH):
        if key.start() < end and JSON_SPACE.match(raw, key.end()):
            return True
    return False


def same_bytes(first, second):
    """``first == second`` for bytes and memoryviews of bytes, as one memcmp: comparing a
    memoryview with ``==`` goes byte by byte (0.5 ms for a 250 KB payload, 0.01 copied),
    and ``bytes.startswith`` compares with a memoryview where it is, without a copy."""
    if first is second:
        return True
    if first is None or second is None or len(first) != len(second):
        return False
    if isinstance(first, bytes):  # in place: bytes(view) copies (page faults included)
        return first.startswith(second)
    if isinstance(second, bytes):
        return second.startswith(first)
    return bytes(first) == bytes(second)


def redact(value):
    if isinstance(value, dict):
        return {k: (REDACTED if k in SECRET_KEYS and v else redact(v))
                for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


# Free space the state directory must have before a new generation is applied: room for
# pending.json (about the payload's size, written next to the old one before a rename) and
# the record of the generation (store.py: at most a payload's size more than the slot it
# overwrites held) plus the daemons' configurations and leases.
STATE_RESERVE = 256 * 1024
STATE_SPACE_FACTOR = 3  # payload-sized files that may coexist during a commit

MAX_CONFIRM_TIMEOUT = 3600  # seconds a generation may await confirmation (?confirm_timeout)


class CollectorPause:
    """The cyclic garbage collector kept off what pushes leave alive (``with PAUSE:``;
    nested and concurrent pushes count). A push allocates tens of thousands of objects:
    the short-lived ones are freed by reference counting, the rest is the new generation's
    model and plans. Paused while pushes run; when the last one ends the survivors are
    frozen (``gc.freeze``: O(1), into the permanent generation no collection walks) rather
    than left to the collector, whose next collections walked them in whichever thread
    allocated first, usually a read's, holding the interpreter lock: a gen-0 one of 5-20
    ms after each push and full ones of 15-120 ms every ~30 pushes at 1 000 floating IPs
    (traced in the worker, applies back to back). Frozen objects are still freed by
    reference counting; only a cycle that is already garbage when the push ends would stay, so the
    first push collects the young generations before it pauses (what reads and the last
    answer left: well under a millisecond), a successful push leaves none (100 pushes in
    the lab: nothing unreachable frozen) and a refused one does not freeze: its error
    report leaves cycles (msgspec's annotation walk), collected by the young collections
    then or when the next push begins."""

    def __init__(self):
        self._lock = threading.Lock()
        self._depth = 0
        self._was_enabled = False
        self._refused = False  # a push of this span ended with an exception

    def __enter__(self):
        with self._lock:
            if self._depth == 0:
                self._was_enabled = gc.isenabled()
                if self._was_enabled:
                    gc.collect(1)
                gc.disable()
            self._depth += 1

    def __exit__(self, kind, value, traceback):
        with self._lock:
            self._depth -= 1
            self._refused = self._refused or kind is not None
            if self._depth == 0:
                if self._was_enabled:
                    if not self._refused:
                        gc.freeze()
                    gc.enable()
                self._refused = False


PAUSE_COLLECTOR = CollectorPause()


@dataclass(frozen=True)
class Committed:
    """One generation as readers see it. ``raw`` is the payload as JSON bytes (the bytes
    that were pushed, when known: a 5 000-floating-IP payload is 1.2 MB as bytes and several
    times that as Python objects; once the view is rendered, a memoryview of the bytes it
    embeds); ``plans`` are what this process applied (empty until the boot re-apply);
    ``pushed`` the exact bytes last pushed for it (``raw`` itself unless the same payload
    came again formatted otherwise): an identical push is told by comparing bytes, cheaper
    than hashing them; ``secrets`` whether ``raw`` names a secret key (``holds_secret``;
    None: not known yet)."""
    generation: int = 0
    raw: Optional[bytes] = None
    config: Optional[SystemConfig] = None
    hash: Optional[str] = None
    committed_at: float = 0.0
    plans: Mapping = field(default_factory=dict)
    names: Mapping = field(default_factory=dict)  # geN -> kernel name the plans were made for
    pushed: Optional[bytes] = None
    secrets: Optional[bool] = None

    @property
    def payload(self):
        """The payload as a JSON value, decoded on demand."""
        return msgspec.json.decode(self.raw) if self.raw is not None else None

    def view(self):
        """The committed configuration in the pushed shape, secrets redacted."""
        return json.loads(self.view_json)

    # Rendered once per generation (on first read), then served as bytes. Without secrets
    # the view embeds the pushed bytes, and ``raw`` becomes a memoryview of them there: one
    # copy of the payload, not two (1.2 MB at 5 000 floating IPs).
    @cached_property
    def view_json(self):
        raw = self.raw if self.raw is not None else b"{}"
        redacted = holds_secret(raw) if self.secrets is None else self.secrets
        if redacted:  # decode, redact, encode; else the pushed bytes as such
            raw = msgspec.json.encode(redact(msgspec.json.decode(raw)))
        inner = raw.strip() if isinstance(raw, bytes) else raw  # a view is stripped already
        head = b'{"configuration": '
        view = b"".join((head, inner, self._view_end()))
        if self.raw is not None and not redacted:
            embedded = memoryview(view)[len(head):len(head) + len(inner)]
            if (self.pushed is self.raw and inner is self.raw  # as pushed: no compare
                    or same_bytes(self.pushed, embedded)):
                object.__setattr__(self, "pushed", embedded)
            object.__setattr__(self, "raw", embedded)
        return view

    def view_pieces(self):
        """The view's bytes as buffers. Before the view is rendered (``render_reads`` does
        that after the answer), a view with no secret to redact is the pushed bytes
        themselves between two short ones, sent as they are (rendering it would copy
        them: 0.2-0.3 ms a push at 1 000 floating IPs, with the fresh pages they take);
        once rendered, ``raw`` is a view of it and this is the rendered bytes."""
        raw = self.raw
        if self.secrets is False and isinstance(raw, bytes):  # not rendered, not redacted
            return [b'{"configuration": ', raw.strip(), self._view_end()]
        return [self.view_json]

    def _view_end(self):
        return b', "generation": %d, "hash": %s}\n' % (
            self.generation, json.dumps(self.hash).encode())

    def answer(self, changes):
        """The answer to the push that made this generation, as bytes buffers: ``{"changes":
        N, `` and the view's buffers after its "{"."""
        first, *rest = self.view_pieces()
        return [b"".join((b'{"changes": %d, ' % changes, memoryview(first)[1:])), *rest]

    @cached_property
    def firewall_text(self):
        ruleset = self.plans.get("firewall")
        return ruleset.text().encode() if ruleset is not None else b""


@dataclass
class ApplyContext:
    """What one transaction shares between subsystems: the NICs (read once), their geN
    names, and the configurations an earlier or interrupted generation may have left on the
    NICs (the live path clears what they configured)."""
    interface_names: InterfaceNames
    previous: tuple = ()
    nics: tuple = ()
    names: dict = field(default_factory=dict)  # geN -> naming.Nic

    @classmethod
    def open(cls, interface_names, previous=(), nics=None):
        """``nics``: the NIC list when known to be current (else it is read)."""
        ctx = cls(interface_names, tuple(previous))
        ctx.refresh_nics(nics)
        return ctx

    def refresh_nics(self, nics=None):
        self.nics = tuple(list_nics(with_addresses=False)) if nics is None else nics
        self.names = self.interface_names.assign(self.nics)
        return self.nics

    def kernel_names(self):
        return {generic: nic.kernel_name for generic, nic in self.names.items()}


def _same_interfaces(config, committed):
    """``config`` configures no interface that the ``committed`` one does not: pending.json
    would tell a boot after a crash nothing more (it clears what the networks of the
    committed configuration and of pending.json configured)."""
    return committed is not None and {n.interface.ifname for n in config.networks} <= {
        n.interface.ifname for n in committed.networks}


def _finish(begun, counts, spent):
    """Wait for a begun apply (``Engine._apply_all``): its change count, or its error."""
    subsystem, work, started = begun
    counts[subsystem.name] = work.wait() or 0
    spent[subsystem.name] = time.monotonic() - started


def render_reads(committed):
    """Background, after the answer: the config view, rendered once (``Committed``); then
    ``raw`` is a view of the pushed bytes it embeds, and no read renders it. The ruleset's
    text is rendered for the worker (relay.py) and not kept here."""
    committed.view_json  # noqa: B018 - cached_property: rendered and kept


def _drop(*objects):
    """Nothing: the thread's arguments are freed when it ends (Background.release)."""


class Background:
    """Work a transaction leaves for after its answer (announcements, giving memory back):
    ``start()`` runs each job in a thread of its own, once. The API starts it when the
    response has been sent, so the answer does not share the CPU with it."""

    def __init__(self):
        self.jobs = []  # (thread name, function, args)
        self.last = None  # (thread name, function): given the other jobs' threads
        self.started = False

    def add(self, name, target, *args):
        self.jobs.append((name, target, args))

    def release(self, *objects):
        """Drop ``objects`` in a thread of their own: freeing the last generation and a
        push's temporaries (tens of thousands of objects at 1 000 floating IPs, a
        millisecond) need not delay the answer."""
        self.add("release", _drop, *objects)

    def add_last(self, name, target):
        """``target(threads)`` starts with the other jobs and may wait for their threads."""
        self.last = (name, target)

    def start(self):
        if self.started:
            return
        self.started = True
        threads = [threading.Thread(target=target, args=args,
                                    name=name, daemon=True)
                   for name, target, args in self.jobs]
        self.jobs = []  # the threads hold the arguments now (and drop them when done)
        for thread in threads:
            thread.start()
        if self.last is not None:
            name, target = self.last
            threading.Thread(target=target, args=(threads,), name=name, daemon=True).start()


@dataclass
class Outcome:
    committed: Committed
    changes: int
    background: Background = field(default_factory=Background)


class Engine:
    def __init__(self, settings, subsystems=None, watch=None):
        self.settings = settings
        self.enabled_services = tuple(settings.enabled_services)
        self.store = Store(settings.state_dir)
        self.names = InterfaceNames(os.path.join(settings.state_dir, "interfaces.json"))
        self.subsystems = (subsystems if subsystems is not None
                           else default_subsystems(settings))
        self.watch = watch if watch is not None else KernelWatch(TABLE)
        self._lock = threading.Lock()
        self._trusted = False  # False: the next transaction reads the live state everywhere
        self.state = "booting"
        self.last_error = None
        self.repairs = Counter()  # reconcile: drift reason -> times repaired
        self.metrics = Metrics(  # the kernel series read the NICs and payload at each scrape
            lambda: self.interfaces(with_addresses=False, with_counters=True),
            lambda: self.committed.config)
        self.history = History()  # the last activities, for the operator (history.py)
        self.trims = TrimWhenQuiet()  # the heap's free pages given back once pushes pause
        self._revert_timer = None  # commit-confirm: reverts the generation awaiting it
        self._listed = (None, None)  # (watch.link_changes(), NIC list read after it)
        self._on_commit = None  # observe_commits
        self.committed = self._load()

    @property
    def committed(self):
        return self._committed

    @committed.setter
    def committed(self, committed):
        self._committed = committed
        if self._on_commit is not None:
            self._on_commit(committed)

    def observe_commits(self, on_commit):
        """``on_commit(committed)`` each time a generation becomes the committed one, in
        the thread that commits it, before any answer (relay.py)."""
        self._on_commit = on_commit

    def _load(self):
        stored = self.store.load()
        if stored is None:
            return Committed()
        try:
            config = parse_payload(stored.payload, self.enabled_services)
        except PayloadError as exc:  # e.g. a service was disabled in the config file since
            LOG.error("the persisted configuration is no longer valid: %s", exc)
            self.last_error = str(exc)
            config = None
        return Committed(stored.number, msgspec.json.encode(stored.payload), config,
                         stored.hash, stored.committed_at)

    def parse(self, body):
        return parse_payload(body, self.enabled_services)

    def interfaces(self, **read):
        """``{geN: naming.Nic}`` of the NICs present now (``read``: list_nics' options)."""
        return self.names.assign(list_nics(**read))

    # -- writers -------------------------------------------------------------------------
    def apply(self, body, raw=None, source=None, local=None, confirm_timeout=None,
              request_id=None, origin="push", detail=None, defer_background=False) -> Outcome:
        """Validate and apply a whole payload (``raw``: the bytes it was decoded from, for
        the identical-push fast path; ``body`` may be None when ``pushed_before(raw)``);
        raise PayloadError/ApplyError on failure with the
        previous generation left in place. ``source``/``local``: the request's peer address
        and the address it arrived on (the management path to keep); ``confirm_timeout``:
        seconds before a new generation reverts unless ``confirm()`` is called;
        ``request_id``: the caller's (X-Request-Id), else one is made (history.py);
        ``defer_background``: the caller starts ``outcome.background`` itself (after its
        answer), else it is started here."""
        self.trims.poke()
        with self.history.activity(origin, request_id, self.committed.generation,
                                   detail) as activity, PAUSE_COLLECTOR:
            try:
                outcome = self._apply(body, raw, source, local, confirm_timeout)
            except (PayloadError, ApplyError) as exc:
                self.metrics.refused(exc)
                raise
            activity.finish(outcome.committed.generation, outcome.changes)
        if not defer_background:
            outcome.background.start()
        return outcome

    def rollback(self, generation=None, **request):
        """Apply a kept generation's configuration again (default: the one before the
        committed one), through the whole transaction, as a new generation; ``request``:
        ``apply``'s source, local, confirm_timeout and request_id. ApplyError 404 when that
        generation is not kept."""
        stored = (self.store.load_previous() if generation is None
                  else self.store.load_generation(generation))
        if stored is None:
            kept = ", ".join(str(g.number) for g in self.store.generations()) or "none"
            which = ("the previous generation" if generation is None
                     else f"generation {generation}")
            raise ApplyError("generation", f"{which} is not kept on this appliance (kept: "
                                           f"{kept})", status=404)
        return self.apply(stored.payload, origin="rollback",
                          detail=f"to generation {stored.number}", **request)

    def preview(self, body, source=None, local=None):
        """What applying ``body`` would change, without applying it: the subsystems whose
        plan differs from the committed one. Refused like a push without
        ``confirm_timeout`` from ``source`` on ``local`` (PayloadError: the grammar, the
        meaning, the management path; ApplyError: what a renderer refuses at plan time);
        pure: parse, checks and plans only, the daemons' checkers do not run."""
        config, digest = parse_hashed(body, self.enabled_services)
        committed = self.committed
        check_management_path(config, body, (source,) if source else (), committed.config,
                              local)
        names = dict(committed.names) or ApplyContext.open(self.names).kernel_names()
        plans = {s.name: s.plan(config, names) for s in self.subsystems}
        return {"hash": digest, "identical": digest == committed.hash,
                "subsystems": [name for name, plan in plans.items()
                               if plan != committed.plans.get(name)]}

    def pushed_before(self, raw):
        """``raw`` are the bytes of the last push (so valid JSON: ``apply`` may be given
        them undecoded, and an identical push needs no decoding at all)."""
        return same_bytes(raw, self.committed.pushed)

    def _apply(self, body, raw, source, local, confirm_timeout):
        if raw is None:  # a caller with only the decoded body (tests, tools)
            raw = msgspec.json.encode(body)
        with self._lock:
            previous = self.committed
            if same_bytes(raw, previous.pushed) and self._intact(previous):
                return Outcome(previous, 0)
        if body is None:  # bytes pushed before (pushed_before), so valid JSON
            body = msgspec.json.decode(raw)
        # before the lock: invalid bodies never wait or touch
        config, digest = parse_hashed(body, self.enabled_services)
        with self._lock:
            previous = self.committed
            check_management_path(config, body, (source,) if source else (), previous.config,
                                  local, confirming=confirm_timeout is not None)
            if digest == previous.hash and self._intact(previous):
                self.committed = replace(previous, pushed=raw)
                return Outcome(self.committed, 0)
            awaiting = confirm_timeout is not None
            background = Background()
            committed, changes = self._transaction(config, digest, previous, raw,
                                                   awaiting=awaiting, background=background)
            # Known clean before: only what this push changed can name a secret.
            secrets = holds_secret(raw, previous.raw if previous.secrets is False else None)
            self.committed = replace(committed, pushed=raw, secrets=secrets)
            self.state, self.last_error = "ready", None
            if committed.generation != previous.generation:
                self._arm_revert(committed.generation, confirm_timeout)
            background.add("readers", render_reads, self.committed)
            background.release(previous, body)
            return Outcome(self.committed, changes, background)

    # -- commit-confirm ------------------------------------------------------------------
    @property
    def awaiting_confirmation(self):
        """The generation that reverts unless confirmed, or None."""
        return self.store.awaiting()

    def confirm(self):
        """Keep the generation that awaits confirmation; returns its number or None."""
        with self._lock:
            generation = self.store.awaiting()
            self._arm_revert(None, None)
            self.store.confirm()
            return generation

    def _arm_revert(self, generation, timeout):
        """Under the lock: cancel any pending revert; with a timeout, arm one for
        ``generation``."""
        if self._revert_timer is not None:
            self._revert_timer.cancel()
            self._revert_timer = None
        if timeout is not None:
            self._revert_timer = threading.Timer(timeout, self._revert, (generation,))
            self._revert_timer.name = f"revert-{generation}"
            self._revert_timer.daemon = True
            self._revert_timer.start()

    def _revert(self, generation):
        """The confirmation did not come: apply the last confirmed generation again (as a
        new generation, so readers and the orchestrator see the change)."""
        with self._lock:
            if self.store.awaiting() != generation or self.committed.generation != generation:
                return  # confirmed, or superseded, meanwhile
            stored = self.store.load_previous()
            if stored is None:
                LOG.error("generation %d was not confirmed but no previous one is kept",
                          generation)
                return
            LOG.warning("generation %d was not confirmed in time: reverting to the "
                        "configuration of generation %d", generation, stored.number)
            with self.history.activity("revert", None, generation,
                                       f"to generation {stored.number}") as activity:
                try:
                    config = self.parse(stored.payload)
                    self.committed, changes = self._transaction(
                        config, stored.hash, self.committed, msgspec.json.encode(stored.payload))
                    activity.finish(self.committed.generation, changes)
                    self._revert_timer = None
                    self.state, self.last_error = "ready", None
                except Exception as exc:  # keep serving; the orchestrator pushes again
                    LOG.exception("revert of generation %d failed", generation)
                    activity.fail(exc)
                    self.state, self.last_error = "degraded", f"revert failed: {exc}"

    def boot(self):
        """Re-apply the persisted generation before the API reports ready, from the live
        state. An apply that was interrupted (crash, kill -9) left pending.json: what it may
        have configured is cleaned too."""
        prepare_schema()  # not in the first push
        with self._lock:
            self._number_nics()
            leftovers = []
            pending = self.store.load_pending()
            if pending is not None:
                try:
                    leftovers.append(self.parse(pending))
                except PayloadError:
                    pass
            committed = self.committed
            with self.history.activity("boot", None, committed.generation) as activity:
                try:
                    if committed.config is not None:
                        self.committed, changes = self._transaction(
                            committed.config, committed.hash, replace(committed, plans={}),
                            committed.raw, leftovers)
                        activity.finish(self.committed.generation, changes)
                    self.store.clear_pending()
                    self.state = "ready" if self.last_error is None else "degraded"
                except Exception as exc:  # keep serving: the orchestrator will push again
                    LOG.exception("boot re-apply failed")
                    activity.fail(exc)
                    self.state, self.last_error = "degraded", str(exc)

    def _number_nics(self):
        """Give the NICs present at boot their geN numbers now (interfaces.json, written
        durably once) rather than in the first push, which waited for that write. The
        kernel watch begins first, so the first transaction takes this list as it is
        when no link changed since (``_current_nics``: 51 NICs, a 1-2 ms dump)."""
        try:
            self.watch.renew()
            self._list_nics()
            self.names.assign(self._listed[1])
        except OSError as exc:  # the first transaction numbers them then
            LOG.warning("cannot number the NICs at boot: %s", exc)

    # -- the transaction -------------------------------------------------------------------
    def _intact(self, committed):
        """The kernel and the daemons still hold ``committed`` (as far as cheap signals
        tell): an identical push can return at once."""
        if not committed.plans or not self._trusted:
            return False
        return not self._drift(committed)

    def _drift(self, committed):
        """Why the kernel or the daemons may no longer hold ``committed``: the kernel
        watch's findings and the subsystems that are not healthy (a dead daemon)."""
        netlink_drift, nftables_drift = self.watch.poll()
        reasons = [f"{kind} changed" for kind, drifted in
                   (("netlink", netlink_drift), ("nftables", nftables_drift)) if drifted]
        return reasons + self.unhealthy(committed)

    def unhealthy(self, committed=None):
        """The subsystems whose daemon (or proxy thread) is down: cheap, no lock needed.
        A reader (no ``committed``) learns nothing while an apply runs: it restarts daemons
        on purpose."""
        if committed is None:
            if self._lock.locked():
                return []
            committed = self.committed
        if not committed.plans:
            return []
        return [f"{subsystem.name} is down" for subsystem in self.subsystems
                if hasattr(subsystem, "healthy")
                and not subsystem.healthy(committed.plans.get(subsystem.name))]

    def reconcile(self):
        """Compare the kernel and the daemons with the committed generation and repair
        what drifted by running the transaction again with the committed configuration:
        the drifted subsystems read the live state, dead daemons are started again (on an
        HA backup the subsystems leave keepalived's part alone, as on any apply). Returns
        the reasons repaired (empty: nothing to do); raises like ``apply`` when the repair
        fails, leaving the state ``degraded`` with the reason."""
        with self._lock:
            committed = self.committed
            if committed.config is None:
                return []  # nothing valid committed: wait for a push
            if not committed.plans:  # the boot re-apply failed
                reasons = ["the committed generation is not applied"]
            elif not self._trusted:  # a rollback failed
                reasons = ["the last rollback failed"]
            else:
                reasons = self._drift(committed)
            if not reasons:
                return []
            LOG.warning("reconcile: %s; re-applying generation %d", "; ".join(reasons),
                        committed.generation)
            with self.history.activity("reconcile", None, committed.generation,
                                       "; ".join(reasons)) as activity:
                try:
                    repaired, changes = self._transaction(committed.config, committed.hash,
                                                          committed, committed.raw)
                except Exception as exc:
                    self.state = "degraded"
                    self.last_error = f"{'; '.join(reasons)}; repair failed: {exc}"
                    raise
                activity.finish(repaired.generation, changes)
            self.committed = replace(repaired, pushed=committed.pushed)
            self.repairs = self.repairs + Counter(reasons)  # one assignment: readers copy
            self.metrics.repaired(reasons)
            self.state, self.last_error = "ready", None
            return reasons

    def _bases(self, previous, names):
        """Per subsystem, the committed plan it may diff against, or None (read live)."""
        if not self._trusted or not previous.plans or dict(previous.names) != names:
            return {subsystem.name: None for subsystem in self.subsystems}
        netlink_drift, nftables_drift = self.watch.poll()
        drift = {"netlink": netlink_drift, "nftables": nftables_drift}
        return {subsystem.name: (None if drift.get(getattr(subsystem, "watches", None))
                                 else previous.plans.get(subsystem.name))
                for subsystem in self.subsystems}

    def _plans(self, config, names, previous, bases):
        """``(plans, checks)``: every subsystem's plan, and the checks begun while the others
        were planned (``start_check``: dnsmasq's checker runs beside the planning of the
        rest, each ``wait()`` gives its verdict; a plan that fails is raised in the
        subsystems' order, as when they were planned one after the other). When nothing
        but floating IPs changed (the usual push), one whose plan does not read them keeps
        its committed plan (rendering dnsmasq's or the proxy's configuration again would
        give the same) and one that maps them patches its committed plan with the few
        added and removed (``plan_floating_ips``)."""
        unchanged = (previous.config is not None and dict(previous.names) == names
                     and previous.config.without_floating_ips()
                     == config.without_floating_ips())
        change = (floating_ip_change(previous.config.floating_ips, config.floating_ips)
                  if unchanged else None)

        def plan(subsystem):
            if unchanged and subsystem.name in previous.plans:
                base = previous.plans[subsystem.name]
                if not getattr(subsystem, "reads_floating_ips", True):
                    return base
                patch = getattr(subsystem, "plan_floating_ips", None)
                if patch is not None and change is not None:
                    patched = patch(base, change, config, names)
                    if patched is not None:
                        return patched
            return subsystem.plan(config, names)

        plans, failed, checks = {}, {}, {}
        try:
            for subsystem in self.subsystems:
                if hasattr(subsystem, "start_check"):
                    try:
                        plans[subsystem.name] = plan(subsystem)
                    except Exception as exc:  # raised in its turn, below
                        failed[subsystem.name] = exc
                        continue
                    checks[subsystem.name] = subsystem.start_check(
                        plans[subsystem.name], bases[subsystem.name])
            for subsystem in self.subsystems:
                if subsystem.name in failed:
                    raise failed[subsystem.name]
                if subsystem.name not in plans:
                    plans[subsystem.name] = plan(subsystem)
        except BaseException:
            for check in checks.values():
                check.cancel()
            raise
        return plans, checks

    def _transaction(self, config, digest, previous, raw, leftovers=(), awaiting=False,
                     background=None):
        """Apply ``config`` (whose payload is the JSON bytes ``raw`` with hash ``digest``)
        over ``previous``; a new generation when the hash differs. The work after the
        commit goes to ``background`` (started by the caller), else starts at once."""
        started = time.monotonic()
        earlier = [c for c in (previous.config, *leftovers) if c is not None]
        ctx = ApplyContext.open(self.names, earlier, self._current_nics())
        snapshots, counts, changes, plans, spent = [], {}, 0, {}, {}
        succeeded = restored = False
        number = None
        try:
            names = ctx.kernel_names()
            bases = self._bases(previous, names)
            # Read (polled) for the last time before the renewal below, which forgets what
            # arrives meanwhile: closed now, the kernel does not build a notification for
            # each of this transaction's own changes (thousands of addresses and set
            # elements on a first apply) for a socket nobody reads.
            self.watch.close()
            plans, checks = self._plans(config, names, previous, bases)
            try:
                for subsystem in self.subsystems:  # before anything live changes
                    if subsystem.name in checks:
                        checks.pop(subsystem.name).wait()
                    else:
                        subsystem.check(plans[subsystem.name], bases[subsystem.name])
            finally:
                for check in checks.values():  # after a refusal: the ones not waited for
                    check.cancel()
            new_generation = digest != previous.hash
            if new_generation:
                self._check_space(raw)
                if not _same_interfaces(config, previous.config):
                    self.store.write_pending(raw)  # else it would name nothing new
            self._apply_all(ctx, plans, bases, snapshots, counts, spent)
            for subsystem in self.subsystems:
                subsystem.verify(ctx, plans[subsystem.name], bases[subsystem.name],
                                 counts[subsystem.name])
            if new_generation:
                stored = self._persist(previous.generation + 1, digest, raw, awaiting)
                number, committed_at = stored.number, stored.committed_at
            else:
                number, committed_at = previous.generation, previous.committed_at
            changes = sum(counts.values())
            succeeded = True
        except BaseException as exc:
            LOG.warning("apply failed, rolling back: %s", exc)
            restored = self._rollback(ctx, snapshots, counts)
            if not isinstance(exc, (ApplyError, PayloadError)) and isinstance(exc, Exception):
                raise ApplyError("", f"internal error in apply: {exc.__class__.__name__}: "
                                     f"{exc}", status=500) from exc
            raise
        finally:
            self.store.clear_pending()
            kept = plans if succeeded else previous.plans
            self.watch.renew(self._expected(kept, ctx))  # what we changed is not drift
            # A clean rollback leaves the kernel as committed: the old plans stay the base.
            self._trusted = succeeded or (restored and self._trusted)
            nics = dict(ctx.names)
            self.metrics.transaction(succeeded, time.monotonic() - started, spent)
            self.history.transaction(succeeded, spent, number)
        committed = Committed(number, raw, config, digest, committed_at, plans, names)
        after = background if background is not None else Background()
        self._after_commit(after, plans, bases, nics)
        if background is None:
            after.start()
        return committed, changes  # logged once, by the activity (history.py)

    def _apply_all(self, ctx, plans, bases, snapshots, counts, spent):
        """Every subsystem's delta, in order, filling ``snapshots`` (what rollback needs),
        ``counts`` (changes, of those that finished) and ``spent`` (seconds). One with
        ``start_apply`` goes on beside the next one's apply and is waited for after it
        (the firewall's table beside the links, dnsmasq's start beside the metadata
        proxy); whatever happens, it is waited for before this returns or raises, so a
        rollback never races it."""
        begun = None  # (subsystem, its begun apply, when it began)
        try:
            for subsystem in self.subsystems:
                name, plan, base = subsystem.name, plans[subsystem.name], bases[subsystem.name]
                snapshot = subsystem.capture(ctx, plan, base)
                snapshots.append((subsystem, snapshot))
                started = time.monotonic()
                if begun is None and hasattr(subsystem, "start_apply"):
                    begun = (subsystem, subsystem.start_apply(ctx, plan, base, snapshot),
                             started)
                    continue
                counts[name] = subsystem.apply(ctx, plan, base, snapshot) or 0
                spent[name] = time.monotonic() - started
                if begun is not None:
                    waiting, begun = begun, None
                    _finish(waiting, counts, spent)
        finally:
            if begun is not None:  # the last subsystem's, or the next one failed
                _finish(begun, counts, spent)

    def _current_nics(self):
        """The NIC list read last, when no link changed since (the kernel watch): a push
        that changes addresses alone need not dump the links."""
        changes, nics = self._listed
        return nics if changes is not None and changes == self.watch.link_changes() else None

    def _list_nics(self):
        """The NIC list as it is (background, after a transaction that changed a link)."""
        changes = self.watch.link_changes()  # before: a change meanwhile reads them again
        self._listed = (changes, tuple(list_nics(with_addresses=False)))

    def _persist(self, number, digest, raw, awaiting):
        with state_full_is_507("the configuration"):
            return self.store.commit(number, digest=digest, raw=raw, awaiting=awaiting)

    def _check_space(self, raw):
        """Refuse a new generation early when the state directory could not persist it
        (the transaction would roll back at the commit otherwise, after all the work)."""
        free, inodes = self.store.free_space()
        needed = STATE_RESERVE + STATE_SPACE_FACTOR * len(raw)
        if free < needed or (inodes is not None and inodes < 8):
            raise ApplyError("", f"the state directory is full ({free} bytes, {inodes} "
                                 f"inodes free; {needed} bytes needed): the configuration "
                                 f"cannot be persisted", status=507)

    def _expected(self, plans, ctx):
        for subsystem in self.subsystems:
            if hasattr(subsystem, "expected") and plans.get(subsystem.name) is not None:
                return subsystem.expected(plans[subsystem.name], ctx.nics)
        return Expected(indexes=frozenset(nic.index for nic in ctx.nics))

    def _after_commit(self, background, plans, bases, nics):
        """Work the answer need not wait for (announcements, then giving memory back),
        queued on ``background``."""
        for subsystem in self.subsystems:
            if hasattr(subsystem, "after_commit"):
                background.add(f"{subsystem.name}-after-commit", subsystem.after_commit,
                               plans[subsystem.name], bases[subsystem.name], nics)
        if self._current_nics() is None:  # this transaction, or someone, changed a link
            background.add("list-nics", self._list_nics)
        background.add_last("malloc-trim", self.trims.as_they_end)

    def _rollback(self, ctx, snapshots, counts):
        """Restore every subsystem that ran; True when all of them were restored."""
        clean = True
        for subsystem, snapshot in reversed(snapshots):
            try:  # the count is None for the one that failed midway
                subsystem.restore(ctx, snapshot, counts.get(subsystem.name))
            except Exception:  # keep restoring the others; report the state as degraded
                LOG.exception("rollback of %s failed", subsystem.name)
                self.state = "degraded"
                self.last_error = f"rollback of {subsystem.name} failed"
                clean = False
        return clean
