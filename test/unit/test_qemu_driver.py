"""The QEMU driver's pure parts and decisions, without booting anything: the QEMU command
line and hot-plug arguments, image resolution and identity, the acceleration probe and
its cache, the user data and NoCloud meta data, the SNTP replies the lab's NTP server
sends, what an appliance's banner advertises, and the image's input digest. The driver
itself boots the real image in test/image/test_image_boot.py."""
import base64
import configparser
import json
import os
import pathlib
import shutil
import signal
import stat
import struct
import subprocess
import sys
import time

import pytest
import yaml

from astara_lab import image as images
from astara_lab.peers import NTP_PACKET, ntp_timestamp, sntp_reply
from orchestrator_lite import config
from orchestrator_lite.capabilities import ApplianceApi
from orchestrator_lite.drivers import qemu
from orchestrator_lite.drivers.base import ERROR, DriverError
from orchestrator_lite.drivers.userdata import (cloud_config, hostname_for, meta_data,
                                                write_nocloud_seed)

NICS = [{"slot": 0, "tap": "r1a2b0n0", "mac": "fa:16:3e:00:00:01"},
        {"slot": 2, "tap": "r1a2b0n2", "mac": "fa:16:3e:00:00:02"}]


def option_values(argv, option):
    return [argv[i + 1] for i, arg in enumerate(argv) if arg == option]


def command(machine="pc", nics=NICS, accel="tcg"):
    return qemu.qemu_command("qemu-system-x86_64", "/s/r1a2b0", "/i/vmlinuz", "/i/initrd",
                             "/s/r1a2b0/disk.qcow2", "/s/r1a2b0/seed.iso", nics, accel,
                             machine, 1, 768, 8, "quiet", "r1a2b0")


def test_command_line_daemonizes_with_pid_file_monitor_and_console():
    argv = command()
    assert "-daemonize" in argv
    assert option_values(argv, "-pidfile") == ["/s/r1a2b0/qemu.pid"]
    assert option_values(argv, "-qmp") == ["unix:/s/r1a2b0/qmp.sock,server=on,wait=off"]
    assert option_values(argv, "-serial") == ["file:/s/r1a2b0/console.log"]
    assert option_values(argv, "-machine") == ["pc,accel=tcg"]
    assert option_values(argv, "-m") == ["768"]
    assert option_values(argv, "-kernel") == ["/i/vmlinuz"]
    assert option_values(argv, "-append") == [
        "root=LABEL=cloudimg-rootfs ro console=ttyS0 quiet"]
    drives = option_values(argv, "-drive")
    assert drives[0].startswith("file=/s/r1a2b0/disk.qcow2,") and "format=qcow2" in drives[0]
    assert "readonly=on" in drives[1] and drives[1].startswith("file=/s/r1a2b0/seed.iso")


def test_each_nic_has_its_tap_mac_and_fixed_slot():
    argv = command()
    assert option_values(argv, "-netdev") == [
        "tap,id=net0,ifname=r1a2b0n0,script=no,downscript=no",
        "tap,id=net2,ifname=r1a2b0n2,script=no,downscript=no"]
    devices = [d for d in option_values(argv, "-device") if d.startswith("virtio-net")]
    assert devices == [
        "virtio-net-pci,id=nic0,netdev=net0,mac=fa:16:3e:00:00:01,romfile=,addr=0x10",
        "virtio-net-pci,id=nic2,netdev=net2,mac=fa:16:3e:00:00:02,romfile=,addr=0x12"]
    assert not any(d.startswith("pcie-root-port") for d in option_values(argv, "-device"))


def test_q35_gets_root_ports_for_every_slot():
    argv = command("q35")
    ports = [d for d in option_values(argv, "-device") if d.startswith("pcie-root-port")]
    assert len(ports) == 8 and ports[0] == "pcie-root-port,id=rp0,chassis=1,addr=0x10"
    assert qemu.nic_device_args(NICS[1], "q35") == {
        "driver": "virtio-net-pci", "id": "nic2", "netdev": "net2",
        "mac": "fa:16:3e:00:00:02", "romfile": "", "bus": "rp2"}
    assert "addr" not in qemu.nic_device_args(NICS[1], "pc-q35-7.2")


@pytest.fixture
def image_dir(tmp_path):
    for name in ("astara.qcow2", "astara.vmlinuz", "astara.initrd", "v2.qcow2",
                 "v2.vmlinuz"):
        (tmp_path / name).write_text(name)
    return tmp_path


def make_driver(tmp_path, image_dir, **kwargs):
    return qemu.QemuDriver(tmp_path / "state", "ast000000-fab",
                           image=str(image_dir / "astara.qcow2"),
                           images={"v2": str(image_dir / "v2.qcow2")}, **kwargs)


