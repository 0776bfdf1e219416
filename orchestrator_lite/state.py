"""Per-resource state machine (astara's ``Automaton`` redone with timeouts).

Reference states (``state``): down, booting, up, configured, degraded, replug, restart,
gone, error. Steps (astara's automaton classes, ReadStats dropped since it was dead code):

  CalcAction        error: delete -> StopInstance; rebuild/manage, or the desired inputs
                    changed (config errors at once, boot/stop errors after the cool-down)
                    -> ClearError; else stay parked. Otherwise: gone or delete ->
                    StopInstance; rebuild -> RebuildInstance; cluster_rebuild and
                    degraded/down -> CreateInstance; booting -> CheckBoot; down/degraded ->
                    CreateInstance; else (and before the first look) -> Alive
  Alive             observe: gone -> Stop; down/degraded -> Create; replug -> Replug;
                    booting -> CheckBoot; the appliance reports degraded past
                    degraded_grace -> Rebuild (before: re-pushed as out of sync, the
                    reason in last_error); nobody answers (within the grace) -> wait;
                    poll & configured -> done; else -> ConfigureInstance
  CreateInstance    too many boots -> error; back-off not over -> wait; boot ->
                    CheckBoot (a boot failure waits for the back-off instead of looping)
  CheckBoot         observe: replug -> Replug; down/gone -> Stop; up -> Configure;
                    configured -> done; degraded -> Create; booting past boot_timeout ->
                    Stop (counts as a failed boot); else wait boot_check_interval
  ConfigureInstance configured -> done; replug -> Replug; gone -> Stop; refused (4xx) ->
                    error, the appliance is left alone; transient failure -> PushUpdate
                    (too many in a row -> error)
  PushUpdate        wait for the push back-off, then a poll retries
  ReplugInstance    hot-plug failed -> restart -> Stop; else -> Configure
  StopInstance      destroy (bounded by delete_timeout, else error); gone or delete ->
                    Exit; else -> Create
  RebuildInstance   stop (all instances, or the one member a rolling upgrade replaces:
                    degraded meanwhile), reset boot counter, action becomes create ->
                    Create (gone: Exit)
  ClearError        reset counters; -> the step CalcAction would pick without the error

A step that has to wait returns ``Wait(seconds)``: the worker is released and the scheduler
polls the resource again after that delay, so nothing ever blocks or spins. Every waiting
state has an explicit limit: boot_timeout, dead_grace, the push back-off and
max_push_failures, delete_timeout, hotplug_timeout, error_cooldown.
"""
import collections
import dataclasses
import logging
import math
import time

from . import instances
from .events import (CLUSTER_REBUILD, CREATE, DELETE, MANAGE, POLL, REBUILD, EventQueue)
from .instances import BootError
from .metrics import DISCARD
from .retry import backoff_delay
from .store import Fenced

LOG = logging.getLogger(__name__)

DOWN = "down"
BOOTING = "booting"
UP = "up"
CONFIGURED = "configured"
DEGRADED = "degraded"
REPLUG = "replug"
RESTART = "restart"
GONE = "gone"
ERROR = "error"

CALC_ACTION = "CalcAction"
ALIVE = "Alive"
CREATE_INSTANCE = "CreateInstance"
CHECK_BOOT = "CheckBoot"
CONFIGURE_INSTANCE = "ConfigureInstance"
PUSH_UPDATE = "PushUpdate"
REPLUG_INSTANCE = "ReplugInstance"
STOP_INSTANCE = "StopInstance"
REBUILD_INSTANCE = "RebuildInstance"
CLEAR_ERROR = "ClearError"
EXIT = "Exit"

BOOT_ERROR = "boot"
CONFIG_ERROR = "config"
STOP_ERROR = "stop"

MAX_STEPS = 32  # one action never needs more; more means a bug, not a busy resource


@dataclasses.dataclass(frozen=True)
class Wait:
    delay: float


