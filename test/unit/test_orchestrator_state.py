"""The per-resource state machine, transition by transition (reference table, contract
§2.4), plus the timeouts the original lacked. The instance manager under it is a scripted
stand-in (the thing under test is the automaton); time is a fake clock."""
import dataclasses
import math

import pytest

from orchestrator_lite import instances as outcome
from orchestrator_lite import state as st
from orchestrator_lite.config import HealthSettings
from orchestrator_lite.events import (CLUSTER_REBUILD, CREATE, DELETE, MANAGE, POLL, REBUILD,
                                      UPDATE, ResourceRef)
from orchestrator_lite.instances import BootError, ConfigureResult, Observation
from orchestrator_lite.state import Automaton, Wait, derive_state
from orchestrator_lite.store import Fenced

from sim_appliances import Clock

SETTINGS = HealthSettings(dead_grace=30, boot_timeout=100, boot_check_interval=2,
                          max_boot_attempts=3, boot_backoff_base=4, boot_backoff_cap=60,
                          error_cooldown=30, delete_timeout=10, max_push_failures=3,
                          push_backoff_base=2, push_backoff_cap=30)

ABSENT = Observation(exists=False)
NONE = Observation(exists=True, instances=0)
BOOTED = Observation(exists=True, instances=1, addressed=1, alive=0, dead_for=(0.0,))
UP_OBS = Observation(exists=True, instances=1, addressed=1, alive=1, in_sync=0)
SYNCED = Observation(exists=True, instances=1, addressed=1, alive=1, in_sync=1)
REPLUG_OBS = Observation(exists=True, instances=1, addressed=1, alive=1, needs_replug=True)
BROKEN = Observation(exists=True, instances=1, addressed=1, alive=0, dead_for=(math.inf,))
HA_HALF = Observation(exists=True, required=2, instances=1, addressed=1, alive=1, in_sync=1)


class Manager:
    """Scripted instance manager: returns what the test set, records what was asked."""

    def __init__(self, clock):
        self.clock = clock
        self.obs = NONE
        self.boot_error = None
        self.configure_results = []
        self.replug_ok = True
        self.stop_ok = True
        self.present = True
        self.digest = "inputs-1"
        self.calls = []
        self.on_boot = BOOTED  # observation after a successful boot
        self.on_stop = NONE
        self.member = None  # what take_member_to_replace() hands out once
        self.closed_after = []  # len(calls) at each close_clients()

    def observe(self):
        self.calls.append("observe")
        return self.obs if self.present else dataclasses.replace(ABSENT)

    def boot(self, only_missing=False):
        self.calls.append(("boot", only_missing))
        if self.boot_error:
            raise BootError(self.boot_error)
        self.obs = self.on_boot

    def configure(self, force=False):
        self.calls.append(("configure", force))
        result = self.configure_results.pop(0) if self.configure_results else \
            ConfigureResult(outcome.CONFIGURED)
        if result.outcome == outcome.CONFIGURED:
            self.obs = SYNCED
        return result

    def replug(self):
        self.calls.append("replug")
        return self.replug_ok

    def take_member_to_replace(self):
        member, self.member = self.member, None
        return member

    def stop(self, timeout, only=None):
        self.calls.append(("stop", timeout) if only is None else ("stop", timeout, only))
        if self.stop_ok:
            self.obs = self.on_stop
        return self.stop_ok

    def exists(self):
        return self.present

    def inputs_digest(self):
        return self.digest if self.present else None

    def close_clients(self):
        self.closed_after.append(len(self.calls))


@pytest.fixture
def clock():
    return Clock(1000.0)


@pytest.fixture
def manager(clock):
    return Manager(clock)


@pytest.fixture
def transitions():
    return []


@pytest.fixture
def auto(manager, clock, transitions):
    a = Automaton(ResourceRef("router", "r1", "t1"), manager, SETTINGS, clock=clock,
                  on_transition=lambda _a, old, new: transitions.append((old, new)))
    return a