def test_images_resolve_by_label_or_path(tmp_path, image_dir):
    driver = make_driver(tmp_path, image_dir)
    assert driver.resolve_image(None) == ("", str(image_dir / "astara.qcow2"))
    assert driver.resolve_image(str(image_dir / "astara.qcow2"))[1] == \
        str(image_dir / "astara.qcow2")
    with pytest.raises(DriverError, match=r"unknown image 'v3'.*\(v2\)"):
        driver.resolve_image("v3")
    with pytest.raises(DriverError, match="v2.initrd"):  # a label whose files are missing
        driver.resolve_image("v2")
    with pytest.raises(DriverError, match="unknown image"):
        driver.resolve_image("relative/astara.qcow2")


def test_image_id_changes_when_the_image_is_rebuilt(tmp_path, image_dir):
    driver = make_driver(tmp_path, image_dir)
    first = driver.image_id()
    assert driver.image_id("") == first and len(first) == 12
    replacement = image_dir / "new.qcow2"
    replacement.write_text("rebuilt")
    os.replace(replacement, image_dir / "astara.qcow2")  # what diskimage-builder does
    assert driver.image_id() != first


def test_driver_refuses_the_root_namespace_and_bad_settings(tmp_path):
    with pytest.raises(DriverError, match="fabric"):
        qemu.QemuDriver(tmp_path, "")
    with pytest.raises(DriverError, match="accel"):
        qemu.QemuDriver(tmp_path, "fab", accel="xen")
    with pytest.raises(DriverError, match="max_nics"):
        qemu.QemuDriver(tmp_path, "fab", max_nics=40)


def test_acceleration_is_probed_once_and_remembered(tmp_path, image_dir):
    calls = []

    def probe(binary, kernel):
        calls.append(kernel)
        return False, "guests hang"

    kernel = image_dir / "astara.vmlinuz"
    driver = make_driver(tmp_path, image_dir, probe=probe, binary="true")
    assert driver._accel_for(kernel) == "tcg"
    assert driver._accel_for(kernel) == "tcg"
    saved = json.loads((tmp_path / "state" / "accel.json").read_text())
    assert saved["accel"] == "tcg" and saved["detail"] == "guests hang"
    # A restarted orchestrator reads the verdict instead of probing again.
    again = make_driver(tmp_path, image_dir, probe=probe, binary="true")
    assert again._accel_for(kernel) == "tcg" and len(calls) == 1
    forced = make_driver(tmp_path, image_dir, probe=probe, binary="true", accel="kvm")
    assert forced._accel_for(kernel) == "kvm" and len(calls) == 1


@pytest.mark.skipif(not os.access("/dev/kvm", os.R_OK | os.W_OK), reason="no /dev/kvm")
@pytest.mark.parametrize("script, ok", [
    ("echo 'Kernel panic - not syncing: VFS: Unable to mount root fs'", True),
    ("sleep 30", False),
    ("echo 'failed to initialize kvm' >&2; exit 1", False)])