@dataclasses.dataclass(frozen=True)
class ErrorInfo:
    kind: str  # BOOT_ERROR, CONFIG_ERROR, STOP_ERROR
    message: str
    since: float
    digest: object  # inputs digest when it happened: a change may clear the error


def lost_message(obs, dead_grace):
    """Why a resource that was up went down (for ``last_error``)."""
    if obs.instances == 0:
        return "appliance lost: its instance is gone; rebuilding"
    if obs.dead_for and all(math.isinf(d) for d in obs.dead_for):
        return "appliance lost: the compute driver reports its instance broken; rebuilding"
    return f"appliance lost: no answer for {dead_grace:g}s; rebuilding"


def derive_state(previous, obs, dead_grace):
    """The reference state implied by an observation (pure)."""
    if not obs.exists:
        return GONE
    if obs.instances == 0:
        return DOWN
    if obs.instances < obs.required:
        return DEGRADED
    if obs.addressed == 0:
        return BOOTING
    if obs.alive == 0:
        all_dead = all(d >= dead_grace for d in obs.dead_for)
        if previous in (UP, CONFIGURED, DEGRADED, REPLUG):
            if all_dead:
                return DOWN
            return previous if previous != REPLUG else UP
        if obs.dead_for and all(math.isinf(d) for d in obs.dead_for):
            return DOWN  # the compute layer says they are broken: no point waiting
        return BOOTING
    if obs.booting:
        return BOOTING  # an HA member (re)boots, the other serves; bounded by boot_timeout
    if any(d >= dead_grace for d in obs.dead_for):
        return DEGRADED  # an HA member is lost for good; the other one serves
    if obs.needs_replug:
        return REPLUG
    return CONFIGURED if obs.in_sync == obs.alive else UP