def run(auto, action):
    """Send one action and run it; returns (steps taken, wait or None)."""
    auto.history.clear()
    auto.send(action)
    result = auto.run()
    return [h[0] for h in auto.history] + [auto.history[-1][1]], result


def at(auto, state_name, observed=True):
    auto.state = state_name
    auto.observed = observed
    return auto


# -- derive_state (update_state) ----------------------------------------------------------------

@pytest.mark.parametrize("previous, obs, expected", [
    (st.DOWN, ABSENT, st.GONE),
    (st.CONFIGURED, NONE, st.DOWN),
    (st.CONFIGURED, HA_HALF, st.DEGRADED),
    (st.DOWN, Observation(exists=True, instances=1, addressed=0), st.BOOTING),
    (st.DOWN, BOOTED, st.BOOTING),  # adopted but silent: give it the boot timeout
    (st.BOOTING, BOOTED, st.BOOTING),
    (st.DOWN, BROKEN, st.DOWN),  # compute says broken: no waiting
    (st.CONFIGURED, dataclasses.replace(BOOTED, dead_for=(10.0,)), st.CONFIGURED),  # grace
    (st.CONFIGURED, dataclasses.replace(BOOTED, dead_for=(30.0,)), st.DOWN),  # grace over
    (st.UP, dataclasses.replace(BOOTED, dead_for=(31.0,)), st.DOWN),
    (st.BOOTING, UP_OBS, st.UP),
    (st.DOWN, SYNCED, st.CONFIGURED),  # adoption: already at the desired hash
    (st.CONFIGURED, UP_OBS, st.UP),  # drift
    (st.UP, REPLUG_OBS, st.REPLUG),
    (st.CONFIGURED, Observation(exists=True, required=2, instances=2, addressed=2, alive=1,
                                in_sync=1, dead_for=(45.0,)), st.DEGRADED),
    (st.CONFIGURED, Observation(exists=True, required=2, instances=2, addressed=2, alive=1,
                                in_sync=1, dead_for=(5.0,)), st.CONFIGURED),
    # An HA member still booting (a VM takes longer than the grace): not lost, booting.
    (st.DEGRADED, Observation(exists=True, required=2, instances=2, addressed=2, alive=1,
                              in_sync=1, dead_for=(45.0,), booting=1), st.BOOTING),
])
def test_derive_state(previous, obs, expected):
    assert derive_state(previous, obs, 30) == expected


# -- CalcAction ---------------------------------------------------------------------------------

def test_first_look_before_acting_adopts_a_configured_appliance(auto, manager):
    manager.obs = SYNCED
    steps, wait = run(auto, POLL)
    assert steps == [st.CALC_ACTION, st.ALIVE, st.CALC_ACTION]
    assert auto.state == st.CONFIGURED
    assert not any(isinstance(c, tuple) and c[0] in ("boot", "stop") for c in manager.calls)


def test_calc_gone_goes_to_stop_then_exit(auto, manager):
    at(auto, st.GONE)
    manager.present = False
    steps, _ = run(auto, POLL)
    assert steps == [st.CALC_ACTION, st.STOP_INSTANCE, st.EXIT]
    assert auto.deleted


def test_calc_delete_goes_to_stop_then_exit(auto, manager):
    at(auto, st.CONFIGURED)
    steps, _ = run(auto, DELETE)
    assert steps == [st.CALC_ACTION, st.STOP_INSTANCE, st.EXIT]
    assert ("stop", SETTINGS.delete_timeout) in manager.calls


def test_calc_rebuild(auto, manager):
    at(auto, st.CONFIGURED)
    auto.boot_attempts = 2
    steps, wait = run(auto, REBUILD)
    assert steps[:4] == [st.CALC_ACTION, st.REBUILD_INSTANCE, st.CREATE_INSTANCE,
                         st.CHECK_BOOT]
    assert manager.calls[:2] == [("stop", SETTINGS.delete_timeout), ("boot", False)]
    assert auto.boot_attempts == 1  # reset, then this boot
    assert wait == SETTINGS.boot_check_interval


