"""strongSwan's configuration for the router's IPsec site connections (pure, no I/O).

One swanctl connection per active ``ipsec_site_connection`` (it and its VPN service
administratively up), named after the connection's id:

* IKE: ``version`` from ``ikepolicy.ike_version``, ``proposals`` from the IKE policy,
  ``aggressive`` from ``phase1_negotiation_mode`` (IKEv1 only), the IKE SA ends after the
  policy's lifetime (rekeyed at 90 % of it, ``over_time`` the last 10 %);
* authentication: PSK both ways; the local identity is the service's external address of
  the peer's family, the remote one ``peer_id`` (else the peer address); the secret is
  written hex-encoded (``0x…``), so no byte of it is ever read as syntax;
* DPD: ``dpd_delay`` = interval; the timeout is per connection in IKEv1 (``dpd_timeout``)
  and, in IKEv2, strongSwan's retransmission schedule, which is global: it is sized so that
  the last retransmission gives up after the timeout, and every IKEv2 connection must then
  ask for the same timeout; actions hold → trap, clear → clear, restart → restart,
  disabled → no DPD;
* CHILD_SAs: tunnel mode between ``local_subnets`` and ``peer_subnets`` (see model/vpn.py);
  IKEv2 negotiates all of them in one CHILD_SA, IKEv1 can only carry one pair of subnets
  per CHILD_SA, so it gets one per pair (``<id>-1``, ``<id>-2``, …); ESP (or AH, kernel
  backend only) proposal from the IPsec policy including its PFS group, lifetime in seconds
  or kilobytes; ``initiator`` bi-directional → ``start_action = start``, response-only →
  ``none``.
* ``mtu``: the largest packet the tunnels put on the wire. strongSwan sets one MTU on the
  routes it installs (global): the smallest of the connections'. With kernel IPsec the
  kernel subtracts the ESP overhead from that route MTU itself; with kernel-libipsec the
  route leads into its TUN device, so the overhead is subtracted here.

What strongSwan cannot carry out is refused with an ApplyError (422) naming the field:
algorithms outside the tables below (they are what the plugins we load provide), AEAD
ciphers for an IKEv1 IKE SA, kilobyte IKE lifetimes, ``restart-by-peer``, ``ah-esp``
bundles, AH over kernel-libipsec (userspace ESP only), transport mode, route modes other
than static, aggressive mode with IKEv2, DPD timeouts not above the interval, MTUs below
1280, identities or connection ids outside a safe grammar, and two connections with the
same identities but different PSKs (strongSwan could not tell their secrets apart).
"""
import re
from dataclasses import dataclass, field

from ..errors import ApplyError
from ..model.vpn import active_connections
from ..settings import IPSEC_BACKENDS

BACKENDS = IPSEC_BACKENDS  # settings.py checks [vpn] ipsec_backend against them
LIBIPSEC_TUN = "ipsec0"  # kernel-libipsec's TUN device (the first "ipsec%d")
LIBIPSEC_TUN_MTU = 1400
LIBIPSEC_OVERHEAD = 100  # IPv4 + UDP + ESP header, IV, padding and ICV, rounded up
MIN_MTU = 1280

SOCKET = "charon.vici"
LOG_FILE = "charon.log"
RUN_DIR = "run"  # bound over /run in charon's private mount namespace (its pid file)

# The critical ones ("!"): charon refuses to start without them. kdf derives IKEv2's keys
# (openssl's KDF does not cover every PRF). With kernel-libipsec, kernel-netlink only does
# the networking (its IPsec feature is libipsec's): not critical then.
PLUGINS = {
    "kernel": "random! nonce! openssl! kdf! xcbc kernel-netlink! socket-default! vici!",
    "libipsec": ("random! nonce! openssl! kdf! xcbc kernel-libipsec! kernel-netlink "
                 "socket-default! vici!"),
}

