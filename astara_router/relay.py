"""Reads in the gunicorn worker, applies in the gunicorn master.

The worker (``Front``) answers GET /v1/system/config and GET /v1/firewall/rules from the
bytes of the committed generation and relays every other request to the master, where the
engine and the Flask app run (``Relay``). A read then never waits for the interpreter lock
an apply holds: make bench's GET p99 during applies went from 1.5-2.4x the bare app's to
1.0-1.2x (README, "Decisions").

Between the two, socket pairs made by the master before it forks the worker
(``WorkerPairs``): one (``control``) on which the master sends the readers' bytes after each
commit, and one per worker thread (``channels``), on which a request at a time is relayed
and answered. No address or path: nothing else can reach the master.

This module is imported by the worker: the standard library and ``logs`` only.
"""
import hmac
import io
import itertools
import json
import logging
import os
import queue
import socket
import struct
import sys
import threading

from .logs import REQUEST_ID_HEADER, new_request_id, valid_request_id

LOG = logging.getLogger(__name__)

CONFIG_PATH = "/v1/system/config"
RULES_PATH = "/v1/firewall/rules"
MAX_BODY = 16 * 1024 * 1024
LOCAL_ADDRESS = "astara.local_address"  # environ key: the address a relayed request came on
TOKEN = "astara.relay_token"  # environ key: names a relayed request's body (send_pieces)
_FRAME = struct.Struct("!II")  # lengths of the JSON head and of the body that follow
_READY_WAIT = 30.0  # a relayed answer waits at most this long for its generation's bytes


# -- frames ------------------------------------------------------------------------------

def send_frame(sock, head, *body):
    """``head`` (a JSON value) and ``body`` (bytes-like pieces), as one frame."""
    encoded = json.dumps(head).encode()
    sock.sendall(_FRAME.pack(len(encoded), sum(map(len, body))) + encoded)
    for piece in body:
        sock.sendall(piece)


def recv_exactly(sock, size):
    data = sock.recv(size, socket.MSG_WAITALL) if size else b""
    while len(data) < size:  # interrupted by a signal: the rest
        more = sock.recv(size - len(data), socket.MSG_WAITALL)
        if not more:
            raise EOFError("the other end closed")
        data += more
    return data


def recv_head(sock):
    """(head, length of the body that follows) of the next frame; EOFError when the other
    end has closed."""
    header = sock.recv(_FRAME.size, socket.MSG_WAITALL)
    if len(header) < _FRAME.size:
        header += recv_exactly(sock, _FRAME.size - len(header)) if header else b""
        if len(header) < _FRAME.size:
            raise EOFError("the other end closed")
    head_size, body_size = _FRAME.unpack(header)
    return json.loads(recv_exactly(sock, head_size)), body_size


def recv_frame(sock):
    """(head, body bytes) of the next frame; EOFError when the other end has closed."""
    head, size = recv_head(sock)
    return head, recv_exactly(sock, size)


def send_pieces(sock, head, pieces, known=None):
    """A frame of ``pieces`` (bytes-like), where a piece that *is* ``known`` (the body of
    the request being answered, which the worker holds: a push's view and answer embed
    the pushed bytes as they came) is not sent but named (``recv_pieces``)."""
    sizes = [-1 if piece is known else len(piece) for piece in pieces]
    send_frame(sock, {**head, "sizes": sizes}, *(piece for piece in pieces
                                                 if piece is not known))


def recv_pieces(sock, head, known):
    """The pieces of a ``send_pieces`` frame, ``known`` where it was named; None if a
    piece was named and ``known`` is None."""
    pieces = [known if size < 0 else recv_exactly(sock, size) for size in head["sizes"]]
    return None if any(piece is None for piece in pieces) else pieces


# -- what a read is answered with ---------------------------------------------------------

def bearer_check(token):
    """``authorized(Authorization header or "")``: True when no token is configured or the
    header carries it (compared in constant time)."""
    if not token:
        return lambda supplied: True
    expected = f"Bearer {token}".encode()
    return lambda supplied: hmac.compare_digest(supplied.encode(), expected)


