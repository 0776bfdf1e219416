"""Scheduler: events -> per-resource automata -> a bounded pool of worker threads.

* One automaton per resource, created on its first event (lazily, also after a restart:
  its first step looks before it acts, which is how running appliances are adopted).
* Exactly one worker acts on a resource at a time: a resource key is in the ready queue or
  being run at most once (``_scheduled``); events arriving meanwhile only go into the
  automaton's coalescing queue, and the worker re-queues the key when it finishes.
* A step that waits (boot check, back-off, grace, cool-down) releases the worker and asks
  for a timer; the timer thread delivers a ``poll`` to that resource when it is due.
* Work on resources already in flight (boot checks, configures, re-queued events) goes
  before resources seen for the first time: in a create storm, the first appliances get
  configured while the rest are still being created, instead of all waiting behind every
  create (the ready queue was first-in first-out).
* Paused resources (``astara-ctl router|tenant debug``, stored in the store) get no events
  except ``manage``.
* Only resources this orchestrator owns (``coordination``: all of them when it runs alone,
  its share of the ring in a cluster) get events; an automaton is made with the owner's
  claim. ``forget`` drops a resource whose ownership moved, after the step in progress;
  a step that finds itself fenced (``store.Fenced``) hands the resource back the same way.
"""
import heapq
import itertools
import logging
import queue
import threading
import time

from .events import MANAGE, POLL, follow_ups
from .store import Fenced

LOG = logging.getLogger(__name__)


class NotOwner(Exception):
    """Another orchestrator owns the resource (a debug session must run on its owner)."""

    def __init__(self, ref):
        super().__init__(f"{ref} is owned by another orchestrator")
        self.ref = ref