# Neutron VPNaaS names -> strongSwan proposal keywords, for what openssl + xcbc provide.
ENCRYPTION = {"3des": "3des", **{f"aes-{bits}": f"aes{bits}" for bits in (128, 192, 256)},
              **{f"aes-{bits}-ctr": f"aes{bits}ctr" for bits in (128, 192, 256)}}
AEAD = {f"aes-{bits}-{mode}-{icv}": f"aes{bits}{mode}{icv}"
        for bits in (128, 192, 256) for mode in ("ccm", "gcm") for icv in (8, 12, 16)}
INTEGRITY = {"sha1": "sha1", "sha256": "sha256", "sha384": "sha384", "sha512": "sha512",
             "aes-xcbc": "aesxcbc"}
DH_GROUPS = {"group2": "modp1024", "group5": "modp1536", "group14": "modp2048",
             "group15": "modp3072", "group16": "modp4096", "group17": "modp6144",
             "group18": "modp8192", "group19": "ecp256", "group20": "ecp384",
             "group21": "ecp521", "group22": "modp1024s160", "group23": "modp2048s224",
             "group24": "modp2048s256", "group25": "ecp192", "group26": "ecp224",
             "group31": "curve25519"}
DPD_ACTIONS = {"hold": "trap", "clear": "clear", "restart": "restart"}
START_ACTIONS = {"bi-directional": "start", "response-only": "none"}

# IKEv2 gives up after retransmit_tries retransmissions, waiting timeout * base^n before
# the n-th: the whole schedule is timeout * (base^(tries+1) - 1) / (base - 1).
RETRANSMIT_BASE = 1.8
RETRANSMIT_TRIES = 5

CONNECTION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
IDENTITY = re.compile(r"[A-Za-z0-9.:@_=,/+-](?:[A-Za-z0-9.:@_=,/+ -]{0,253}[A-Za-z0-9.:@_=,/+-])?")


@dataclass(frozen=True)
class Child:
    name: str
    local_ts: tuple  # of network texts
    remote_ts: tuple


@dataclass(frozen=True)
class Connection:
    name: str
    path: str  # the payload's JSON path of the ipsec_site_connection
    children: tuple  # of Child
    secret: str  # the name of its entry in "secrets"


@dataclass(frozen=True)
class VpnPlan:
    """What charon should run: ``strongswan`` (strongswan.conf: plugins, sockets, logging,
    global settings; a change needs a charon restart) and ``swanctl`` (swanctl.conf:
    connections and their secrets; loaded into the running charon)."""
    backend: str
    strongswan: str
    swanctl: str = field(repr=False)  # holds the PSKs
    connections: tuple = ()  # of Connection

    def connection_named(self, name):
        return next((c for c in self.connections if c.name == name), None)


