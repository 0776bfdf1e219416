"""memory.TrimWhenQuiet: the heap's free pages go back once the pokes pause (a push
beginning, each thread of the work after its answer ending, a relayed request), and a
thread still running is waited for before its poke."""
import threading

from astara_router.memory import TrimWhenQuiet


def finished(count):
    threads = [threading.Thread(target=lambda: None) for _ in range(count)]
    for thread in threads:
        thread.start()
    return threads


class ScriptedPokes:
    """The event the pokes set, its waits answered from a script: True is a poke within
    the wait, False the quiet time passing without one."""

    def __init__(self, script):
        self.script, self.waits = list(script), []

    def wait(self, timeout=None):
        self.waits.append(timeout)
        return True if timeout is None else self.script.pop(0)

    def set(self):
        pass

    def clear(self):
        pass


def test_a_poke_within_the_quiet_time_puts_the_give_back_off():
    pokes = ScriptedPokes([True, True, True, False])
    trims = TrimWhenQuiet(quiet=0.05, poked=pokes)
    trims.wait_for_quiet()
    assert pokes.waits == [None, 0.05, 0.05, 0.05, 0.05] and pokes.script == []


def test_the_quiet_time_without_a_poke_ends_the_wait_at_once():
    pokes = ScriptedPokes([False])
    TrimWhenQuiet(quiet=0.05, poked=pokes).wait_for_quiet()
    assert pokes.waits == [None, 0.05]


def test_pokes_in_a_burst_give_back_once_after_it():
    given = threading.Event()
    count = []
    trims = TrimWhenQuiet(quiet=0.2, give=lambda: (count.append(1), given.set()))
    trims.as_they_end(finished(3))  # three pokes, well within the quiet time
    assert given.wait(10)
    assert count == [1]


def test_each_thread_that_ends_is_followed_by_a_poke():
    pokes = []
    trims = TrimWhenQuiet(give=lambda: None)
    trims.poke = lambda: pokes.append(1)
    trims.as_they_end(finished(3))
    assert pokes == [1, 1, 1]


def test_a_thread_still_running_is_waited_for():
    release, pokes = threading.Event(), []
    trims = TrimWhenQuiet(give=lambda: None)
    trims.poke = lambda: pokes.append(release.is_set())
    running = threading.Thread(target=release.wait, args=(30,))
    running.start()
    job = threading.Thread(target=trims.as_they_end, args=([running],))
    job.start()
    job.join(0.3)
    assert job.is_alive() and pokes == []
    release.set()
    job.join(30)
    assert pokes == [True]