class Scheduler:
    def __init__(self, automaton_factory, store, threads=4, clock=time.monotonic,
                 ownership=None, after_run=None):
        self._factory = automaton_factory  # (ref, claim) -> Automaton with that claim
        self._store = store
        self._ownership = ownership  # None: everything is ours (tests)
        self._after_run = after_run  # callback(automaton) after each run; may raise Fenced
        self._debug_flags = store.debug_flags
        self._threads_wanted = threads
        self._clock = clock
        self._lock = threading.RLock()
        self._automata = {}  # ResourceRef.key -> Automaton
        self._refs = {}  # key -> ResourceRef
        self._scheduled = set()  # keys queued or running
        self._ready = queue.PriorityQueue()  # (priority, seq, key): 0 in flight, 1 new
        self._fresh = set()  # keys whose automaton has not run yet
        self._running = {}  # thread name -> key
        self._timers = []  # heap of (due, seq, key)
        self._timer_due = {}  # key -> earliest due
        self._seq = itertools.count()
        self._timer_cond = threading.Condition(self._lock)
        self._threads = []
        self._stopping = False
        self._diverted = {}  # key -> callable(action): a debug session takes the events

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self):
        for n in range(self._threads_wanted):
            thread = threading.Thread(target=self._work, name=f"worker-{n}", daemon=True)
            thread.start()
            self._threads.append(thread)
        timer = threading.Thread(target=self._run_timers, name="timers", daemon=True)
        timer.start()
        self._threads.append(timer)

    def stop(self, timeout=5.0):
        with self._lock:
            self._stopping = True
            self._timer_cond.notify_all()
        for _ in range(self._threads_wanted):
            self._ready.put((-1, next(self._seq), None))
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    # -- input -----------------------------------------------------------------------------------
    def handle(self, event):
        """Deliver one event (``event.ref`` None: to every resource)."""
        if event.ref is None:
            for ref in self.known_refs():
                self.deliver(ref, event.action)
            return
        self.deliver(event.ref, event.action, force=event.force)

    def handle_all(self, events):
        for event in events:
            self.handle(event)

    def known_refs(self):
        refs = {ref.key: ref for ref in self._store.snapshot().resources()}
        with self._lock:
            for key, ref in self._refs.items():
                refs.setdefault(key, ref)
        return list(refs.values())

    def owns(self, ref):
        """Our claim on ``ref`` (None: another orchestrator's)."""
        return True if self._ownership is None else self._ownership.owns(ref)

    def deliver(self, ref, action, force=False):
        """Queue ``action`` for ``ref``; False when the resource is paused or not ours
        (a debug session's resource: the event goes to the session)."""
        sink = self._diverted.get(ref.key)
        if sink is not None:  # astara-ctl debug-resource has it: the event goes there
            sink(action, force)
            return True
        paused = self._debug_flags.paused_reason(ref)
        if paused and action != MANAGE:
            LOG.debug("%s: %s ignored (%s)", ref, action, paused)
            return False
        claim = self.owns(ref)
        if not claim:
            return False
        with self._lock:
            if self._stopping:
                return False
            automaton = self._automata.get(ref.key)
            if automaton is None:
                automaton = self._automata[ref.key] = self._factory(ref, claim)
                self._refs[ref.key] = ref
                self._fresh.add(ref.key)
            if force:
                automaton.force_push = True
            automaton.send(action)
            self._schedule(ref.key)
        return True

    def call_later(self, delay, ref):
        """Deliver a poll to ``ref`` after ``delay`` seconds (earliest request wins)."""
        due = self._clock() + delay
        with self._lock:
            current = self._timer_due.get(ref.key)
            if current is not None and current <= due:
                return
            self._timer_due[ref.key] = due
            self._refs.setdefault(ref.key, ref)
            heapq.heappush(self._timers, (due, next(self._seq), ref.key))
            self._timer_cond.notify_all()

    # -- debug sessions (astara-ctl debug-resource) --------------------------------------------
    def divert(self, ref, sink, timeout=30.0):
        """Send ``ref``'s events to ``sink`` instead of its automaton, once no worker holds
        it (the caller has paused it, so queued work is dropped). Returns the automaton
        (made if new, with our claim) for the session to run; NotOwner when another
        orchestrator owns ``ref`` (only the owner may act on it), TimeoutError when a
        worker keeps holding it."""
        deadline = time.monotonic() + timeout
        while True:
            claim = self.owns(ref)
            if not claim:
                raise NotOwner(ref)
            with self._lock:
                if ref.key not in self._scheduled:
                    self._diverted[ref.key] = sink
                    automaton = self._automata.get(ref.key)
                    if automaton is None:
                        automaton = self._automata[ref.key] = self._factory(ref, claim)
                        self._refs[ref.key] = ref
                    return automaton
            if time.monotonic() > deadline:
                raise TimeoutError(f"{ref} is still being worked on")
            time.sleep(0.05)

    def undivert(self, ref):
        with self._lock:
            self._diverted.pop(ref.key, None)

    # -- introspection ---------------------------------------------------------------------------
    def automaton(self, key):
        with self._lock:
            return self._automata.get(key)

    def statuses(self):
        with self._lock:
            return {key: automaton.status() for key, automaton in self._automata.items()}

    def debug_info(self):
        with self._lock:
            return {
                "threads": self._threads_wanted,
                "running": {name: f"{k[0]} {k[1]}" for name, k in self._running.items()},
                "ready": self._ready.qsize(),
                "resources": len(self._automata),
                "timers": len(self._timer_due),
                "queues": {f"{k[0]} {k[1]}": a.queue.snapshot()
                           for k, a in self._automata.items() if a.has_work()},
            }

    def busy_with(self, key):
        """True while ``key`` has an automaton (it may still have work or a timer)."""
        with self._lock:
            return key in self._automata

    def forget(self, key, timeout=60.0):
        """Stop working on a resource (its ownership moved): wait until no worker runs
        it, then drop its automaton, queue and timer. A queued run finds nothing to do."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while key in self._running.values():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    LOG.warning("%s %s: still running after %.0fs; forgetting it anyway "
                                "(its writes and pushes are fenced)", key[0], key[1],
                                timeout)
                    break
                self._timer_cond.wait(min(remaining, 1.0))
            self._automata.pop(key, None)
            self._refs.pop(key, None)
            self._timer_due.pop(key, None)
            self._fresh.discard(key)

    def idle(self):
        """True when nothing is queued or running (timers may be pending)."""
        with self._lock:
            return not self._scheduled

    # -- internals -------------------------------------------------------------------------------
    def _schedule(self, key):
        if key not in self._scheduled:
            self._scheduled.add(key)
            self._enqueue(key)

    def _enqueue(self, key):
        self._ready.put((1 if key in self._fresh else 0, next(self._seq), key))

    def _work(self):
        name = threading.current_thread().name
        while True:
            _, _, key = self._ready.get()
            if key is None:
                return
            with self._lock:
                automaton = self._automata.get(key)
                self._running[name] = key
                self._fresh.discard(key)
            delay = None
            fenced = None
            try:
                if automaton is not None and self._debug_flags.paused_reason(automaton.ref) and \
                        MANAGE not in automaton.queue.snapshot():
                    # Paused while work was queued: drop it, act on nothing.
                    LOG.info("%s: paused, dropping %s", automaton.ref, automaton.queue.clear())
                elif automaton is not None:
                    delay = automaton.run()
                    if self._after_run is not None:
                        self._after_run(automaton)
            except Fenced as exc:
                fenced = exc
            except Exception:  # noqa: BLE001 - keep the worker alive
                LOG.exception("%s: unhandled error", key)
                delay = 5.0
            finally:
                with self._lock:
                    self._running.pop(name, None)
                    self._finish(key, automaton)
                    self._timer_cond.notify_all()  # forget() may be waiting for this key
            if fenced is not None:
                LOG.warning("%s: %s", automaton.ref, fenced)
                if self._ownership is not None:
                    self._ownership.lost(automaton.ref)
                continue
            if delay is not None and automaton is not None and not automaton.deleted:
                self.call_later(delay, automaton.ref)

    def _finish(self, key, automaton):
        if automaton is not None and automaton.deleted:
            # Events that arrived after the delete (e.g. the id was created again) go to
            # a fresh automaton.
            actions = follow_ups(automaton.queue)
            if self._automata.get(key) is automaton:
                del self._automata[key]
            self._timer_due.pop(key, None)
            if actions and not self._stopping:
                fresh = self._automata[key] = self._factory(automaton.ref, automaton.claim)
                for action in actions:
                    fresh.send(action)
                self._enqueue(key)
                return
            self._refs.pop(key, None)
            self._scheduled.discard(key)
            return
        if automaton is not None and automaton.has_work() and not self._stopping:
            self._enqueue(key)  # stays scheduled: still exactly one holder
        else:
            self._scheduled.discard(key)

    def _run_timers(self):
        with self._lock:
            while not self._stopping:
                now = self._clock()
                if self._timers and self._timers[0][0] <= now:
                    due, _, key = heapq.heappop(self._timers)
                    if self._timer_due.get(key) != due:
                        continue  # superseded by an earlier timer
                    del self._timer_due[key]
                    ref = self._refs.get(key)
                    if ref is not None:
                        # deliver() takes the (re-entrant) lock itself.
                        self.deliver(ref, POLL)
                    continue
                wait = self._timers[0][0] - now if self._timers else 1.0
                self._timer_cond.wait(min(wait, 1.0))