def render_vpn(config, backend, directory):
    """The plan for ``config`` (None: no active connection, charon is not needed) with the
    IPsec ``backend`` (one of BACKENDS); charon's socket and log live in ``directory``
    (under state_dir: both are settings, checked in settings.load)."""
    active = active_connections(config.router)
    if not active:
        return None
    external = {a.ip for n in config.external_networks for a in n.interface.addresses}
    names, secrets, ikev2_timeouts = {}, {}, {}
    sections, secret_sections, connections = [], [], []
    for service, connection in active:
        path = connection.path
        name = connection.id
        if not CONNECTION_NAME.fullmatch(name or ""):
            raise ApplyError(f"{path}.id", f"{name!r} is not usable as a connection "
                                               f"name (letters, digits, '_' and '-')")
        if name in names:
            raise ApplyError(f"{path}.id", f"{name!r} is also the id of {names[name]}")
        names[name] = path
        _refuse_unsupported(connection, backend)
        version = connection.peer_address.version
        local = service.external_ip(version)
        which = f"external_v{version}_ip"
        if local is None:
            raise ApplyError(f"{service.path}.{which}",
                                 f"is needed for the IPv{version} peer "
                                 f"{connection.peer_address}")
        if local not in external:
            raise ApplyError(f"{service.path}.{which}",
                                 f"{local} is not an address of this router's external "
                                 f"interfaces")
        remote_id = connection.peer_id or str(connection.peer_address)
        if not IDENTITY.fullmatch(remote_id):
            raise ApplyError(f"{path}.peer_id", "must be an IP address, a host name or a "
                                                    "distinguished name (letters, digits, "
                                                    "spaces and . : @ _ = , / + -)")
        ids = (str(local), remote_id)
        if ids in secrets and secrets[ids][0] != connection.psk:
            raise ApplyError(f"{path}.psk", f"differs from the PSK of {secrets[ids][1]}, "
                                                f"which has the same identities {ids}")
        secrets.setdefault(ids, (connection.psk, path))
        if connection.ikepolicy.ike_version == "v2" and connection.dpd_action != "disabled":
            ikev2_timeouts.setdefault(connection.dpd_timeout, path)
            if len(ikev2_timeouts) > 1:
                first = next(iter(ikev2_timeouts.items()))
                raise ApplyError(
                    f"{path}.dpd.timeout",
                    f"IKEv2 DPD timeouts are strongSwan's global retransmission schedule: "
                    f"{connection.dpd_timeout} s differs from {first[0]} s of {first[1]}")
        children = _children(name, connection)
        secret_name = f"ike-{name}"
        connections.append(Connection(name, path, children, secret_name))
        sections.append(_connection_section(name, connection, local, remote_id, children))
        secret_sections.append(_block(secret_name, [
            f'id-local = "{ids[0]}"', f'id-remote = "{ids[1]}"',
            f"secret = 0x{connection.psk.encode().hex()}"]))
    swanctl = ["# managed by astara-router: every apply replaces this file",
               *_block("connections", [line for s in sections for line in s]),
               *_block("secrets", [line for s in secret_sections for line in s])]
    strongswan = _strongswan_conf(backend, directory, [c for _, c in active],
                                  next(iter(ikev2_timeouts), None))
    return VpnPlan(backend, strongswan, "\n".join(swanctl) + "\n", tuple(connections))


def _refuse_unsupported(connection, backend):
    path = connection.path
    ike, esp = connection.ikepolicy, connection.ipsecpolicy
    if connection.route_mode != "static":
        raise ApplyError(f"{path}.route_mode", f"{connection.route_mode!r}: only static "
                                                   f"routing of the subnets is supported")
    if connection.mtu < MIN_MTU:
        raise ApplyError(f"{path}.mtu", f"{connection.mtu} is below {MIN_MTU}, too small "
                                            f"to carry IPsec packets")
    if connection.dpd_action == "restart-by-peer":
        raise ApplyError(f"{path}.dpd.action", "restart-by-peer has no strongSwan "
                                                   "equivalent (hold, clear, restart, "
                                                   "disabled)")
    if connection.dpd_action != "disabled" and connection.dpd_timeout <= connection.dpd_interval:
        raise ApplyError(f"{path}.dpd.timeout", f"{connection.dpd_timeout} must be longer "
                                                    f"than the interval "
                                                    f"({connection.dpd_interval})")
    if ike.phase1_negotiation_mode == "aggressive" and ike.ike_version == "v2":
        raise ApplyError(f"{path}.ikepolicy.phase1_negotiation_mode",
                             "aggressive mode exists in IKEv1 only")
    if ike.lifetime.units != "seconds":
        raise ApplyError(f"{path}.ikepolicy.lifetime.units",
                             "strongSwan limits IKE SAs by time only (seconds)")
    if ike.ike_version == "v1" and ike.encryption_algorithm in AEAD:
        raise ApplyError(f"{path}.ikepolicy.encryption_algorithm",
                             f"{ike.encryption_algorithm}: AEAD ciphers protect IKEv2 SAs "
                             f"only")
    if esp.transform_protocol == "ah-esp":
        raise ApplyError(f"{path}.ipsecpolicy.transform_protocol",
                             "AH+ESP bundles are not supported by strongSwan")
    if esp.transform_protocol == "ah" and backend == "libipsec":
        raise ApplyError(f"{path}.ipsecpolicy.transform_protocol",
                             "this appliance's kernel has no IPsec; its userspace IPsec "
                             "(kernel-libipsec) carries ESP only")
    if esp.transform_protocol == "ah" and esp.encryption_algorithm in AEAD:
        raise ApplyError(f"{path}.ipsecpolicy.encryption_algorithm",
                             "AH authenticates only: an AEAD cipher has no use")
    if esp.encapsulation_mode != "tunnel":
        raise ApplyError(f"{path}.ipsecpolicy.encapsulation_mode",
                             "site-to-site connections protect subnets behind the gateways, "
                             "which needs tunnel mode")