def test_rebuild_of_one_member_keeps_the_other(auto, manager):
    """A rolling upgrade replaces one HA member: only it is stopped, and the boot that
    follows only adds the missing one (degraded meanwhile)."""
    at(auto, st.CONFIGURED)
    manager.member = "ak-router-r1_1"
    steps, _ = run(auto, REBUILD)
    assert steps[:3] == [st.CALC_ACTION, st.REBUILD_INSTANCE, st.CREATE_INSTANCE]
    assert manager.calls[:2] == [("stop", SETTINGS.delete_timeout, "ak-router-r1_1"),
                                 ("boot", True)]
    assert manager.member is None  # taken once


@pytest.mark.parametrize("state_name", [st.DEGRADED, st.DOWN])
def test_calc_cluster_rebuild_when_degraded_or_down(auto, manager, state_name):
    at(auto, state_name)
    steps, _ = run(auto, CLUSTER_REBUILD)
    assert steps[:2] == [st.CALC_ACTION, st.CREATE_INSTANCE]


def test_calc_booting_goes_to_check_boot(auto, manager):
    at(auto, st.BOOTING)
    auto.booting_since = manager.clock.now
    manager.obs = BOOTED
    steps, wait = run(auto, POLL)
    assert steps == [st.CALC_ACTION, st.CHECK_BOOT, "Wait"]
    assert wait == SETTINGS.boot_check_interval


@pytest.mark.parametrize("state_name", [st.DOWN, st.DEGRADED])
def test_calc_down_or_degraded_goes_to_create(auto, manager, state_name):
    at(auto, state_name)
    manager.obs = HA_HALF if state_name == st.DEGRADED else NONE
    steps, _ = run(auto, POLL)
    assert steps[:2] == [st.CALC_ACTION, st.CREATE_INSTANCE]
    assert ("boot", state_name == st.DEGRADED) in manager.calls


def test_calc_otherwise_goes_to_alive(auto, manager):
    at(auto, st.CONFIGURED)
    manager.obs = SYNCED
    steps, _ = run(auto, POLL)
    assert steps == [st.CALC_ACTION, st.ALIVE, st.CALC_ACTION]


# -- error parking (CalcAction override) ----------------------------------------------------------

def park(auto, kind, clock, digest="inputs-1"):
    auto.state = st.ERROR
    auto.observed = True
    auto.error = st.ErrorInfo(kind, "broken", clock.now, digest)


def test_error_poll_stays_parked(auto, manager, clock):
    park(auto, st.BOOT_ERROR, clock)
    steps, wait = run(auto, POLL)
    assert steps == [st.CALC_ACTION, st.CALC_ACTION]
    assert auto.state == st.ERROR
    assert wait == pytest.approx(SETTINGS.error_cooldown)  # woken at the end of cool-down
    assert manager.calls == []


def test_error_update_within_cooldown_stays_parked(auto, manager, clock):
    park(auto, st.BOOT_ERROR, clock)
    manager.digest = "inputs-2"  # the desired state changed ...
    clock.now += 10  # ... but the cool-down is not over
    steps, wait = run(auto, UPDATE)
    assert auto.state == st.ERROR
    assert wait == pytest.approx(20)


def test_error_change_clears_after_cooldown(auto, manager, clock):
    park(auto, st.BOOT_ERROR, clock)
    manager.digest = "inputs-2"
    clock.now += 31
    steps, _ = run(auto, POLL)  # the cool-down wake-up poll
    assert steps[:3] == [st.CALC_ACTION, st.CLEAR_ERROR, st.CREATE_INSTANCE]
    assert auto.error is None


