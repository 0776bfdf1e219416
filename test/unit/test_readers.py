"""Writers give way to reads in flight (readers.py), with real threads, a real epoll poller
and real sockets; bounded, and never waiting on themselves."""
import selectors
import socket
import threading

import pytest

from astara_router import readers as readers_module
from astara_router.readers import ReadersFirst, in_turns

PATIENT = 30.0  # a wait that must not end by itself within the test


class Writer(threading.Thread):
    """Calls ``let_readers_first()`` once; ``done`` is set when it returned."""

    def __init__(self, readers):
        super().__init__(daemon=True)
        self.readers, self.done = readers, threading.Event()

    def run(self):
        self.readers.let_readers_first()
        self.done.set()


class Server(threading.Thread):
    """Serves one counted read: ``serving()``, then ``depart()`` when ``finish`` is set."""

    def __init__(self, readers, write=False):
        super().__init__(daemon=True)
        self.readers, self.write = readers, write
        self.started, self.finish, self.wrote = threading.Event(), threading.Event(), None

    def run(self):
        self.readers.serving()
        if self.write:  # a PUT: its method is read, then it applies
            self.readers.depart()
            writer = Writer(self.readers)
            writer.run()  # in this very thread
            self.wrote = writer.done.is_set()
        self.started.set()
        self.finish.wait(PATIENT)
        self.readers.depart()


def serve_one(readers, write=False):
    readers.arrive()  # the poller's thread hands the connection over
    server = Server(readers, write)
    server.start()
    assert server.started.wait(5)
    return server


def test_without_reads_a_writer_goes_on():
    readers = ReadersFirst(longest_wait=PATIENT)
    writer = Writer(readers)
    writer.start()
    assert writer.done.wait(5)


def test_a_writer_waits_for_the_read_in_flight_to_be_answered():
    readers = ReadersFirst(longest_wait=PATIENT)
    server = serve_one(readers)
    writer = Writer(readers)
    writer.start()
    assert not writer.done.wait(0.3)
    assert readers.in_flight == 1
    server.finish.set()
    assert writer.done.wait(5)
    assert readers.in_flight == 0


def test_a_request_that_writes_stops_counting_and_never_waits_for_itself():
    readers = ReadersFirst(longest_wait=PATIENT)
    server = serve_one(readers, write=True)
    assert server.wrote is True
    assert readers.in_flight == 0
    writer = Writer(readers)  # another writer: no read holds it back
    writer.start()
    assert writer.done.wait(5)
    server.finish.set()
    server.join(5)
    assert readers.in_flight == 0  # depart after not being a read counts nothing twice


def test_a_thread_serving_a_read_never_waits_on_reads():
    readers = ReadersFirst(longest_wait=PATIENT)
    other = serve_one(readers)
    stepped = threading.Event()

    def serve_and_step():  # a read whose handler calls a writer's step
        readers.serving()
        readers.let_readers_first()
        stepped.set()
        readers.depart()

    readers.arrive()
    threading.Thread(target=serve_and_step, daemon=True).start()
    try:
        assert stepped.wait(5)  # not after PATIENT: it waited for neither read
    finally:
        other.finish.set()


def test_a_read_outlasting_the_longest_wait_holds_writers_back_once():
    readers = ReadersFirst(longest_wait=0.05)
    stuck = serve_one(readers)
    first = Writer(readers)
    first.start()
    assert first.done.wait(5)  # gave up after longest_wait
    # The same read in flight: the next steps do not wait for it again.
    readers.longest_wait = PATIENT
    second = Writer(readers)
    second.start()
    assert second.done.wait(5)
    stuck.finish.set()
    stuck.join(5)
    # Every read ended once: a new read holds writers back again.
    fresh = serve_one(readers)
    third = Writer(readers)
    third.start()
    assert not third.done.wait(0.3)
    fresh.finish.set()
    assert third.done.wait(5)


@pytest.fixture
def poller():
    selector = selectors.EpollSelector()
    pairs = [socket.socketpair() for _ in range(2)]
    try:
        yield selector, pairs
    finally:
        selector.close()
        for a, b in pairs:
            a.close()
            b.close()


def test_a_connection_readable_on_the_poller_is_a_read_on_its_way(poller):
    selector, [(client, served), (wake, wakeup)] = poller
    selector.register(served, selectors.EVENT_READ)
    readers = ReadersFirst(longest_wait=PATIENT, arrival_wait=PATIENT)
    readers.watch(selector)
    client.send(b"GET / HTTP/1.1\r\n\r\n")  # readable; no thread has it yet
    writer = Writer(readers)
    writer.start()
    assert not writer.done.wait(0.3)  # waits for it to arrive
    selector.unregister(served)  # what the worker's poller thread does, then hands it over
    server = serve_one(readers)
    assert not writer.done.wait(0.3)  # and to be answered
    server.finish.set()
    assert writer.done.wait(5)


def test_the_workers_own_wakeup_pipe_is_no_read(poller):
    selector, [(client, served), (wake, wakeup)] = poller
    selector.register(wakeup, selectors.EVENT_READ)
    readers = ReadersFirst(longest_wait=PATIENT, arrival_wait=PATIENT)
    readers.watch(selector, ignored=(wakeup.fileno(),))
    wake.send(b"x")
    writer = Writer(readers)
    writer.start()
    assert writer.done.wait(5)


def test_a_closed_poller_holds_no_writer_back(poller):
    selector, [(client, served), _] = poller
    selector.register(served, selectors.EVENT_READ)
    readers = ReadersFirst(longest_wait=PATIENT, arrival_wait=PATIENT)
    readers.watch(selector)
    selector.close()  # the worker stops
    writer = Writer(readers)
    writer.start()
    assert writer.done.wait(5)


def test_in_turns_gives_every_item_and_a_step_after_each_sixteen(monkeypatch):
    steps = []
    monkeypatch.setattr(readers_module, "let_readers_first", lambda: steps.append(len(seen)))
    seen = []
    for item in in_turns(range(40)):
        seen.append(item)
    assert seen == list(range(40))
    assert steps == [16, 32]  # after the 16th and the 32nd item, none after a partial turn