def _keyword(table, value, path, what):
    try:
        return table[value]
    except KeyError:
        raise ApplyError(path, f"{value!r} is not a supported {what} (supported: "
                                   f"{', '.join(sorted(table))})") from None


def ike_proposal(connection):
    ike, path = connection.ikepolicy, f"{connection.path}.ikepolicy"
    dh = _keyword(DH_GROUPS, ike.pfs, f"{path}.pfs", "Diffie-Hellman group")
    integrity = _keyword(INTEGRITY, ike.auth_algorithm, f"{path}.auth_algorithm",
                         "integrity algorithm")
    if ike.encryption_algorithm in AEAD:  # IKEv2 only (refused earlier for IKEv1)
        if integrity == "aesxcbc":
            integrity = "aes128xcbc"
        return f"{AEAD[ike.encryption_algorithm]}-prf{integrity}-{dh}"
    cipher = _keyword(ENCRYPTION, ike.encryption_algorithm, f"{path}.encryption_algorithm",
                      "encryption algorithm")
    return f"{cipher}-{integrity}-{dh}"


def child_proposal(connection):
    """(swanctl key, proposal) for the IPsec policy."""
    esp, path = connection.ipsecpolicy, f"{connection.path}.ipsecpolicy"
    dh = _keyword(DH_GROUPS, esp.pfs, f"{path}.pfs", "Diffie-Hellman group")
    if esp.transform_protocol == "esp" and esp.encryption_algorithm in AEAD:
        return "esp_proposals", f"{AEAD[esp.encryption_algorithm]}-{dh}"
    integrity = _keyword(INTEGRITY, esp.auth_algorithm, f"{path}.auth_algorithm",
                         "integrity algorithm")
    if esp.transform_protocol == "ah":
        return "ah_proposals", f"{integrity}-{dh}"
    cipher = _keyword({**ENCRYPTION, **AEAD}, esp.encryption_algorithm,
                      f"{path}.encryption_algorithm", "encryption algorithm")
    return "esp_proposals", f"{cipher}-{integrity}-{dh}"


def _children(name, connection):
    local = tuple(str(n) for n in connection.local_subnets)
    remote = tuple(str(n) for n in connection.peer_subnets)
    if connection.ikepolicy.ike_version == "v2":
        return (Child(name, local, remote),)
    pairs = [(mine, theirs) for mine in connection.local_subnets
             for theirs in connection.peer_subnets if mine.version == theirs.version]
    if len(pairs) == 1:
        return (Child(name, (str(pairs[0][0]),), (str(pairs[0][1]),)),)
    return tuple(Child(f"{name}-{i}", (str(mine),), (str(theirs),))
                 for i, (mine, theirs) in enumerate(pairs, 1))


