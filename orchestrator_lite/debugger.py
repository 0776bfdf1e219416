"""``astara-ctl debug-resource <id>`` (the original's ``astara-debug-router``): one
resource's state machine run in the foreground, inside the orchestrator (same store,
driver and instance manager, so nothing is out of date afterwards), while the workers
leave it alone, printing each event, step, transition, request and answer.

A session pauses the resource (its debug flag, so the workers drop its queued work),
waits until no worker holds it, then takes its events (``Scheduler.divert``: what would
have reached its automaton comes to the session and is shown) and runs its automaton step
by step with the driver and the appliance clients wrapped to report every call and its
answer. It acts on the actions the operator gave (default ``poll``), follows the state
machine through its waits (a boot until configured) and, with ``follow``, on every event
that arrives until the time limit. At the end the wrappers come off, the flag is cleared
(unless the resource was paused before) and the workers get the resource back with a
poll. Lines are dicts, streamed to astara-ctl as JSON lines.

Several orchestrators: only the resource's owner runs a session. A member that does not
own it refuses at once (409 naming the owner: ask that member's admin API); the session's
automaton carries the owner's claim, so if the ownership moves during a session its
writes and pushes are fenced (the session ends with that error) and the new owner, which
sees the same shared pause flag, leaves the resource alone until the flag is cleared.
"""
import logging
import queue
import threading
import time

from .events import ACTIONS, POLL, UPDATE
from .workers import NotOwner

LOG = logging.getLogger(__name__)
DEBUG_REASON = "astara-ctl debug-resource session"
END = object()


def short(value, limit=240):
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


class _Traced:
    """Proxy reporting each method call (request) and its result or error (answer);
    ``close`` (the end of every run drops the pooled connection) is not shown."""

    def __init__(self, target, emit, label):
        self._target, self._emit, self._label = target, emit, label

    def __getattr__(self, name):
        attr = getattr(self._target, name)
        if name == "close" or not callable(attr) or name.startswith("_"):
            return attr

        def call(*args, **kwargs):
            shown = ", ".join([short(a, 80) for a in args] +
                              [f"{k}={short(v, 80)}" for k, v in kwargs.items()])
            self._emit("request", call=f"{self._label}.{name}({shown})")
            try:
                result = attr(*args, **kwargs)
            except Exception as exc:
                self._emit("answer", call=f"{self._label}.{name}",
                           error=f"{type(exc).__name__}: {exc}")
                raise
            self._emit("answer", call=f"{self._label}.{name}", result=short(result))
            return result

        return call


