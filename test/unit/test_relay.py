"""relay.py: the worker answers reads from the committed bytes and relays the rest to the
master's app, over real socket pairs (both ends in this process, each in its threads)."""
import json
import queue
import socket
import threading
import time

import pytest

from astara_router.relay import LOCAL_ADDRESS, MAX_BODY, Front, Relay, WorkerPairs


class Generation:
    """What the relay reads of a committed generation (engine.Committed's names); its view
    in pieces, as engine.Committed gives it (a push's embeds the pushed bytes as such)."""

    def __init__(self, number, view, rules):
        self.generation, self.hash = number, f"h{number}"
        self._view = view if isinstance(view, list) else [view[:5], view[5:]]
        self._rules = rules

    def view_pieces(self):
        return self._view

    @property
    def firewall_text(self):
        return self._rules


class Engine:
    """The engine's side the relay uses: the committed generation and its observer."""

    def __init__(self):
        self.committed = Generation(1, b'{"configuration": {}, "generation": 1}', b"table 1")
        self.observer = None

    def observe_commits(self, on_commit):
        self.observer = on_commit

    def commit(self, generation):
        self.committed = generation
        self.observer(generation)


class App:
    """The master's WSGI app: records each environ; a PUT commits a new generation first,
    as the engine does before its answer."""

    def __init__(self, engine):
        self.engine, self.seen, self.closed = engine, [], threading.Event()

    def __call__(self, environ, start_response):
        body = environ["wsgi.input"].read()
        self.seen.append((environ, body))
        if environ["REQUEST_METHOD"] in ("PUT", "PATCH"):
            number = self.engine.committed.generation + 1
            self.engine.commit(Generation(number, [b'{"configuration": ', body, b"}"],
                                          b"table %d" % number))
        if environ["REQUEST_METHOD"] == "PATCH":
            raise RuntimeError("the app failed after its commit")
        start_response("201 Created", [("Content-Type", "text/plain"), ("X-Seen", "yes")])
        app = self

        class Answer(list):
            def close(self):
                app.closed.set()
        return Answer([b"made ", body])


@pytest.fixture
def pair():
    engine = Engine()
    app = App(engine)
    relay = Relay()
    front = worker(relay)
    relay.attach(app, engine)
    assert front.wait_ready(5)
    yield engine, app, relay, front
    front.pairs.close(front.pairs.theirs)


def worker(relay, channels=4):
    """A worker's front on pairs the relay serves, as the master forks them."""
    pairs = WorkerPairs(channels)
    relay.add_worker(pairs.mine)
    control, ends = pairs.theirs
    front = Front(control, ends, token="secret", lost=lambda: None)
    front.pairs = pairs
    return front


def call(front, method, path, body=b"", **headers):
    environ = {"REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": "a=1",
               "REMOTE_ADDR": "198.51.100.7", "CONTENT_LENGTH": str(len(body)),
               "wsgi.input": _Input(body), "HTTP_AUTHORIZATION": "Bearer secret"}
    environ.update({f"HTTP_{name.upper()}": value for name, value in headers.items()})
    started = []
    result = front(environ, lambda status, headers: started.extend([status, headers]))
    return started[0], dict(started[1]), b"".join(result)


class _Input:
    def __init__(self, data):
        self.data = data

    def read(self, size=-1):
        data, self.data = (self.data, b"") if size < 0 else (self.data[:size],
                                                             self.data[size:])
        return data


def test_reads_are_answered_from_the_committed_bytes_without_the_master(pair):
    engine, app, _, front = pair
    status, headers, body = call(front, "GET", "/v1/system/config")
    assert (status, body) == ("200 OK", b'{"configuration": {}, "generation": 1}')
    assert headers["ETag"] == '"h1"' and headers["X-Request-Id"]
    status, _, body = call(front, "GET", "/v1/firewall/rules")
    assert (status, body) == ("200 OK", b"table 1")
    assert call(front, "GET", "/v1/system/config", if_none_match='"h1"')[0] == "304 Not Modified"
    assert app.seen == []


def test_everything_else_is_relayed_with_where_it_came_from(pair):
    _, app, _, front = pair
    status, headers, body = call(front, "POST", "/v1/system/config/confirm", b"{}")
    assert (status, headers["X-Seen"], body) == ("201 Created", "yes", b"made {}")
    environ, received = app.seen[0]
    assert received == b"{}"
    assert (environ["REQUEST_METHOD"], environ["PATH_INFO"], environ["QUERY_STRING"],
            environ["REMOTE_ADDR"]) == ("POST", "/v1/system/config/confirm", "a=1",
                                        "198.51.100.7")
    assert LOCAL_ADDRESS in environ and environ["HTTP_AUTHORIZATION"] == "Bearer secret"
    assert app.closed.wait(5)  # what waits for the answer (announcements) ran after it
    # a read the bytes cannot answer (no token) is the app's to refuse
    call(front, "GET", "/v1/system/config", authorization="Bearer wrong")
    assert app.seen[-1][0]["HTTP_AUTHORIZATION"] == "Bearer wrong"