class Automaton:
    @property
    def claim(self):
        """The owner's claim (coordination), which the instance manager acts with."""
        return self.manager.claim

    def __init__(self, ref, manager, settings, clock=time.monotonic, on_transition=None,
                 rng=None, metrics=DISCARD):
        self.ref = ref
        self.metrics = metrics  # timeouts (metrics.py)
        self.manager = manager
        self.settings = settings  # HealthSettings
        self.queue = EventQueue(str(ref))
        self.state = DOWN
        self.observed = False  # nothing known before the first look: never boot blindly
        self.action = None
        self.boot_attempts = 0
        self.next_boot_at = 0.0
        self.booting_since = None
        self.push_failures = 0
        self.next_push_at = 0.0
        self.error = None
        self.last_error = None
        self.force_push = False
        self.degraded_since = None  # when the appliance itself first reported degraded
        self.crashes = 0  # consecutive runs that raised: retried with back-off
        self.deleted = False
        self.state_since = time.time()
        self.history = collections.deque(maxlen=64)  # (step, next step, state)
        self.polls = 0  # health polls handled: lets an operator (and a test) see them pass
        self._clock = clock
        self._on_transition = on_transition
        self._rng = rng
        self._steps = {CALC_ACTION: self._calc_action, ALIVE: self._alive,
                       CREATE_INSTANCE: self._create_instance, CHECK_BOOT: self._check_boot,
                       CONFIGURE_INSTANCE: self._configure_instance,
                       PUSH_UPDATE: self._push_update, REPLUG_INSTANCE: self._replug_instance,
                       STOP_INSTANCE: self._stop_instance,
                       REBUILD_INSTANCE: self._rebuild_instance, CLEAR_ERROR: self._clear_error}

    def __repr__(self):
        return f"Automaton({self.ref}, {self.state})"

    # -- driving ---------------------------------------------------------------------------------
    def send(self, action):
        self.queue.push(action)

    def has_work(self):
        return bool(self.queue)

    def run(self):
        """Handle one collapsed action. Returns seconds until the resource wants to be
        polled again (a wait), or None."""
        self.action = self.queue.pop()
        if self.action is None:
            return None
        if self.action == POLL:
            self.polls += 1
        try:
            return self._steps_of_action()
        finally:
            # The run's appliance calls (a poll, then maybe a push) shared one connection
            # per appliance; the next run comes after the agent dropped it (2 s idle), so
            # keeping it would hold a CLOSE_WAIT descriptor per appliance until then.
            self.manager.close_clients()

    def _steps_of_action(self):
        step = CALC_ACTION
        for _ in range(MAX_STEPS):
            try:
                nxt = self._steps[step]()
            except Fenced:
                raise  # not ours any more: the scheduler hands the resource over
            except Exception as exc:  # noqa: BLE001 - a bug must not kill the worker
                LOG.exception("%s: %s failed", self.ref, step)
                self.last_error = f"{step} failed: {exc}"
                self.crashes += 1
                return self._backoff(self.crashes, 1.0, 60.0)
            if isinstance(nxt, Wait):
                self.history.append((step, "Wait", self.state))
                self.crashes = 0
                return max(0.0, nxt.delay)
            self.history.append((step, nxt, self.state))
            if nxt == EXIT:
                self.deleted = True
                return None
            if nxt == CALC_ACTION:
                self.crashes = 0
                return self._wake_while_parked()
            step = nxt
        raise RuntimeError(f"{self.ref}: state machine did not settle in {MAX_STEPS} steps")

    def status(self):
        return {"id": self.ref.id, "kind": self.ref.kind, "tenant_id": self.ref.tenant_id,
                "state": self.state, "state_since": self.state_since,
                "last_error": self.last_error,
                "error": dataclasses.asdict(self.error) if self.error else None,
                "boot_attempts": self.boot_attempts, "push_failures": self.push_failures,
                "polls": self.polls,
                "queue": self.queue.snapshot(),
                "history": [list(h) for h in list(self.history)[-10:]]}

    # -- helpers ---------------------------------------------------------------------------------
    def _set_state(self, state):
        if state == self.state:
            return
        old, self.state = self.state, state
        self.state_since = time.time()
        if state == BOOTING:
            self.booting_since = self._clock()
        LOG.info("%s: %s -> %s", self.ref, old, state)
        if self._on_transition is not None:
            try:
                self._on_transition(self, old, state)
            except Fenced:
                raise
            except Exception:  # noqa: BLE001 - status out is best effort
                LOG.exception("%s: transition hook failed", self.ref)

    def _observe(self):
        obs = self.manager.observe()
        self.observed = True
        self._set_state(derive_state(self.state, obs, self.settings.dead_grace))
        return obs

    def _set_error(self, kind, message):
        self.error = ErrorInfo(kind, message, self._clock(), self.manager.inputs_digest())
        self.last_error = message
        LOG.warning("%s: error (%s): %s", self.ref, kind, message)
        self._set_state(ERROR)

    def _backoff(self, attempt, base, cap):
        return backoff_delay(attempt, base, cap, self._rng)

    def _boot_failed(self, message):
        s = self.settings
        self.last_error = message
        self.next_boot_at = self._clock() + self._backoff(self.boot_attempts,
                                                          s.boot_backoff_base,
                                                          s.boot_backoff_cap)
        LOG.warning("%s: %s (boot attempt %d/%d)", self.ref, message, self.boot_attempts,
                    s.max_boot_attempts)

    def _error_may_clear(self):
        digest = self.manager.inputs_digest()
        if digest is None:
            return True  # the resource is gone: clear so the delete path can run
        if digest == self.error.digest:
            return False
        if self.error.kind == CONFIG_ERROR:
            return True  # a new payload: worth a push right away
        return self._clock() - self.error.since >= self.settings.error_cooldown

    def _wake_while_parked(self):
        """After parking in error: wake at the end of the cool-down (a change that arrived
        during it is acted on then)."""
        if self.state == ERROR and self.error and self.error.kind != CONFIG_ERROR:
            remaining = self.settings.error_cooldown - (self._clock() - self.error.since)
            if remaining > 0:
                return remaining
        return None

    def _choose(self):
        action = self.action
        if self.state == GONE or action == DELETE:
            return STOP_INSTANCE
        if action == REBUILD:
            return REBUILD_INSTANCE
        if not self.observed:
            return ALIVE
        if action == CLUSTER_REBUILD and self.state in (DEGRADED, DOWN):
            return CREATE_INSTANCE
        if self.state == BOOTING:
            return CHECK_BOOT
        if self.state in (DOWN, DEGRADED):
            return CREATE_INSTANCE
        return ALIVE

    # -- steps -----------------------------------------------------------------------------------
    def _calc_action(self):
        if self.state == ERROR:
            if self.action == DELETE:
                return STOP_INSTANCE
            if self.action in (REBUILD, MANAGE) or self._error_may_clear():
                return CLEAR_ERROR
            return CALC_ACTION  # parked: run() schedules the cool-down wake-up
        return self._choose()

    def _alive(self):
        before = self.state
        obs = self._observe()
        state = self.state
        if state == GONE:
            return STOP_INSTANCE
        if state in (DOWN, DEGRADED):
            if state == DOWN and before in (UP, CONFIGURED, DEGRADED, REPLUG):
                # Say why it is rebuilt (a successful configure clears it again).
                self.last_error = lost_message(obs, self.settings.dead_grace)
            return CREATE_INSTANCE
        if state == REPLUG:
            return REPLUG_INSTANCE
        if state == BOOTING:
            return CHECK_BOOT
        if self._appliance_degraded(obs):
            return REBUILD_INSTANCE
        if obs.alive == 0:  # lost, but within the grace period: look again when it ends
            silent = min(obs.dead_for) if obs.dead_for else 0.0
            return Wait(max(self.settings.dead_grace - silent, 0.1))
        if self.action == POLL and state == CONFIGURED:
            return CALC_ACTION
        return CONFIGURE_INSTANCE

    def _appliance_degraded(self, obs):
        """An appliance that reports degraded (a daemon down, drift it cannot repair) is
        re-pushed (it is not in sync) and its reason shown; past ``degraded_grace`` it is
        rebuilt. True: rebuild now."""
        if not obs.unhealthy:
            self.degraded_since = None
            return False
        now = self._clock()
        if self.degraded_since is None:
            self.degraded_since = now
        reasons = "; ".join(obs.unhealthy)
        grace = self.settings.degraded_grace
        if now - self.degraded_since < grace:
            self.last_error = f"appliance degraded: {reasons}"
            return False
        self.degraded_since = None
        self.last_error = f"appliance degraded for {grace:g}s ({reasons}); rebuilding"
        LOG.warning("%s: %s", self.ref, self.last_error)
        return True

    def _create_instance(self):
        s = self.settings
        degraded = self.state == DEGRADED
        if not degraded and self.boot_attempts >= s.max_boot_attempts:
            self._set_error(BOOT_ERROR, f"{self.boot_attempts} boot attempts failed; "
                                        f"last: {self.last_error}")
            return CALC_ACTION
        now = self._clock()
        if now < self.next_boot_at:
            return Wait(self.next_boot_at - now)
        if not degraded:
            self.boot_attempts += 1
        try:
            self.manager.boot(only_missing=degraded)
        except BootError as exc:
            if not self.manager.exists():
                self._set_state(GONE)
                return STOP_INSTANCE
            self._boot_failed(f"boot failed: {exc}")
            self._set_state(DOWN)
            return Wait(self.next_boot_at - self._clock())
        self._set_state(BOOTING)
        self.booting_since = self._clock()
        return CHECK_BOOT

    def _check_boot(self):
        self._observe()
        state = self.state
        if state == REPLUG:
            return REPLUG_INSTANCE
        if state in (DOWN, GONE):
            return STOP_INSTANCE
        if state == UP:
            return CONFIGURE_INSTANCE
        if state == CONFIGURED:
            return CALC_ACTION
        if state == DEGRADED:
            return CREATE_INSTANCE
        waited = self._clock() - (self.booting_since or self._clock())
        timeout = self.settings.boot_timeout
        if waited >= timeout:
            self.metrics.timed_out("boot")
            self._boot_failed(f"no answer from the appliance within {timeout:g}s of boot")
            return STOP_INSTANCE
        return Wait(min(self.settings.boot_check_interval, timeout - waited))

    def _configure_instance(self):
        s = self.settings
        now = self._clock()
        if self.action == POLL and now < self.next_push_at:
            return Wait(self.next_push_at - now)
        force = self.force_push or self.action in (MANAGE, REBUILD)
        result = self.manager.configure(force=force)
        if result.outcome == instances.CONFIGURED:
            self.force_push = False
            self.push_failures = 0
            self.next_push_at = 0.0
            self.boot_attempts = 0
            self.last_error = None
            self._set_state(CONFIGURED)
            return CALC_ACTION
        if result.outcome == instances.REPLUG:
            self._set_state(REPLUG)
            return REPLUG_INSTANCE
        if result.outcome == instances.GONE:
            self._set_state(GONE)
            return STOP_INSTANCE
        if result.outcome == instances.REJECTED:
            self._set_error(CONFIG_ERROR, result.message)
            return CALC_ACTION
        # FAILED (timeouts, 5xx) or DOWN (nobody answered any more): retry later, never
        # reboot for it; liveness loss is handled by the grace period.
        self.push_failures += 1
        self.last_error = f"config push failed: {result.message}"
        if self.push_failures >= s.max_push_failures:
            self._set_error(CONFIG_ERROR, f"{self.push_failures} config pushes failed in a "
                                          f"row; last: {result.message}")
            return CALC_ACTION
        self.next_push_at = now + self._backoff(self.push_failures, s.push_backoff_base,
                                                s.push_backoff_cap)
        self._set_state(UP)
        return PUSH_UPDATE

    def _push_update(self):
        return Wait(max(0.0, self.next_push_at - self._clock()))

    def _replug_instance(self):
        if not self.manager.replug():
            self.last_error = "hot-plug of the appliance's NICs failed; restarting it"
            self._set_state(RESTART)
            return STOP_INSTANCE
        self._set_state(UP)
        return CONFIGURE_INSTANCE

    def _stop_instance(self):
        timeout = self.settings.delete_timeout
        if not self.manager.stop(timeout):
            self.metrics.timed_out("delete")
            self._set_error(STOP_ERROR, f"instances not deleted within {timeout:g}s")
            return CALC_ACTION
        self._set_state(GONE if not self.manager.exists() else DOWN)
        if self.state == GONE or self.action == DELETE:
            return EXIT
        return CREATE_INSTANCE

    def _rebuild_instance(self):
        timeout = self.settings.delete_timeout
        member = self.manager.take_member_to_replace()  # HA: one member, the other serves
        if not self.manager.stop(timeout, only=member):
            self.metrics.timed_out("delete")
            self._set_error(STOP_ERROR, f"instances not deleted within {timeout:g}s")
            return CALC_ACTION
        self.boot_attempts = 0
        self.next_boot_at = 0.0
        self.push_failures = 0
        if not self.manager.exists():
            self._set_state(GONE)
            return EXIT
        self._set_state(DEGRADED if member else DOWN)
        self.observed = True
        self.action = CREATE
        return CREATE_INSTANCE

    def _clear_error(self):
        kind = self.error.kind if self.error else BOOT_ERROR
        LOG.info("%s: clearing error (%s) on %s", self.ref, kind, self.action)
        self.error = None
        self.boot_attempts = 0
        self.next_boot_at = 0.0
        self.push_failures = 0
        self.next_push_at = 0.0
        if self.action == MANAGE:
            self.force_push = True
        # A refused config left the appliance running: look at it again rather than boot.
        self._set_state(UP if kind == CONFIG_ERROR else DOWN)
        self.observed = kind != CONFIG_ERROR
        return self._choose()
