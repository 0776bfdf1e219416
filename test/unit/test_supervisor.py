"""The supervisor's rhythm: the interval while all is well, a doubling pause (bounded) while
repairs keep being needed or fail."""
from astara_router import settings as settings_mod
from astara_router.supervisor import Supervisor


class ScriptedEngine:
    """Answers ``reconcile`` from a script: a list of reasons, or an exception to raise."""

    def __init__(self, script):
        self.script = list(script)

    def reconcile(self):
        answer = self.script.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def test_pause_doubles_while_repairs_are_needed_and_resets_when_intact(tmp_path):
    config = tmp_path / "agent.ini"
    config.write_text("[supervisor]\ninterval = 2\nmax_backoff = 10\n")
    settings = settings_mod.load(str(config))
    assert (settings.reconcile_interval, settings.reconcile_max_backoff) == (2.0, 10.0)
    engine = ScriptedEngine([[], ["dhcp is down"], ["dhcp is down"], RuntimeError("no"),
                             ["dhcp is down"], [], ["netlink changed"]])
    supervisor = Supervisor(settings, engine)
    pauses = [supervisor.run_once() for _ in range(7)]
    assert pauses == [2, 2, 4, 8, 10, 2, 2]


def test_interval_zero_disables_the_loop(tmp_path):
    settings = settings_mod.load(state_dir=str(tmp_path), reconcile_interval=0.0)
    supervisor = Supervisor(settings, ScriptedEngine([]))
    supervisor.start()
    assert supervisor._thread is None