def test_a_read_after_a_push_sees_what_the_push_committed(pair):
    _, _, _, front = pair
    for number in range(2, 12):
        assert call(front, "PUT", "/v1/system/config", b"[%d]" % number)[0] == "201 Created"
        status, headers, body = call(front, "GET", "/v1/system/config")
        assert body == b'{"configuration": [%d]}' % number and headers["ETag"] == f'"h{number}"'
        assert call(front, "GET", "/v1/firewall/rules")[2] == b"table %d" % number


def test_a_body_over_the_limit_is_not_read_but_its_length_relayed(pair):
    _, app, _, front = pair
    environ = {"REQUEST_METHOD": "PUT", "PATH_INFO": "/v1/system/config",
               "CONTENT_LENGTH": str(MAX_BODY + 1), "wsgi.input": None}
    front(environ, lambda status, headers: None)  # the input is never read
    assert app.seen[0][0]["CONTENT_LENGTH"] == str(MAX_BODY + 1) and app.seen[0][1] == b""


def test_a_worker_forked_later_is_sent_the_bytes_at_once(pair):
    engine, _, relay, _ = pair
    engine.commit(Generation(7, b'{"configuration": 7}', b"table 7"))
    late = worker(relay)
    assert late.wait_ready(5)
    assert call(late, "GET", "/v1/system/config")[2] == b'{"configuration": 7}'
    assert call(late, "GET", "/v1/firewall/rules")[2] == b"table 7"


def test_an_identical_commit_sends_nothing_again(pair):
    engine, _, relay, _ = pair
    serial = relay.serial
    engine.commit(engine.committed)
    assert relay.serial == serial


def test_a_relay_that_breaks_answers_503(pair):
    engine, app, relay, front = pair
    channel, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    theirs.close()  # the master's end of the channel is gone
    front._channels = queue.SimpleQueue()
    front._channels.put(channel)
    status, _, body = call(front, "DELETE", "/v1/anything")
    assert status.startswith("503") and json.loads(body)["error"]["status"] == 503


def test_a_worker_whose_master_end_closes_gives_up():
    lost = threading.Event()
    master_end, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    Front(worker_end, [], token="", lost=lost.set)
    assert not lost.wait(0.2)
    master_end.close()
    assert lost.wait(5)


def test_another_worker_gets_the_bytes_a_push_through_the_first_one_committed(pair):
    _, _, relay, front = pair
    other = worker(relay)  # as during a reload: two workers for a while
    assert other.wait_ready(5)
    assert call(front, "PUT", "/v1/system/config", b"[42]")[0] == "201 Created"
    deadline = time.monotonic() + 5
    while other.reads.serial < front.reads.serial and time.monotonic() < deadline:
        time.sleep(0.01)
    assert call(other, "GET", "/v1/system/config")[2] == b'{"configuration": [42]}'
    assert call(other, "GET", "/v1/firewall/rules")[2] == b"table 2"


def test_the_pairs_take_a_push_in_one_call():
    pairs = WorkerPairs(2)
    for sock in (pairs.mine[0], *pairs.mine[1], pairs.theirs[0], *pairs.theirs[1]):
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) >= 4 << 20
    pairs.close(pairs.mine)
    pairs.close(pairs.theirs)


def test_a_worker_that_has_gone_is_dropped(pair):
    _, _, relay, front = pair
    gone = worker(relay)
    assert len(relay._controls) == 2
    gone.pairs.theirs[0].shutdown(socket.SHUT_RDWR)  # as when the worker exits (its
    gone.pairs.close(gone.pairs.theirs)  # receiving thread keeps a bare close from it)
    deadline = time.monotonic() + 5
    while len(relay._controls) > 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert relay._controls == [front.pairs.mine[0]]
    assert call(front, "GET", "/v1/system/config")[0] == "200 OK"


def test_an_app_that_fails_after_a_commit_answers_500_and_the_worker_has_its_bytes(pair):
    _, _, _, front = pair
    status, _, body = call(front, "PATCH", "/v1/system/config", b"[7]")
    assert status.startswith("500") and json.loads(body)["error"]["status"] == 500
    assert call(front, "GET", "/v1/system/config")[2] == b'{"configuration": [7]}'
    assert call(front, "GET", "/v1/firewall/rules")[2] == b"table 2"
    assert call(front, "PUT", "/v1/system/config", b"[8]")[0] == "201 Created"  # the
    # channel serves on