def _lifetime_lines(lifetime, prefix=""):
    """Rekey at 90 % of the policy's lifetime; the SA ends at the lifetime."""
    if lifetime.units == "kilobytes":
        size = lifetime.value * 1024
        return [f"{prefix}rekey_bytes = {size * 9 // 10}", f"{prefix}life_bytes = {size}",
                f"{prefix}rekey_time = 0s"]
    return [f"{prefix}rekey_time = {lifetime.value * 9 // 10}s",
            f"{prefix}life_time = {lifetime.value}s"]


def _connection_section(name, connection, local, remote_id, children):
    ike = connection.ikepolicy
    v1 = ike.ike_version == "v1"
    lines = [f"version = {1 if v1 else 2}",
             f"local_addrs = {local}",
             f"remote_addrs = {connection.peer_address}",
             f"proposals = {ike_proposal(connection)}",
             f"rekey_time = {ike.lifetime.value * 9 // 10}s",
             f"over_time = {ike.lifetime.value - ike.lifetime.value * 9 // 10}s",
             "keyingtries = 0"]
    lines.append(f"aggressive = {'yes' if ike.phase1_negotiation_mode == 'aggressive' else 'no'}"
                 if v1 else "mobike = no")
    if connection.dpd_action != "disabled":
        lines.append(f"dpd_delay = {connection.dpd_interval}s")
        if v1:
            lines.append(f"dpd_timeout = {connection.dpd_timeout}s")
    lines += _block("local", ["auth = psk", f'id = "{local}"'])
    lines += _block("remote", ["auth = psk", f'id = "{remote_id}"'])
    key, proposal = child_proposal(connection)
    child_sections = []
    for child in children:
        body = [f"local_ts = {','.join(child.local_ts)}",
                f"remote_ts = {','.join(child.remote_ts)}",
                f"{key} = {proposal}", "mode = tunnel",
                *_lifetime_lines(connection.ipsecpolicy.lifetime),
                f"start_action = {START_ACTIONS[connection.initiator]}"]
        if connection.dpd_action != "disabled":
            body.append(f"dpd_action = {DPD_ACTIONS[connection.dpd_action]}")
        child_sections += _block(child.name, body)
    lines += _block("children", child_sections)
    return _block(name, lines)


def retransmit_timeout(dpd_timeout):
    """IKEv2's first retransmission timeout so that the whole schedule is ``dpd_timeout``."""
    schedule = (RETRANSMIT_BASE ** (RETRANSMIT_TRIES + 1) - 1) / (RETRANSMIT_BASE - 1)
    return round(dpd_timeout / schedule, 3)


def route_mtu(connections, backend):
    smallest = min(c.mtu for c in connections)
    if backend == "libipsec":
        return min(smallest - LIBIPSEC_OVERHEAD, LIBIPSEC_TUN_MTU)
    return smallest


def _strongswan_conf(backend, directory, connections, ikev2_timeout):
    charon = [f"load = {PLUGINS[backend]}", "install_virtual_ip = no"]
    if ikev2_timeout is not None:
        charon += [f"retransmit_timeout = {retransmit_timeout(ikev2_timeout)}",
                   f"retransmit_base = {RETRANSMIT_BASE}",
                   f"retransmit_tries = {RETRANSMIT_TRIES}"]
    charon += _block("plugins", [
        *_block("vici", [f"socket = unix://{directory}/{RUN_DIR}/{SOCKET}"]),
        *_block("kernel-netlink", [f"mtu = {route_mtu(connections, backend)}"])])
    # level 1 never logs secrets (strongSwan logs private data at level 4 only)
    charon += _block("filelog", _block("astara", [
        f"path = {directory}/{LOG_FILE}", 'time_format = "%b %e %T"', "ike_name = yes",
        "append = yes", "flush_line = yes", "default = 1"]))
    # swanctl only talks to charon: no credential plugins needed
    lines = ["# managed by astara-router: every apply replaces this file",
             *_block("charon", charon), *_block("swanctl", ["load = random openssl"])]
    return "\n".join(lines) + "\n"


def _block(name, lines):
    return [f"{name} {{", *(f"    {line}" for line in lines), "}"]
