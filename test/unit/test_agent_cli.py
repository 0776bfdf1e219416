"""astara-router-api's gunicorn configuration, loaded by the installed gunicorn.

gunicorn's ``Config.set`` raises on a setting it does not know, so these tests also pin the
oldest gunicorn the agent runs on (``make lower-bounds`` runs them against it).
"""
import gc
import glob
import os
import pathlib
import ssl
import subprocess
import sys

import pytest
from gunicorn.workers.gthread import ThreadWorker

from astara_lab.appliance import contract_payloads
from astara_router.cli.api import (JEMALLOC, RUNTIME_MARK, AgentApplication,
                                   default_bind, in_child)
from astara_router import settings as settings_mod
from astara_router.model import KNOWN_SERVICES
from astara_router.settings import Settings
from astara_router.store import Store


def test_gunicorn_accepts_the_agent_configuration(tmp_path):
    settings = Settings(state_dir=str(tmp_path), bind=("127.0.0.1:5999", "[::1]:5999"),
                        threads=4)
    cfg = AgentApplication(settings).cfg
    run_dir = tmp_path / "run"
    assert run_dir.is_dir()
    assert cfg.bind == ["127.0.0.1:5999", "[::1]:5999"]
    # gunicorn's gthread worker, counting the reads in flight for writers to give way to
    assert (cfg.workers, cfg.worker_class, cfg.threads) == (1, ThreadWorker, 4)
    assert cfg.pidfile == str(run_dir / "api.pid")
    assert cfg.worker_tmp_dir == str(run_dir)
    assert cfg.control_socket_disable  # no gunicornc socket (nor its asyncio thread)
    assert not cfg.is_ssl


def test_the_master_freezes_its_objects_before_each_fork(tmp_path):
    """The worker then shares the master's pages instead of copying each one its garbage
    collector touches (gc.freeze before the fork)."""
    cfg = AgentApplication(Settings(state_dir=str(tmp_path), bind=("127.0.0.1:5999",))).cfg
    gc.unfreeze()
    try:
        cfg.pre_fork(None, None)  # gunicorn calls it with the arbiter and the worker
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


def test_mutual_tls_requires_client_certificates(tmp_path):
    settings = Settings(state_dir=str(tmp_path), bind=("127.0.0.1:5999",),
                        certfile="/etc/astara/api.crt", keyfile="/etc/astara/api.key",
                        ca_certs="/etc/astara/ca.crt")
    cfg = AgentApplication(settings).cfg
    assert cfg.is_ssl
    assert (cfg.certfile, cfg.keyfile, cfg.ca_certs) == (
        "/etc/astara/api.crt", "/etc/astara/api.key", "/etc/astara/ca.crt")
    assert cfg.cert_reqs == ssl.CERT_REQUIRED


def test_the_master_binds_the_persisted_management_address_parsed_in_a_child(tmp_path):
    """The master reads the address to bind from the persisted generation; the parse runs
    in a child process, so the master keeps none of the model."""
    payload = contract_payloads("original-orchestrator")["router-basic"]
    [management] = [n for n in payload["networks"] if n["network_type"] == "management"]
    address = management["interface"]["addresses"][0].split("/")[0]
    Store(str(tmp_path)).commit(1, payload)
    settings = Settings(state_dir=str(tmp_path), port=5123)
    assert default_bind(settings) == f"[{address}]:5123"
    assert AgentApplication(settings).cfg.bind == [f"[{address}]:5123"]


def modules_loaded_by(code, *prefixes):
    """The modules named ``prefixes`` (or below them) that ``code`` leaves imported in a
    fresh interpreter."""
    code += ("\nimport sys\nprint(sorted(m for m in sys.modules\n"
             f"             if m.startswith({prefixes!r})))\n")
    env = {**os.environ, "PYTHONPATH": str(pathlib.Path(__file__).resolve().parents[2])}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, check=True).stdout.strip()


def test_the_master_imports_neither_the_model_nor_msgspec_nor_the_renderers(tmp_path):
    """What the gunicorn master loads (the settings, with every section they check, and
    gunicorn's configuration) leaves the model, msgspec and the renderers to the worker:
    in the master their pages were mostly copied by the worker as well."""
    ini = tmp_path / "agent.ini"
    ini.write_text(f"[DEFAULT]\nstate_dir = {tmp_path}\nenabled_services = router, "
                   "loadbalancer\n[ha]\nadvert_interval = 0.5\n[vpn]\n"
                   "ipsec_backend = libipsec\n")
    code = ("from astara_router import settings\n"
            "from astara_router.cli.api import AgentApplication\n"
            f"AgentApplication(settings.load({str(ini)!r}, bind=('127.0.0.1:5999',)))\n")
    assert modules_loaded_by(code, "msgspec", "astara_router.model",
                             "astara_router.render") == "[]"


def test_the_worker_does_not_import_prometheus_client():
    """The agent writes its metrics' text itself (metrics.py)."""
    code = "import astara_router.api, astara_router.engine, astara_router.supervisor\n"
    assert modules_loaded_by(code, "prometheus_client") == "[]"


def test_the_settings_know_the_services_of_the_payload_schema():
    assert settings_mod.KNOWN_SERVICES == KNOWN_SERVICES


def test_in_child_runs_the_function_in_another_process():
    made = []

    def work():
        made.append("in the child")
        return os.getpid()

    assert int(in_child(work)) != os.getpid() and made == []
    assert in_child(lambda: None) is None
    assert in_child(lambda: 1 / 0) is None  # a failure is "nothing found"


def test_the_agent_runs_on_jemalloc_without_docstrings_and_what_it_starts_does_not():
    """with_runtime re-executes the process once, with jemalloc preloaded (when installed)
    and without docstrings (-OO); the daemons and tools the agent starts get an
    environment without those variables."""
    code = ("import os, subprocess, sys\n"
            "from astara_router.cli.api import with_runtime\n"
            "with_runtime()\n"
            "mapped = 'libjemalloc' in open('/proc/self/maps').read()\n"
            "child = subprocess.run(['cat', '/proc/self/maps'], capture_output=True, text=True)\n"
            "print(mapped, 'libjemalloc' in child.stdout, sys.flags.optimize,\n"
            "      with_runtime.__doc__,\n"
            "      sorted(set(os.environ) & {'LD_PRELOAD', 'PYTHONMALLOC', 'MALLOC_CONF',\n"
            "                                'PYTHONOPTIMIZE', 'ASTARA_ROUTER_RUNTIME'}))\n")
    env = {k: v for k, v in os.environ.items()
           if k not in ("LD_PRELOAD", "PYTHONMALLOC", "MALLOC_CONF", "PYTHONOPTIMIZE",
                        RUNTIME_MARK)}
    env["PYTHONPATH"] = str(pathlib.Path(__file__).resolve().parents[2])
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True).stdout
    jemalloc = bool(glob.glob(JEMALLOC))
    assert out.split("\n")[0] == f"{jemalloc} False 2 None []"
