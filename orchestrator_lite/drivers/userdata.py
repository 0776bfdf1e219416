"""What an appliance VM is told at boot: cloud-init user data (the QEMU and the OpenStack
drivers) and meta data (pure), and the NoCloud seed that carries them to a local VM.

The user data is cloud-config (JSON is YAML, so it is written with ``json.dumps``: no
quoting of MACs, keys or host names can go wrong):

* ``bootcmd`` runs ``astara-configure-management <mgt MAC> <address/prefix> --mtu N`` on
  every boot (the original orchestrator's boot command; the image links it into
  /usr/local/bin);
* ``users`` gives the image's ``astara`` user the operator's ssh keys (password locked;
  no sudo rule: the image limits its sudo to diagnosis commands, README "Least
  privilege");
* ``ntp`` (cloud-init's ntp module, client systemd-timesyncd, which the image ships)
  writes the NTP servers into a timesyncd drop-in and restarts it, when servers are
  configured (``[appliance] ntp_servers``); without them the image's defaults apply;
* ``write_files`` (mutual TLS, orchestrator_lite/pki.py): the instance's certificate, key
  (0600) and CA under /etc/astara/tls and the agent's ini drop-in naming them, base64 (the
  agent's unit starts after cloud-init's init stage, which writes them).

The user data then holds a private key: the seed and its files are 0600.
"""
import base64
import json
import os
import pathlib
import re

from astara_netns import run

BOOT_COMMAND = "/usr/local/bin/astara-configure-management"


def cloud_config(mgt_mac, management_cidr, mtu, ssh_keys=(), ntp_servers=(),
                 boot_command=BOOT_COMMAND, files=()):
    """``files``: ``[(path, content, mode)]`` to write (a pki.Bundle's boot_files)."""
    config = {"bootcmd": [[boot_command, mgt_mac, management_cidr, "--mtu", str(mtu)]]}
    keys = [k.strip() for k in ssh_keys if k and k.strip()]
    if keys:
        config["users"] = [{"name": "astara", "lock_passwd": True, "shell": "/bin/bash",
                            "ssh_authorized_keys": keys}]
    servers = [s.strip() for s in ntp_servers if s and s.strip()]
    if servers:
        config["ntp"] = {"enabled": True, "ntp_client": "systemd-timesyncd",
                         "servers": servers}
    if files:
        config["write_files"] = [
            {"path": path, "content": base64.b64encode(content.encode()).decode(),
             "encoding": "b64", "owner": "root:root", "permissions": f"{mode:04o}"}
            for path, content, mode in files]
    config["final_message"] = "Astara appliance is running"
    return "#cloud-config\n" + json.dumps(config, indent=1) + "\n"


def image_tls_files(tls):
    """``files`` for ``cloud_config``: a pki.Bundle's certificate files at the image's
    paths (mutual TLS), or none without a bundle."""
    if tls is None:
        return ()
    from ..pki import IMAGE_BASE, IMAGE_INI  # cryptography only when TLS is used
    return tls.boot_files(IMAGE_BASE, IMAGE_INI)


def hostname_for(instance_name):
    """An RFC 1123 label for ``instance_name`` (``ak-router-<id>_0`` has an underscore)."""
    label = re.sub(r"[^a-z0-9-]+", "-", instance_name.lower()).strip("-")[:63].strip("-")
    return label or "astara-appliance"


def meta_data(instance_id, instance_name):
    """NoCloud meta data. A new ``instance-id`` per boot of a new instance makes cloud-init
    run its per-instance modules (users, ntp) on the fresh overlay."""
    return json.dumps({"instance-id": instance_id,
                       "local-hostname": hostname_for(instance_name)}, indent=1) + "\n"


def write_nocloud_seed(directory, user_data, meta):
    """``directory/seed.iso``: an ISO 9660 volume labelled ``cidata`` (what cloud-localds
    makes) holding ``user-data`` and ``meta-data``."""
    directory = pathlib.Path(directory)
    for name, text in (("user-data", user_data), ("meta-data", meta)):
        fd = os.open(directory / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
    seed = directory / "seed.iso"
    seed.unlink(missing_ok=True)
    os.close(os.open(seed, os.O_WRONLY | os.O_CREAT, 0o600))  # 0600 before it holds a key
    run(["genisoimage", "-quiet", "-output", seed, "-volid", "cidata", "-joliet", "-rock",
         directory / "user-data", directory / "meta-data"])
    return seed