def test_error_without_change_never_clears_by_itself(auto, manager, clock):
    park(auto, st.BOOT_ERROR, clock)
    clock.now += 3600
    steps, wait = run(auto, UPDATE)
    assert auto.state == st.ERROR and wait is None


def test_config_error_clears_on_a_new_payload_at_once(auto, manager, clock):
    park(auto, st.CONFIG_ERROR, clock)
    manager.digest = "inputs-2"
    manager.obs = UP_OBS
    steps, _ = run(auto, UPDATE)
    # Clearing a refused config never boots: it looks at the appliance and pushes.
    assert steps == [st.CALC_ACTION, st.CLEAR_ERROR, st.ALIVE, st.CONFIGURE_INSTANCE,
                     st.CALC_ACTION]
    assert auto.state == st.CONFIGURED
    assert not any(c[0] in ("boot", "stop") for c in manager.calls if isinstance(c, tuple))


def test_manage_clears_error_and_forces_a_push(auto, manager, clock):
    park(auto, st.CONFIG_ERROR, clock)
    manager.obs = UP_OBS
    steps, _ = run(auto, MANAGE)
    assert steps[:2] == [st.CALC_ACTION, st.CLEAR_ERROR]
    assert ("configure", True) in manager.calls


def test_manage_clears_boot_error_and_boots(auto, manager, clock):
    park(auto, st.BOOT_ERROR, clock)
    auto.boot_attempts = SETTINGS.max_boot_attempts
    steps, _ = run(auto, MANAGE)
    assert steps[:3] == [st.CALC_ACTION, st.CLEAR_ERROR, st.CREATE_INSTANCE]
    assert auto.boot_attempts == 1


def test_delete_in_error_stops(auto, manager, clock):
    park(auto, st.BOOT_ERROR, clock)
    manager.present = False
    steps, _ = run(auto, DELETE)
    assert steps == [st.CALC_ACTION, st.STOP_INSTANCE, st.EXIT]


def test_rebuild_in_error_clears_and_rebuilds(auto, manager, clock):
    park(auto, st.BOOT_ERROR, clock)
    steps, _ = run(auto, REBUILD)
    assert steps[:4] == [st.CALC_ACTION, st.CLEAR_ERROR, st.REBUILD_INSTANCE,
                         st.CREATE_INSTANCE]


# -- Alive --------------------------------------------------------------------------------------

def test_alive_gone_stops(auto, manager):
    at(auto, st.CONFIGURED)
    manager.present = False
    steps, _ = run(auto, UPDATE)
    assert steps == [st.CALC_ACTION, st.ALIVE, st.STOP_INSTANCE, st.EXIT]


def test_alive_down_creates(auto, manager):
    at(auto, st.CONFIGURED)
    manager.obs = NONE
    steps, _ = run(auto, POLL)
    assert steps[:3] == [st.CALC_ACTION, st.ALIVE, st.CREATE_INSTANCE]


def test_alive_degraded_boots_only_the_missing_member(auto, manager):
    at(auto, st.CONFIGURED)
    manager.obs = HA_HALF
    auto.boot_attempts = SETTINGS.max_boot_attempts  # degraded boots do not count
    steps, _ = run(auto, POLL)
    assert steps[:3] == [st.CALC_ACTION, st.ALIVE, st.CREATE_INSTANCE]
    assert ("boot", True) in manager.calls
    assert auto.boot_attempts == SETTINGS.max_boot_attempts


def test_alive_poll_configured_is_done(auto, manager):
    at(auto, st.CONFIGURED)
    manager.obs = SYNCED
    steps, wait = run(auto, POLL)
    assert steps == [st.CALC_ACTION, st.ALIVE, st.CALC_ACTION] and wait is None
    assert not any(isinstance(c, tuple) and c[0] == "configure" for c in manager.calls)


