"""memory.QuietTrims: the heap's free pages go back once pushes pause, once per thread of
the work after the answer, only by the last push's job."""
import threading

from astara_router.memory import QuietTrims


def finished(count):
    threads = [threading.Thread(target=lambda: None) for _ in range(count)]
    for thread in threads:
        thread.start()
    return threads


def test_each_thread_that_ends_is_followed_by_a_give_back():
    events = []
    trims = QuietTrims(quiet=0, give=lambda: events.append("give"))
    trims.push_began()
    trims.queue()(finished(3))
    assert events == ["give"] * 3


def test_a_push_that_begins_while_waiting_puts_the_give_back_off():
    events, pushes = [], iter(range(3))

    def sleep(seconds):  # a push begins during each of the first three waits
        assert seconds == trims.quiet
        if next(pushes, None) is not None:
            trims.push_began()
        events.append("waited")
    trims = QuietTrims(give=lambda: events.append(("give", trims.began)), sleep=sleep)
    trims.push_began()
    trims.queue()(finished(1))
    assert events == ["waited"] * 4 + [("give", 4)]


def test_a_later_push_s_job_takes_over():
    gives = []
    trims = QuietTrims(quiet=0, give=lambda: gives.append(1))
    first = trims.queue()
    second = trims.queue()
    first(finished(2))
    assert gives == []
    second(finished(2))
    assert gives == [1, 1]


def test_a_thread_still_running_is_waited_for():
    release, gives = threading.Event(), []
    trims = QuietTrims(quiet=0, give=lambda: gives.append(release.is_set()))
    running = threading.Thread(target=release.wait, args=(30,))
    running.start()
    job = threading.Thread(target=trims.queue(), args=([running],))
    job.start()
    job.join(0.3)
    assert job.is_alive() and gives == []
    release.set()
    job.join(30)
    assert gives == [True]
