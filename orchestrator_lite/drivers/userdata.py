"""What an appliance VM is told at boot: cloud-init user data and meta data (pure), and the
NoCloud seed that carries them to a local VM.

The user data is cloud-config (JSON is YAML, so it is written with ``json.dumps``: no
quoting of MACs, keys or host names can go wrong):

* ``bootcmd`` runs ``astara-configure-management <mgt MAC> <address/prefix> --mtu N`` on
  every boot (the original orchestrator's boot command; the image links it into
  /usr/local/bin);
* ``users`` gives the image's ``astara`` user the operator's ssh keys (password locked;
  what it may do with sudo is the hardening issue's business, so no sudo rule here);
* ``ntp`` (cloud-init's ntp module, client systemd-timesyncd, which the image ships)
  writes the NTP servers into a timesyncd drop-in and restarts it, when servers are
  configured (``[appliance] ntp_servers``); without them the image's defaults apply.
"""
import json
import pathlib
import re

from astara_netns import run

BOOT_COMMAND = "/usr/local/bin/astara-configure-management"


def cloud_config(mgt_mac, management_cidr, mtu, ssh_keys=(), ntp_servers=(),
                 boot_command=BOOT_COMMAND):
    config = {"bootcmd": [[boot_command, mgt_mac, management_cidr, "--mtu", str(mtu)]]}
    keys = [k.strip() for k in ssh_keys if k and k.strip()]
    if keys:
        config["users"] = [{"name": "astara", "lock_passwd": True, "shell": "/bin/bash",
                            "ssh_authorized_keys": keys}]
    servers = [s.strip() for s in ntp_servers if s and s.strip()]
    if servers:
        config["ntp"] = {"enabled": True, "ntp_client": "systemd-timesyncd",
                         "servers": servers}
    config["final_message"] = "Astara appliance is running"
    return "#cloud-config\n" + json.dumps(config, indent=1) + "\n"


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
    (directory / "user-data").write_text(user_data)
    (directory / "meta-data").write_text(meta)
    seed = directory / "seed.iso"
    run(["genisoimage", "-quiet", "-output", seed, "-volid", "cidata", "-joliet", "-rock",
         directory / "user-data", directory / "meta-data"])
    return seed