def test_alive_update_configures(auto, manager):
    at(auto, st.CONFIGURED)
    manager.obs = SYNCED
    steps, _ = run(auto, UPDATE)
    assert steps == [st.CALC_ACTION, st.ALIVE, st.CONFIGURE_INSTANCE, st.CALC_ACTION]


def test_alive_drift_reconfigures_on_poll(auto, manager):
    at(auto, st.CONFIGURED)
    manager.obs = UP_OBS  # alive, committed hash differs (or null after a wipe)
    steps, _ = run(auto, POLL)
    assert steps == [st.CALC_ACTION, st.ALIVE, st.CONFIGURE_INSTANCE, st.CALC_ACTION]
    assert auto.state == st.CONFIGURED


def test_alive_replug(auto, manager):
    at(auto, st.CONFIGURED)
    manager.obs = REPLUG_OBS
    steps, _ = run(auto, UPDATE)
    assert steps[:4] == [st.CALC_ACTION, st.ALIVE, st.REPLUG_INSTANCE, st.CONFIGURE_INSTANCE]


def test_liveness_lost_waits_for_the_grace_period_then_rebuilds(auto, manager, clock):
    at(auto, st.CONFIGURED)
    manager.obs = dataclasses.replace(BOOTED, dead_for=(12.0,))
    steps, wait = run(auto, POLL)
    assert steps == [st.CALC_ACTION, st.ALIVE, "Wait"]
    assert wait == pytest.approx(18.0)
    assert auto.state == st.CONFIGURED
    manager.obs = dataclasses.replace(BOOTED, dead_for=(30.5,))
    steps, _ = run(auto, POLL)
    assert steps[:3] == [st.CALC_ACTION, st.ALIVE, st.CREATE_INSTANCE]
    assert ("boot", False) in manager.calls


def test_broken_instance_is_replaced_without_grace(auto, manager):
    at(auto, st.CONFIGURED)
    manager.obs = BROKEN
    steps, _ = run(auto, POLL)
    assert steps[:3] == [st.CALC_ACTION, st.ALIVE, st.CREATE_INSTANCE]


# -- CreateInstance -----------------------------------------------------------------------------

def test_create_boots_then_checks(auto, manager):
    at(auto, st.DOWN)
    steps, wait = run(auto, CREATE)
    assert steps == [st.CALC_ACTION, st.CREATE_INSTANCE, st.CHECK_BOOT, "Wait"]
    assert auto.state == st.BOOTING and auto.boot_attempts == 1


def test_create_failure_backs_off_instead_of_looping(auto, manager, clock):
    at(auto, st.DOWN)
    manager.boot_error = "no room"
    steps, wait = run(auto, CREATE)
    assert steps == [st.CALC_ACTION, st.CREATE_INSTANCE, "Wait"]
    assert [c for c in manager.calls if c[0] == "boot"] == [("boot", False)]  # one try
    assert SETTINGS.boot_backoff_base / 2 <= wait <= SETTINGS.boot_backoff_base
    assert "no room" in auto.last_error
    # A poll before the back-off is over does not boot again.
    steps, wait2 = run(auto, POLL)
    assert steps == [st.CALC_ACTION, st.CREATE_INSTANCE, "Wait"]
    assert len([c for c in manager.calls if c[0] == "boot"]) == 1
    clock.now += wait
    run(auto, POLL)
    assert len([c for c in manager.calls if c[0] == "boot"]) == 2


def test_too_many_boots_park_in_error(auto, manager, clock):
    at(auto, st.DOWN)
    manager.boot_error = "no room"
    for _ in range(SETTINGS.max_boot_attempts):
        run(auto, POLL)
        clock.now += SETTINGS.boot_backoff_cap
    steps, wait = run(auto, POLL)
    assert steps == [st.CALC_ACTION, st.CREATE_INSTANCE, st.CALC_ACTION]
    assert auto.state == st.ERROR and auto.error.kind == st.BOOT_ERROR
    assert "3 boot attempts failed" in auto.last_error
    assert wait == pytest.approx(SETTINGS.error_cooldown)


