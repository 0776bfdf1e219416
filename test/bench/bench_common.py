"""What every benchmark script shares: the ``--output`` option (BENCHMARKS.md, where each
script replaces only its own section, markdown_sections.py), the root check, the facts
about the run and the machine each section starts with, and processes' CPU time."""
import datetime
import os
import pathlib
import platform
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[2]
BENCHMARKS = REPO / "BENCHMARKS.md"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def add_output_option(parser):
    parser.add_argument("--output", default=str(BENCHMARKS),
                        help="Markdown file whose section this script replaces "
                             "(default: %(default)s)")


def require_root():
    """Exits with status 2 unless running as root (labs are network namespaces)."""
    if os.geteuid() != 0:
        print("benchmarks need root (network namespaces)", file=sys.stderr)
        raise SystemExit(2)


def machine_facts():
    """When, what and where: UTC date, commit (marked when the tracked files differ from
    it), host, cores, kernel, Python and the load average (1/5/15 min) now."""
    def git(*args):
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True,
                              text=True).stdout.strip()
    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    if git("status", "--porcelain", "--untracked-files=no"):
        commit += " (with uncommitted changes)"
    return {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "commit": commit, "host": platform.node(), "cores": os.cpu_count(),
            "kernel": platform.release(), "python": platform.python_version(),
            "load": os.getloadavg()}


def machine_line(facts):
    """``on 2025-01-31 12:00 UTC, commit 1a2b3c4, host: 2 cores, kernel 6.1.0, Python
    3.11.2``: the start of every section's first sentence."""
    return (f"on {facts['date']}, commit {facts['commit']}, {facts['host']}: "
            f"{facts['cores']} cores, kernel {facts['kernel']}, Python {facts['python']}")


def stat_fields(pid):
    """The fields of ``/proc/PID/stat`` after the command name (which may hold ")"): state,
    ppid, ... (OSError when the process is gone)."""
    return pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def cpu_seconds(*pids, skip_gone=False):
    """utime + stime of the processes, all their threads (``/proc/PID/stat``), in seconds.
    A process that is gone raises, unless ``skip_gone`` (then it counts nothing)."""
    ticks = 0
    for pid in pids:
        try:
            fields = stat_fields(pid)
        except OSError:
            if skip_gone:
                continue
            raise
        ticks += int(fields[11]) + int(fields[12])
    return ticks / CLK_TCK
