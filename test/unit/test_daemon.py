"""Daemon.stop returns once the process is gone, not once its pid file is: dnsmasq removes
its pid file on SIGTERM before it closes its sockets, and a dnsmasq started in that window
failed with "Address already in use" (found by the load test: one push in a few hundred
alternating between two payloads answered 500). The same for charon (apply/vpn.py)."""
import os
import signal
import socket
import subprocess
import sys
import textwrap

import pytest

from astara_lab.peers import eventually
from astara_lab.services import free_port
from astara_netns import pid_alive as alive
from astara_router.apply.daemon import Daemon
from astara_router.apply.vpn import Charon

# A self-daemonising program that, like dnsmasq, removes its pid file first on SIGTERM
# and only then, a while later, exits and so releases its listening socket.
LINGERING = textwrap.dedent("""
    import os, signal, socket, sys, time
    pidfile, port = sys.argv[1], int(sys.argv[2])
    if os.fork():
        sys.exit(0)
    os.setsid()
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):  # the starter waits for its output pipes to close
        os.dup2(devnull, fd)
    listener = socket.socket()
    listener.bind(("127.0.0.1", port))
    listener.listen()
    def term(*_):
        os.unlink(pidfile)
        time.sleep(0.5)
        sys.exit(0)
    signal.signal(signal.SIGTERM, term)
    with open(pidfile + ".tmp", "w") as handle:
        handle.write(str(os.getpid()))
    os.rename(pidfile + ".tmp", pidfile)
    while True:
        time.sleep(1)
""")


@pytest.fixture
def lingering(tmp_path):
    program = tmp_path / "lingering_daemon.py"
    program.write_text(LINGERING)
    port = free_port()
    daemon = Daemon("lingering", str(tmp_path / "lingering.pid"),
                    [sys.executable, str(program), str(tmp_path / "lingering.pid"), str(port)],
                    program=program.name)
    daemon.start()
    pid = daemon.pid()
    try:
        yield daemon, pid, port
    finally:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_stop_waits_for_the_process_not_its_pid_file(lingering):
    daemon, pid, port = lingering
    assert pid is not None and alive(pid)
    assert daemon.stop() is True
    assert not alive(pid)
    with socket.socket() as successor:  # what the next dnsmasq does at once
        successor.bind(("127.0.0.1", port))


def test_stop_of_a_daemon_that_is_not_running_is_a_no_op(tmp_path):
    daemon = Daemon("absent", str(tmp_path / "absent.pid"), ["true"])
    assert daemon.stop() is False
    assert daemon.pid() is None


def test_an_adopted_charon_is_stopped_once_it_has_exited(tmp_path):
    """A charon this process did not start (the agent restarted since: no Popen to wait
    on) is waited for until it has exited, not until its pid file is gone, so its
    successor finds UDP 500/4500 and the vici socket free."""
    charon = Charon(str(tmp_path))
    os.makedirs(charon.run_dir)
    program = tmp_path / "charon"  # Daemon.pid checks the program's name
    program.write_text(LINGERING)
    port = free_port()
    subprocess.run([sys.executable, str(program), charon.pidfile, str(port)], check=True,
                   env={**os.environ, "STRONGSWAN_CONF": charon.conf})
    pid = eventually(charon.pid, 10, "the stand-in's pid file", 0.01)
    try:
        assert pid is not None and charon.process is None
        assert charon.stop() is True
        assert not alive(pid)
        with socket.socket() as successor:
            successor.bind(("127.0.0.1", port))
    finally:
        if pid is not None and alive(pid):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("private_run", [True, False])
def test_a_stale_charon_pid_file_cannot_stop_the_next_start(tmp_path, private_run):
    """A SIGKILLed charon leaves its pid, which another daemon of the agent's user may get:
    charon would refuse to start. Its own pid file is removed; the host's /run/charon.pid,
    which the agent may write but not unlink, is emptied."""
    charon = Charon(str(tmp_path))
    charon.private_run = private_run
    if not private_run:
        charon.pidfile = str(tmp_path / "host-run" / "charon.pid")
    os.makedirs(os.path.dirname(charon.pidfile), exist_ok=True)
    os.makedirs(charon.run_dir, exist_ok=True)
    for stale in (charon.pidfile, charon.socket):
        with open(stale, "w") as handle:
            handle.write(f"{os.getpid()}\n")  # a live process of this user
    charon.clear_stale()
    assert not os.path.exists(charon.socket)
    if private_run:
        assert not os.path.exists(charon.pidfile)
    else:
        with open(charon.pidfile) as handle:
            assert handle.read() == ""
    charon.clear_stale()  # nothing left to clear: no error