def test_create_when_resource_vanished_stops(auto, manager):
    at(auto, st.DOWN)
    manager.boot_error = "gone"
    manager.present = False
    steps, _ = run(auto, CREATE)
    assert steps == [st.CALC_ACTION, st.CREATE_INSTANCE, st.STOP_INSTANCE, st.EXIT]


# -- CheckBoot ----------------------------------------------------------------------------------

def booting(auto, manager, obs):
    at(auto, st.BOOTING)
    auto.booting_since = manager.clock.now
    manager.obs = obs


def test_check_boot_up_configures(auto, manager):
    booting(auto, manager, UP_OBS)
    steps, _ = run(auto, POLL)
    assert steps == [st.CALC_ACTION, st.CHECK_BOOT, st.CONFIGURE_INSTANCE, st.CALC_ACTION]
    assert auto.state == st.CONFIGURED


def test_check_boot_replug(auto, manager):
    booting(auto, manager, REPLUG_OBS)
    steps, _ = run(auto, POLL)
    assert steps[:3] == [st.CALC_ACTION, st.CHECK_BOOT, st.REPLUG_INSTANCE]


@pytest.mark.parametrize("obs", [NONE, ABSENT])
def test_check_boot_down_or_gone_stops(auto, manager, obs):
    booting(auto, manager, obs)
    if obs is ABSENT:
        manager.present = False
    steps, _ = run(auto, POLL)
    assert steps[:3] == [st.CALC_ACTION, st.CHECK_BOOT, st.STOP_INSTANCE]


def test_boot_timeout(auto, manager, clock):
    """The original's missing boot timeout: an instance that never answers is destroyed
    after boot_timeout and booted again after a back-off."""
    booting(auto, manager, BOOTED)
    auto.boot_attempts = 1
    clock.now += SETTINGS.boot_timeout - 1
    steps, wait = run(auto, POLL)
    assert steps == [st.CALC_ACTION, st.CHECK_BOOT, "Wait"] and wait == 1
    clock.now += 1
    steps, wait = run(auto, POLL)
    assert steps == [st.CALC_ACTION, st.CHECK_BOOT, st.STOP_INSTANCE, st.CREATE_INSTANCE,
                     "Wait"]
    assert "within 100s of boot" in auto.last_error
    assert auto.state == st.DOWN and wait > 0


# -- ConfigureInstance / PushUpdate -------------------------------------------------------------

def configuring(auto, manager, *results):
    at(auto, st.UP)
    manager.obs = UP_OBS
    manager.configure_results = list(results)


def test_configure_rejected_parks_in_error_without_reboot(auto, manager):
    configuring(auto, manager, ConfigureResult(outcome.REJECTED, "422: hostname is bad"))
    steps, wait = run(auto, UPDATE)
    assert steps == [st.CALC_ACTION, st.ALIVE, st.CONFIGURE_INSTANCE, st.CALC_ACTION]
    assert auto.state == st.ERROR and auto.error.kind == st.CONFIG_ERROR
    assert "hostname is bad" in auto.last_error
    assert wait is None
    assert not any(c[0] in ("boot", "stop") for c in manager.calls if isinstance(c, tuple))
    # Polls do not retry the refused payload.
    run(auto, POLL)
    assert [c for c in manager.calls if c[0] == "configure"] == [("configure", False)]