class Session:
    def __init__(self, orchestrator, ref, actions=(POLL,), follow=False, timeout=120.0):
        unknown = [a for a in actions if a not in ACTIONS]
        if unknown:
            raise ValueError(f"unknown action(s) {', '.join(unknown)} ({', '.join(ACTIONS)})")
        self.orchestrator = orchestrator
        self.ref = ref
        self.actions = list(actions) or [POLL]
        self.follow = follow
        self.timeout = timeout
        self.lines = queue.Queue()
        self.stopping = threading.Event()
        self._start = time.monotonic()

    def emit(self, kind, **fields):
        self.lines.put({"t": round(time.monotonic() - self._start, 3), "kind": kind,
                        **fields})

    def stream(self):
        """The session's lines as they come (runs the session in its own thread; closing
        the generator, e.g. the client went away, ends the session at the next step)."""
        thread = threading.Thread(target=self._run, name=f"debug-{self.ref.id}", daemon=True)
        thread.start()
        try:
            while True:
                line = self.lines.get()
                if line is END:
                    return
                yield line
        finally:
            self.stopping.set()
            thread.join(self.timeout)

    def _run(self):
        try:
            self._session()
        except Exception as exc:  # noqa: BLE001 - reported to the operator
            LOG.exception("debug session for %s failed", self.ref)
            self.emit("error", message=f"{type(exc).__name__}: {exc}")
        finally:
            self.lines.put(END)

    def _session(self):
        o, ref = self.orchestrator, self.ref
        flags = o.store.debug_flags
        was_paused = ("resource", ref.id) in flags.all()
        if not was_paused:
            flags.set("resource", ref.id, DEBUG_REASON)
        events = queue.Queue()
        try:
            automaton = o.scheduler.divert(ref, lambda action, force: events.put((action, force)))
        except (TimeoutError, NotOwner):  # NotOwner: the ownership moved meanwhile
            if not was_paused:
                flags.clear("resource", ref.id)
            raise
        manager = automaton.manager
        saved = (manager.driver, manager.client_factory, dict(automaton._steps),
                 automaton._on_transition, {k: r.client for k, r in manager._runtimes.items()})
        try:
            self._instrument(automaton, manager, saved)
            self.emit("session", resource=str(ref), state=automaton.state,
                      paused_before=was_paused, actions=self.actions, follow=self.follow)
            self._drive(automaton, events)
        finally:
            manager.driver, manager.client_factory = saved[0], saved[1]
            automaton._steps.clear()
            automaton._steps.update(saved[2])
            automaton._on_transition = saved[3]
            for runtime in manager._runtimes.values():
                if isinstance(runtime.client, _Traced):
                    runtime.client = runtime.client._target
            o.scheduler.undivert(ref)
            if not was_paused:
                flags.clear("resource", ref.id)
            if automaton.deleted:
                o.scheduler.forget(ref.key)
            elif not was_paused:
                o.scheduler.deliver(ref, POLL)  # the workers take it back from here
            self.emit("end", state=automaton.state, last_error=automaton.last_error,
                      returned_to_workers=not was_paused and not automaton.deleted)

    def _instrument(self, automaton, manager, saved):
        emit = self.emit
        driver, factory, steps, hook, _ = saved
        manager.driver = _Traced(driver, emit, "driver")
        manager.client_factory = lambda instance: _Traced(factory(instance), emit,
                                                          f"appliance[{instance.name}]")
        for runtime in manager._runtimes.values():
            if runtime.client is not None:
                runtime.client = _Traced(runtime.client, emit,
                                         f"appliance[{runtime.instance.name}]")

        def traced(name, step):
            def run():
                before = automaton.state
                result = step()
                emit("step", step=name, state=before,
                     next=f"Wait({result.delay:.2f}s)" if hasattr(result, "delay")
                     else str(result))
                return result
            return run

        for name, step in steps.items():
            automaton._steps[name] = traced(name, step)

        def transition(machine, old, new):
            emit("transition", old=old, new=new, last_error=machine.last_error)
            if hook is not None:
                hook(machine, old, new)

        automaton._on_transition = transition

    def _drive(self, automaton, events):
        pending = list(self.actions)
        deadline = self._start + self.timeout
        wake_at = None
        while not self.stopping.is_set():
            now = time.monotonic()
            if now >= deadline:
                self.emit("timeout", seconds=self.timeout)
                return
            if pending:  # the operator's own: an update is pushed, as resource update does
                action, source = pending.pop(0), "debugger"
                force = action == UPDATE
            else:
                if wake_at is None and not self.follow:
                    return  # the machine is quiet: done
                limit = min(deadline, wake_at) if wake_at else min(deadline, now + 0.5)
                try:
                    (action, force), source = (events.get(timeout=max(0.0, limit - now)),
                                               "orchestrator")
                except queue.Empty:
                    if wake_at is None or time.monotonic() < wake_at:
                        continue
                    action, force, source = POLL, False, "wait over"
            self.emit("event", action=action, source=source)
            if force:  # forced as the workers would force it, no more
                automaton.force_push = True
            automaton.send(action)
            delay = None
            while automaton.has_work() and not automaton.deleted:
                delay = automaton.run()
            if automaton.deleted:
                self.emit("exit", message="the resource is gone; its state machine ended")
                return
            wake_at = time.monotonic() + delay if delay is not None else None
            if delay is not None:
                self.emit("wait", seconds=round(delay, 3))