def test_kvm_probe_judges_by_the_guest(tmp_path, script, ok):
    fake = tmp_path / "qemu"
    fake.write_text(f"#!/bin/sh\n{script}\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    result, detail = qemu.kvm_runs_a_guest(str(fake), tmp_path / "vmlinuz", timeout=2)
    assert result is ok, detail


def test_user_data_is_cloud_config():
    text = cloud_config("fa:16:3e:00:00:01", "fdca:3ba5:a17a:acda::5/64", 1450,
                        ["ssh-ed25519 AAAA op@host\n"], ["fdca:3ba5:a17a:acda::2", " "])
    assert text.startswith("#cloud-config\n")
    data = yaml.safe_load(text)
    assert data["bootcmd"] == [["/usr/local/bin/astara-configure-management",
                                "fa:16:3e:00:00:01", "fdca:3ba5:a17a:acda::5/64",
                                "--mtu", "1450"]]
    assert data["users"] == [{"name": "astara", "lock_passwd": True, "shell": "/bin/bash",
                              "ssh_authorized_keys": ["ssh-ed25519 AAAA op@host"]}]
    assert "sudo" not in data["users"][0]
    assert data["ntp"] == {"enabled": True, "ntp_client": "systemd-timesyncd",
                           "servers": ["fdca:3ba5:a17a:acda::2"]}
    bare = yaml.safe_load(cloud_config("fa:16:3e:00:00:01", "198.18.0.5/24", 1500))
    assert "users" not in bare and "ntp" not in bare


def test_user_data_writes_the_tls_files():
    """Mutual TLS: the bundle's boot files at the image's paths, base64, modes kept."""
    files = [("/etc/astara/tls/server.key", "-----BEGIN PRIVATE KEY-----\nx\n", 0o600),
             ("/etc/astara/astara.ini.d/50-tls.ini", "[api]\ncertfile = a: b\n", 0o644)]
    data = yaml.safe_load(cloud_config("fa:16:3e:00:00:01", "198.18.0.5/24", 1500,
                                       files=files))
    written = [(f["path"], base64.b64decode(f["content"]).decode(), int(f["permissions"], 8))
               for f in data["write_files"]]
    assert written == files
    assert {f["encoding"] for f in data["write_files"]} == {"b64"}


@pytest.mark.skipif(shutil.which("genisoimage") is None, reason="no genisoimage")
def test_the_seed_holding_a_key_is_for_root_only(tmp_path):
    seed = write_nocloud_seed(tmp_path, "#cloud-config\n{}\n", "{}\n")
    for path in (seed, tmp_path / "user-data", tmp_path / "meta-data"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_meta_data_names_a_valid_host():
    assert hostname_for("ak-router-Demo_Router_0") == "ak-router-demo-router-0"
    assert hostname_for("___") == "astara-appliance"
    data = yaml.safe_load(meta_data("r1a2b0-1700000000", "ak-router-r1_0"))
    assert data == {"instance-id": "r1a2b0-1700000000", "local-hostname": "ak-router-r1-0"}


def client_request(version=4, mode=3, transmit=0x1234567890ABCDEF):
    return NTP_PACKET.pack((version << 3) | mode, 0, 6, 0, 0, 0, b"\0" * 4, 0, 0, 0, transmit)


def test_sntp_reply_answers_clients_only():
    now = time.time()
    reply = sntp_reply(client_request(), now, now=lambda: now)
    first, stratum, poll, _, delay, dispersion, refid, ref, origin, received, sent = \
        NTP_PACKET.unpack(reply)
    assert (first >> 6, (first >> 3) & 7, first & 7) == (0, 4, 4)  # no leap, v4, server
    assert (stratum, poll) == (2, 6) and delay == 0 and 0 < dispersion < 1 << 16
    assert origin == 0x1234567890ABCDEF  # the client matches its request by this
    assert received == sent == ref == ntp_timestamp(now)
    assert ntp_timestamp(0) == 2208988800 << 32
    assert sntp_reply(client_request(mode=4), now) is None  # a server's packet
    assert sntp_reply(client_request(version=2), now) is None
    assert sntp_reply(b"\x23" * 20, now) is None
    assert struct.calcsize(NTP_PACKET.format) == 48


def test_appliance_api_from_the_banner():
    new = ApplianceApi.from_banner({"service": "x", "api_version": "1.1",
                                    "capabilities": ["config-hash", "status", 3]})
    assert new.version == "1.1" and new.has("config-hash") and not new.has("3")
    assert new.as_dict() == {"api_version": "1.1", "capabilities": ["config-hash", "status"]}
    for old in ({"service": "Astara appliance API service is active"}, {"v1": {}}, [], None,
                {"api_version": "2.0", "capabilities": "config-hash"}):
        api = ApplianceApi.from_banner(old)
        assert not api.has("config-hash")
    assert ApplianceApi.from_banner({"v1": {}}).version == "1.0"


def test_qemu_settings_from_the_ini():
    parser = configparser.ConfigParser()
    parser.read_string("[compute]\ndriver = qemu\n[qemu]\nfabric = ast000000-fab\n"
                       "images = v2=/srv/v2.qcow2, v3=/srv/v3.qcow2\nmemory = 768\n"
                       "[appliance]\nntp_servers = 198.18.0.1, ntp.example.org\n")
    settings = config.from_parser(parser)
    assert settings.compute_driver == "qemu" and settings.qemu.memory == 768
    assert settings.qemu.images == {"v2": "/srv/v2.qcow2", "v3": "/srv/v3.qcow2"}
    assert settings.appliance.ntp_server_list == ("198.18.0.1", "ntp.example.org")
    parser.remove_option("qemu", "fabric")
    with pytest.raises(config.ConfigError, match="qemu.fabric"):
        config.from_parser(parser)
    parser.set("qemu", "fabric", "f")
    parser.set("qemu", "accel", "xen")
    with pytest.raises(config.ConfigError, match="qemu.accel"):
        config.from_parser(parser)


@pytest.fixture
def source_tree(tmp_path):
    root = tmp_path / "repo"
    for relative in images.INPUT_FILES + ("diskimage-builder/elements/astara/README.rst",
                                          "packaging/astara-router/pyproject.toml",
                                          "astara_router/__init__.py"):
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(relative)
    return root


def test_image_inputs_digest_follows_what_the_image_holds(source_tree):
    digest = images.inputs_digest(source_tree, environ={})
    assert images.inputs_digest(source_tree, environ={}) == digest
    cache = source_tree / "astara_router" / "__pycache__"
    cache.mkdir()
    (cache / "x.cpython-311.pyc").write_bytes(b"\0")
    assert images.inputs_digest(source_tree, environ={}) == digest, "caches are no input"
    (source_tree / "diskimage-builder/elements/astara/README.rst").write_text("reworded")
    assert images.inputs_digest(source_tree, environ={}) == digest, "nor documentation"
    (source_tree / "diskimage-builder/elements/astara/element-deps").write_text("vm")
    assert images.inputs_digest(source_tree, environ={}) != digest
    (source_tree / "diskimage-builder/elements/astara/element-deps").unlink()
    assert images.inputs_digest(source_tree, environ={"DIB_RELEASE": "trixie"}) != digest
    (source_tree / "locks" / "agent.txt").write_text("flask==9")
    changed = images.inputs_digest(source_tree, environ={})
    assert changed != digest
    script = source_tree / "scripts" / "build-image"
    script.chmod(0o755)
    assert images.inputs_digest(source_tree, environ={}) != changed, "modes count"


def test_image_status(tmp_path, source_tree, monkeypatch):
    out = tmp_path / "out"
    assert images.status(out, "astara", source_tree) == "missing"
    files = images.outputs(out, "astara")
    files["manifests"].mkdir(parents=True)
    for kind in ("qcow2", "vmlinuz", "initrd"):
        files[kind].write_text(kind)
    assert images.status(out, "astara", source_tree) == "stale"
    monkeypatch.setattr(os, "environ", {})
    images.stamp_path(out, "astara").write_text(images.inputs_digest(source_tree) + "\n")
    assert images.status(out, "astara", source_tree) == "current"
    pathlib.Path(source_tree / "requirements.txt").write_text("flask>=4")
    assert images.status(out, "astara", source_tree) == "stale"


@pytest.fixture
def stand_in_qemu(tmp_path, image_dir):
    """A recorded instance whose "QEMU" is a real process (named by its qmp.sock path, as
    QEMU's command line is; ``ignore_term``: it survives SIGTERM), and the driver."""
    driver = make_driver(tmp_path, image_dir)
    started = []

    def start(instance_id, ignore_term=False):
        directory = driver.records.dir(instance_id)
        directory.mkdir(parents=True)
        record = {"id": instance_id, "name": f"ak-router-{instance_id}_0", "nics": [],
                  "management_cidr": "fdca::5/64", "created_at": time.time()}
        driver.records.save(record)
        code = ("import signal, sys, time\n"
                f"{'signal.signal(signal.SIGTERM, signal.SIG_IGN)' if ignore_term else ''}\n"
                "print('ready', flush=True)\ntime.sleep(60)\n")
        process = subprocess.Popen([sys.executable, "-c", code, str(directory / "qmp.sock")],
                                   stdout=subprocess.PIPE)
        started.append(process)
        assert process.stdout.readline() == b"ready\n"  # the handler is set
        (directory / "qemu.pid").write_text(f"{process.pid}\n")
        return record, process

    yield driver, start
    for process in started:
        process.kill()
        process.wait()


@pytest.mark.parametrize("ignore_term", [False, True])
def test_stop_ends_the_qemu_process_and_its_status_follows(stand_in_qemu, ignore_term):
    driver, start = stand_in_qemu
    record, process = start("r1a2b0", ignore_term)
    instance = driver.get("r1a2b0")
    assert instance.details["pid"] == process.pid
    assert instance.status == ERROR  # alive, but no QMP monitor answers
    driver._stop_qemu(record, grace=0.2)  # no monitor to quit: TERM, then KILL if need be
    assert process.wait(timeout=5) == (-signal.SIGKILL if ignore_term else -signal.SIGTERM)
    instance = driver.get("r1a2b0")
    assert instance.details["pid"] is None and instance.status == ERROR


def test_a_reused_pid_is_not_the_instances_qemu(stand_in_qemu):
    """The pid file names a live process that is not this instance's QEMU (its PID was
    reused): no pid, ERROR, and stopping it leaves that process alone."""
    driver, start = stand_in_qemu
    record, _ = start("r1a2b0")
    _, other = start("r9c8d0")
    (driver.records.dir("r1a2b0") / "qemu.pid").write_text(f"{other.pid}\n")
    instance = driver.get("r1a2b0")
    assert instance.details["pid"] is None and instance.status == ERROR
    driver._stop_qemu(record, grace=0.2)
    assert other.poll() is None