def config_answer(committed, if_none_match):
    """GET /v1/system/config: (status, headers, body) from the generation's bytes."""
    etag = f'"{committed.hash or "none"}"'
    if if_none_match == etag:
        return 304, [("ETag", etag)], b""
    body = committed.view_json
    return 200, [("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                 ("ETag", etag)], body


def rules_answer(committed, if_none_match=None):
    """GET /v1/firewall/rules: (status, headers, body), the generation's ruleset as text."""
    body = committed.firewall_text
    return 200, [("Content-Type", "text/plain; charset=utf-8"),
                 ("Content-Length", str(len(body)))], body


BYTES_ANSWERS = {CONFIG_PATH: config_answer, RULES_PATH: rules_answer}
STATUSES = {200: "200 OK", 304: "304 Not Modified"}


def bytes_answer(environ, start_response, committed, authorized):
    """The answer of a plain GET of a path in ``BYTES_ANSWERS`` (authorized, no request id
    or a valid one) from ``committed`` (its ``hash``, ``view_json``, ``firewall_text``),
    or None: the request is not one of those, or ``committed`` lacks what it needs."""
    answer = BYTES_ANSWERS.get(environ.get("PATH_INFO"))
    if (answer is None or environ.get("REQUEST_METHOD") != "GET"
            or not authorized(environ.get("HTTP_AUTHORIZATION", ""))):
        return None
    supplied = environ.get("HTTP_X_REQUEST_ID")
    if supplied is not None and not valid_request_id(supplied):
        return None  # the full app's 400 names the header
    if committed is None or (answer is rules_answer and committed.firewall_text is None):
        return None  # not here (yet): the master answers
    status, headers, body = answer(committed, environ.get("HTTP_IF_NONE_MATCH"))
    headers.append((REQUEST_ID_HEADER, supplied or new_request_id()))
    start_response(STATUSES[status], headers)
    return [body]


# -- the worker ---------------------------------------------------------------------------

class Reads:
    """The bytes of one generation as the worker holds them (``config_answer`` and
    ``rules_answer`` read these names); ``firewall_text`` None until it has come."""
    __slots__ = ("serial", "hash", "view_json", "firewall_text")

    def __init__(self, serial, digest, view_json, firewall_text=None):
        self.serial, self.hash = serial, digest
        self.view_json, self.firewall_text = view_json, firewall_text


class Front:
    """The worker's WSGI app: reads from bytes, everything else relayed to the master."""

    def __init__(self, control, channels, token, trims=None, lost=None):
        self.control = control
        self._channels = queue.SimpleQueue()  # free channels: one per thread serving
        for channel in channels:
            self._channels.put(channel)
        self.authorized = bearer_check(token)
        self.trims = trims  # memory.TrimWhenQuiet, or None
        self.lost = lost or _exit_worker  # called once the master's end has closed
        self.reads = None
        self._changed = threading.Condition()
        self._bodies = {}  # token -> body of a request being relayed (send_pieces)
        self._tokens = itertools.count()
        threading.Thread(target=self._receive, name="relay-reads", daemon=True).start()

    def wait_ready(self, timeout=None):
        """Wait for the first generation's bytes: the master has booted the engine."""
        with self._changed:
            return self._changed.wait_for(lambda: self.reads is not None, timeout)

    def _receive(self):
        try:
            while True:
                head, _ = recv_head(self.control)
                pieces = recv_pieces(self.control, head, self._bodies.get(head.get("token")))
                data = b"".join(pieces) if pieces is not None else None
                with self._changed:
                    if data is None:
                        LOG.error("generation bytes naming an unknown request: not served")
                    elif "view" in head:
                        self.reads = Reads(head["serial"], head["hash"], data, None)
                    elif self.reads is not None and self.reads.serial == head["serial"]:
                        self.reads.firewall_text = data
                    self._changed.notify_all()
                del pieces, data
                self._poke()
        except (EOFError, OSError) as exc:
            LOG.error("the master's end of the relay closed (%s)", exc)
            self.lost()

    def __call__(self, environ, start_response):
        reads = self.reads
        if (reads is not None and reads.firewall_text is None
                and environ.get("PATH_INFO") == RULES_PATH):
            with self._changed:  # the generation's text follows its push's answer
                self._changed.wait_for(lambda: self.reads is not reads
                                       or reads.firewall_text is not None, _READY_WAIT)
            reads = self.reads
        answered = bytes_answer(environ, start_response, reads, self.authorized)
        if answered is not None:
            return answered
        return self._relay(environ, start_response)

    def _relay(self, environ, start_response):
        head = {key: value for key, value in environ.items() if isinstance(value, str)}
        head[LOCAL_ADDRESS] = _local_address(environ)
        body = _request_body(environ, head)
        token = head[TOKEN] = str(next(self._tokens))
        self._bodies[token] = body
        channel = None
        try:
            channel = self._channels.get(timeout=_READY_WAIT)  # as many as threads
            send_frame(channel, head, body)
            answer, _ = recv_head(channel)
            content = recv_pieces(channel, answer, body)
            serial = answer.get("serial", 0)
            with self._changed:  # a GET after this answer reads what it committed
                self._changed.wait_for(lambda: self.reads is not None
                                       and self.reads.serial >= serial, _READY_WAIT)
        except (EOFError, OSError, queue.Empty) as exc:
            channel = None  # broken: not used again (the master has gone)
            LOG.error("relaying %s %s to the master failed: %s", environ.get("REQUEST_METHOD"),
                      environ.get("PATH_INFO"), exc)
            start_response("503 Service Unavailable", [("Content-Type", "application/json")])
            return [b'{"error": {"status": 503, "message": "the appliance is restarting"}}']
        finally:
            del self._bodies[token]
            if channel is not None:
                self._channels.put(channel)
        start_response(answer["status"], [tuple(h) for h in answer["headers"]])
        self._poke()
        return content

    def _poke(self):
        if self.trims is not None:
            self.trims.poke()


def _exit_worker():
    """The worker without its master (gone, or it dropped this worker): nothing to serve;
    gunicorn respawns a worker if the master lives."""
    os._exit(1)


def _local_address(environ):
    sock = environ.get("gunicorn.socket")
    try:
        return sock.getsockname()[0] if sock is not None else None
    except (OSError, IndexError, TypeError):
        return None


def _request_body(environ, head):
    """The body to relay: none when its Content-Length is over ``MAX_BODY`` (the app
    refuses it by that length, 413, without reading it), else up to ``MAX_BODY`` + 1 bytes
    (a chunked body over the limit arrives over it and is refused so)."""
    try:
        length = int(environ.get("CONTENT_LENGTH") or -1)
    except ValueError:
        length = -1
    if length > MAX_BODY:
        return b""
    stream = environ["wsgi.input"]
    return stream.read(length) if length >= 0 else stream.read(MAX_BODY + 1)


# -- the master ---------------------------------------------------------------------------

class WorkerPairs:
    """The socket pairs between the master and one worker, made before the fork: ``mine``
    (the master's ends: control, channels) and ``theirs`` (the worker's). Each end sends
    a push in one call (``_room_for_a_push``)."""

    def __init__(self, channels):
        control = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        pairs = [socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
                 for _ in range(channels)]
        for pair in (control, *pairs):
            _room_for_a_push(*pair)
        self.mine = (control[0], [pair[0] for pair in pairs])
        self.theirs = (control[1], [pair[1] for pair in pairs])

    def close(self, ends):
        control, channels = ends
        for sock in (control, *channels):
            sock.close()


def _room_for_a_push(*sockets):
    """Send buffers of 4 MiB (a push's body and its answer go across in one call, where
    the default 212 992 bytes made both ends wake and wait in turn: 0.8 -> 0.1 ms to relay
    a 1 000-floating-IP push). The master forces them (it holds CAP_NET_ADMIN; the kernel
    caps an unforced size at net.core.wmem_max)."""
    for sock in sockets:
        for option in (SO_SNDBUFFORCE, socket.SO_SNDBUF):
            try:
                sock.setsockopt(socket.SOL_SOCKET, option, 4 << 20)
                break
            except OSError:
                continue


SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)


class Relay:
    """The master's side: runs the requests the workers relay through ``app`` and sends
    each worker the readers' bytes of every generation the ``engine`` commits."""

    def __init__(self):
        self.app = None
        self.serial = 0
        self._published = None  # (generation, hash) last sent
        self._last = None  # the generation last sent
        self._rules_sent = False  # its ruleset's text too
        self._answering = threading.local()  # in a relayed request (_answer): .control
        # (that worker's), .body, .token (the worker's name for that body)
        self._controls = []  # the master's ends, one per worker
        self._ends = []  # every end the master holds (controls and channels)
        self._lock = threading.Lock()  # publishing, and the list of controls

    def close_in_child(self):
        """In a worker just forked: the master's ends of the other workers' pairs are not
        its to hold. Without the lock, which another thread of the master may have held
        at the fork."""
        for sock in list(self._ends):
            try:
                sock.close()
            except OSError:
                pass

    def add_worker(self, ends):
        """A worker was forked with the other ends of ``ends`` (``WorkerPairs.mine``).
        Sends on its control time out (a worker that stopped reading is dropped, and
        exits when it sees its relay closed) so that no commit waits for a worker long."""
        control, channels = ends
        control.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", 10, 0))
        with self._lock:
            self._controls.append(control)
            self._ends.extend((control, *channels))
        threading.Thread(target=self._watch_control, args=(control,), daemon=True,
                         name="relay-control").start()
        for channel in channels:
            threading.Thread(target=self._serve_channel, args=(channel, control),
                             daemon=True, name="relay-channel").start()
        threading.Thread(target=self._welcome, args=(control,), daemon=True,
                         name="relay-welcome").start()

    def attach(self, app, engine):
        """The engine has booted: serve the workers with ``app`` from now on."""
        self.app = app
        engine.observe_commits(self.committed)
        self.committed(engine.committed)

    def committed(self, committed):
        """A generation was committed: its config view goes to every worker before the
        answer to the push that made it (``Front._relay`` waits for it), its ruleset's
        text right after that answer (0.4-1 ms to render at 1 000 floating IPs; a GET
        rules meanwhile waits for it in the worker), or at once when no relayed request
        committed it (the boot, a revert, a repair)."""
        with self._lock:
            key = (committed.generation, committed.hash)
            if key == self._published:
                return
            self._published, self._last = key, committed
            self.serial += 1
            self._rules_sent = False
            relaying = getattr(self._answering, "control", None)
            for control in list(self._controls):  # the relaying worker holds the body
                self._send_view(control, committed, self._answering
                                if control is relaying else None)
        if relaying is None:
            self.send_rules()

    def send_rules(self):
        """The last generation's ruleset text, to every worker, once. Rendered for them
        and not kept (its cache on ``committed``): the workers serve it (0.34 MB at 5 000
        floating IPs)."""
        with self._lock:
            committed = self._last
            if committed is None or self._rules_sent:
                return
            self._rules_sent = True
            self._send_all(*self._rules(committed))

    def _rules(self, committed):
        text = committed.firewall_text
        vars(committed).pop("firewall_text", None)
        return {"serial": self.serial, "rules": True}, [text]

    def _send_view(self, control, committed, answering=None):
        """The generation's view; ``answering``: the relayed request that committed it,
        whose body the view embeds and the worker holds (``send_pieces``)."""
        self._send(control, {"serial": self.serial, "hash": committed.hash, "view": True,
                             "token": answering.token if answering else None},
                   committed.view_pieces(), answering.body if answering else None)

    def _welcome(self, control):
        """A new worker: the bytes it serves (none before the boot: ``attach`` sends them
        to every worker)."""
        with self._lock:
            committed = self._last
            if committed is not None:
                self._send_view(control, committed)
                if self._rules_sent:
                    self._send(control, *self._rules(committed))

    def _send_all(self, head, pieces):
        for control in list(self._controls):
            self._send(control, head, pieces)

    def _send(self, control, head, pieces, known=None):
        try:
            send_pieces(control, head, pieces, known)
        except OSError as exc:
            LOG.info("a worker's relay closed (%s)", exc)
            self._drop(control)

    def _drop(self, control):
        if control in self._controls:
            self._controls.remove(control)
        self._forget(control)

    def _forget(self, sock):
        if sock in self._ends:
            self._ends.remove(sock)
        try:
            sock.close()
        except OSError:
            pass

    # -- requests
    def _watch_control(self, control):
        """The worker never sends on its control: this returns when it has gone."""
        try:
            while control.recv(1):
                pass
        except OSError:
            pass
        with self._lock:
            self._drop(control)

    def _serve_channel(self, channel, control):
        """One of a worker's channels: a request at a time, until the worker has gone."""
        try:
            self._serve_requests(channel, control)
        finally:
            with self._lock:
                self._forget(channel)

    def _serve_requests(self, channel, control):
        while True:
            try:
                head, body = recv_frame(channel)
            except (EOFError, OSError):
                return
            try:
                self._answer(channel, head, body, control)
            except Exception:  # the app's own errors are its 500s: this is the relay's
                LOG.exception("relaying %s %s failed", head.get("REQUEST_METHOD"),
                              head.get("PATH_INFO"))
                return  # the worker answers 503; this channel is not used again
            del head, body  # not held while waiting for the next (a push's body: the
            # engine keeps the part of it it needs)

    def _answer(self, channel, head, body, control):
        environ = dict(head)
        environ.update({"wsgi.version": (1, 0), "wsgi.input": io.BytesIO(body),
                        "wsgi.errors": sys.stderr, "wsgi.multithread": True,
                        "wsgi.multiprocess": False, "wsgi.run_once": False,
                        "wsgi.input_terminated": True})
        started = []

        def start_response(status, headers, exc_info=None):
            started[:] = [status, headers]
        answering = self._answering
        answering.control, answering.body, answering.token = control, body, head.get(TOKEN)
        result = None
        try:
            try:
                result = self.app(environ, start_response)
            except Exception:  # Flask answers its routes' errors: this escaped it
                LOG.exception("%s %s failed", head.get("REQUEST_METHOD"), head.get("PATH_INFO"))
                start_response("500 Internal Server Error",
                               [("Content-Type", "application/json")])
                result = [b'{"error": {"status": 500, "message": "the appliance failed to '
                          b'answer; see its log"}}']
            finally:
                answering.control = answering.body = None
            content = [piece for piece in result if piece]  # sent as they are, not joined
            answer = {"status": started[0], "headers": started[1], "serial": self.serial}
            try:
                send_pieces(channel, answer, content, body)
            except OSError as exc:
                LOG.warning("the answer to %s %s could not be relayed: %s",
                            head.get("REQUEST_METHOD"), head.get("PATH_INFO"), exc)
        finally:
            self.send_rules()  # of what this request committed, if it did
            close = getattr(result, "close", None)
            if close is not None:
                close()  # what waits for the answer to be sent (announcements) starts
