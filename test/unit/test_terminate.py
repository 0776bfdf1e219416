"""astara_netns.terminate: by PID, the signal asked for first, SIGKILL after the grace; with
``group=True`` the whole process group (what the lab's servers need: ``runuser`` and its
``postgres`` child share one)."""
import signal
import subprocess

from astara_netns import pid_alive, terminate, wait_exit


def start(script):
    """``sh -c script`` in a session (and process group) of its own; it prints the PIDs
    the test needs, one a line, then ``ready``."""
    process = subprocess.Popen(["sh", "-c", script], stdout=subprocess.PIPE, text=True,
                               start_new_session=True)
    lines = []
    while (line := process.stdout.readline().strip()) != "ready":
        assert line, f"{script!r} exited early"
        lines.append(int(line))
    return process, lines


def test_group_ends_the_children_too():
    process, (child,) = start("sleep 60 & echo $!; echo ready; wait")
    try:
        terminate(process.pid, 5, alive=lambda: process.poll() is None, group=True)
        assert process.poll() == -signal.SIGTERM
        assert wait_exit(child, 5), "the group's other member still runs"
    finally:
        terminate(child, 1)
        process.wait(5)


def test_without_group_only_the_pid_is_signalled():
    process, (child,) = start("sleep 60 & echo $!; echo ready; wait")
    try:
        terminate(process.pid, 5, alive=lambda: process.poll() is None)
        assert process.poll() == -signal.SIGTERM
        assert pid_alive(child)
    finally:
        terminate(child, 1)
        process.wait(5)


def test_first_signal_then_sigkill_after_the_grace():
    # Ends on SIGINT (exit status 0), ignores SIGTERM.
    script = "trap 'exit 0' INT; trap '' TERM; echo ready; while :; do sleep 0.1; done"
    process, _ = start(script)
    terminate(process.pid, 5, alive=lambda: process.poll() is None, group=True,
              first=signal.SIGINT)
    assert process.wait(5) == 0
    process, _ = start(script)
    terminate(process.pid, 0.5, alive=lambda: process.poll() is None, group=True)
    assert process.wait(5) == -signal.SIGKILL


def test_wait_exit_tells_whether_the_process_ended_in_time():
    process, _ = start("trap 'exit 0' TERM; echo ready; while :; do sleep 0.1; done")
    try:
        running = lambda: process.poll() is None  # noqa: E731 - reaps the child
        assert wait_exit(process.pid, 0.2, running) is False
        process.terminate()
        assert wait_exit(process.pid, 5, running) is True and process.returncode == 0
    finally:
        terminate(process.pid, 1, alive=lambda: process.poll() is None, group=True)
    assert wait_exit(process.pid, 0) is True  # reaped: pid_alive, the default, agrees