def test_configure_transient_failure_retries_with_backoff(auto, manager, clock):
    configuring(auto, manager, ConfigureResult(outcome.FAILED, "timeout"))
    steps, wait = run(auto, UPDATE)
    assert steps == [st.CALC_ACTION, st.ALIVE, st.CONFIGURE_INSTANCE, st.PUSH_UPDATE, "Wait"]
    assert SETTINGS.push_backoff_base / 2 <= wait <= SETTINGS.push_backoff_base
    assert auto.state == st.UP
    steps, _ = run(auto, POLL)  # too early: waits, does not push
    assert steps == [st.CALC_ACTION, st.ALIVE, st.CONFIGURE_INSTANCE, "Wait"]
    clock.now += wait
    run(auto, POLL)
    assert auto.state == st.CONFIGURED
    assert len([c for c in manager.calls if c[0] == "configure"]) == 2


def test_configure_repeated_failures_park_in_error(auto, manager, clock):
    configuring(auto, manager, *[ConfigureResult(outcome.FAILED, "HTTP 500")] * 3)
    for _ in range(3):
        run(auto, UPDATE)
        clock.now += SETTINGS.push_backoff_cap
    assert auto.state == st.ERROR and "3 config pushes failed" in auto.last_error
    assert not any(c[0] in ("boot", "stop") for c in manager.calls if isinstance(c, tuple))


def test_configure_replug_and_gone(auto, manager):
    configuring(auto, manager, ConfigureResult(outcome.REPLUG, "new network"))
    steps, _ = run(auto, UPDATE)
    assert steps[:4] == [st.CALC_ACTION, st.ALIVE, st.CONFIGURE_INSTANCE, st.REPLUG_INSTANCE]
    configuring(auto, manager, ConfigureResult(outcome.GONE))
    steps, _ = run(auto, UPDATE)
    assert steps[2:4] == [st.CONFIGURE_INSTANCE, st.STOP_INSTANCE]


def test_force_push_flag(auto, manager):
    at(auto, st.CONFIGURED)
    manager.obs = SYNCED
    auto.force_push = True
    run(auto, UPDATE)
    assert ("configure", True) in manager.calls and not auto.force_push


# -- ReplugInstance / StopInstance / RebuildInstance -------------------------------------------

def test_replug_failure_restarts(auto, manager, transitions):
    at(auto, st.UP)
    manager.obs = REPLUG_OBS
    manager.replug_ok = False
    steps, _ = run(auto, UPDATE)
    assert steps[:5] == [st.CALC_ACTION, st.ALIVE, st.REPLUG_INSTANCE, st.STOP_INSTANCE,
                         st.CREATE_INSTANCE]
    assert (st.REPLUG, st.RESTART) in transitions


def test_stop_timeout_parks_in_error(auto, manager):
    at(auto, st.CONFIGURED)
    manager.stop_ok = False
    steps, _ = run(auto, DELETE)
    assert steps == [st.CALC_ACTION, st.STOP_INSTANCE, st.CALC_ACTION]
    assert auto.state == st.ERROR and auto.error.kind == st.STOP_ERROR
    assert "not deleted within 10s" in auto.last_error
    # A later delete retries the stop.
    manager.stop_ok = True
    manager.present = False
    steps, _ = run(auto, DELETE)
    assert steps == [st.CALC_ACTION, st.STOP_INSTANCE, st.EXIT]


def test_stop_without_delete_goes_on_to_create(auto, manager):
    booting(auto, manager, NONE)  # the instance vanished while booting
    steps, wait = run(auto, POLL)
    assert steps == [st.CALC_ACTION, st.CHECK_BOOT, st.STOP_INSTANCE, st.CREATE_INSTANCE,
                     st.CHECK_BOOT, "Wait"]
    assert auto.state == st.BOOTING and wait == SETTINGS.boot_check_interval


def test_rebuild_of_deleted_resource_exits(auto, manager):
    at(auto, st.CONFIGURED)
    manager.present = False
    steps, _ = run(auto, REBUILD)
    assert steps == [st.CALC_ACTION, st.REBUILD_INSTANCE, st.EXIT]


def test_transitions_are_reported(auto, manager, transitions):
    at(auto, st.DOWN)
    manager.on_boot = UP_OBS
    run(auto, CREATE)
    assert transitions == [(st.DOWN, st.BOOTING), (st.BOOTING, st.UP), (st.UP, st.CONFIGURED)]


def test_wait_object():
    assert Wait(3).delay == 3


def test_a_crashing_step_is_retried_with_backoff(auto, manager):
    at(auto, st.CONFIGURED)

    def broken():
        raise OSError("ip: command failed")

    manager.observe = broken
    waits = [run(auto, POLL)[1] for _ in range(3)]
    assert "ip: command failed" in auto.last_error
    assert 0.5 <= waits[0] <= 1.0 and 1.0 <= waits[1] <= 2.0 and 2.0 <= waits[2] <= 4.0


def test_each_run_closes_the_appliance_clients_once_at_its_end(auto, manager):
    at(auto, st.CONFIGURED)
    manager.obs = UP_OBS
    run(auto, POLL)  # the observation, then the push, then one close
    assert [c if isinstance(c, str) else c[0] for c in manager.calls] == \
        ["observe", "configure"]
    assert manager.closed_after == [2]

    def fenced():
        raise Fenced("another orchestrator took it over")

    manager.observe = fenced  # a run that ends in an exception closes them too
    with pytest.raises(Fenced):
        run(auto, POLL)
    assert manager.closed_after == [2, 2]
    assert auto.run() is None and manager.closed_after == [2, 2]  # nothing queued, no run


# -- the appliance reports degraded (its supervisor could not repair something) -------------

DEGRADED_OBS = dataclasses.replace(UP_OBS, unhealthy=("ak-router-r1_0: dhcp is down",))


def test_a_degraded_appliance_is_repushed(auto, manager):
    at(auto, st.CONFIGURED)
    manager.obs = DEGRADED_OBS
    steps, _ = run(auto, POLL)
    assert steps[:3] == [st.CALC_ACTION, st.ALIVE, st.CONFIGURE_INSTANCE]
    assert ("configure", False) in manager.calls  # not in sync: pushed without forcing
    assert auto.state == st.CONFIGURED and auto.last_error is None  # the push repaired it
    assert not any(isinstance(c, tuple) and c[0] in ("boot", "stop") for c in manager.calls)


def test_a_degraded_appliance_shows_the_reason_while_within_the_grace(auto, manager):
    at(auto, st.UP)
    manager.obs = DEGRADED_OBS
    auto._observe()
    assert auto._appliance_degraded(manager.obs) is False
    assert auto.last_error == "appliance degraded: ak-router-r1_0: dhcp is down"


def test_an_appliance_degraded_past_the_grace_is_rebuilt(auto, manager, clock):
    at(auto, st.CONFIGURED)
    manager.obs = DEGRADED_OBS
    manager.configure_results = [ConfigureResult(outcome.FAILED, "500")] * 2
    run(auto, POLL)  # first sight: re-pushed, the grace starts
    clock.now += SETTINGS.degraded_grace
    auto.next_push_at = 0.0
    manager.obs = DEGRADED_OBS
    steps, _ = run(auto, POLL)
    assert steps[:3] == [st.CALC_ACTION, st.ALIVE, st.REBUILD_INSTANCE]
    assert ("stop", SETTINGS.delete_timeout) in manager.calls
    assert auto.last_error.startswith(f"appliance degraded for {SETTINGS.degraded_grace:g}s")
    assert "dhcp is down" in auto.last_error and auto.state == st.BOOTING


def test_a_repaired_appliance_resets_the_grace(auto, manager, clock):
    at(auto, st.CONFIGURED)
    manager.obs = DEGRADED_OBS
    run(auto, POLL)
    assert auto.degraded_since is not None
    manager.obs = SYNCED
    clock.now += SETTINGS.degraded_grace
    steps, _ = run(auto, POLL)
    assert auto.degraded_since is None and auto.state == st.CONFIGURED
    assert st.REBUILD_INSTANCE not in steps
