"""geN numbering by MAC and crash-safe persistence (pure file I/O, no netlink)."""
import json
import os

import pytest

from astara_router.naming import InterfaceNames, Nic, natural_key
from astara_router.store import Store, payload_hash


def nic(index, name, mac):
    return Nic(index, name, mac, 1500, True, ())


def test_natural_order():
    names = ["eth10", "eth2", "eth1", "ens3", "ens10", "eth0"]
    assert sorted(names, key=natural_key) == ["ens3", "ens10", "eth0", "eth1", "eth2", "eth10"]


def test_first_boot_numbers_in_natural_kernel_order(tmp_path):
    nics = [nic(i, f"eth{i}", f"02:00:00:00:00:{i:02x}") for i in range(12)]
    mapping = InterfaceNames(str(tmp_path / "m.json")).assign(list(reversed(nics)))
    assert mapping["ge10"].kernel_name == "eth10"
    assert mapping["ge2"].kernel_name == "eth2"
    assert list(mapping) == [f"ge{i}" for i in range(12)]


def test_predictable_names(tmp_path):
    nics = [nic(1, "ens10", "02:00:00:00:00:0a"), nic(2, "ens3", "02:00:00:00:00:03"),
            nic(3, "ens4", "02:00:00:00:00:04")]
    mapping = InterfaceNames(str(tmp_path / "m.json")).assign(nics)
    assert [mapping[g].kernel_name for g in ("ge0", "ge1", "ge2")] == ["ens3", "ens4", "ens10"]


def test_names_stick_to_macs_across_restarts_and_unplug(tmp_path):
    path = str(tmp_path / "m.json")
    nics = [nic(i, f"eth{i}", f"02:00:00:00:00:{i:02x}") for i in range(4)]
    InterfaceNames(path).assign(nics)
    # restart with eth2 unplugged and the kernel renaming eth3 to eth2
    survivors = [nics[0], nics[1], nic(9, "eth2", nics[3].mac)]
    mapping = InterfaceNames(path).assign(survivors)
    assert mapping["ge3"].mac == nics[3].mac and "ge2" not in mapping
    # a new NIC takes the lowest free number
    mapping = InterfaceNames(path).assign(survivors + [nic(10, "eth3", "02:00:00:00:00:77")])
    assert mapping["ge2"].mac == "02:00:00:00:00:77"


def test_store_commit_and_pending(tmp_path):
    store = Store(str(tmp_path / "state"))
    assert store.load() is None
    generation = store.commit(1, {"b": 1, "a": [1, 2]})
    loaded = store.load()
    assert loaded.number == 1 and loaded.payload == {"b": 1, "a": [1, 2]}
    assert loaded.hash == generation.hash == payload_hash({"a": [1, 2], "b": 1})
    slots = sorted(os.listdir(store.slots_dir))
    assert {oct(os.stat(os.path.join(store.slots_dir, s)).st_mode & 0o777)
            for s in slots} == {"0o600"}
    store.write_pending(b'{"x": 1}')
    assert store.load_pending() == {"x": 1}
    store.clear_pending()
    assert store.load_pending() is None
    assert not [p for p in os.listdir(store.state_dir) if p.startswith(".tmp-")]
    assert json.load(open(store.slot_path(0)))["generation"] == 1  # a JSON document


def test_hash_ignores_key_order_and_spacing():
    assert payload_hash(json.loads('{"a": 1, "b": [1, {"c": 2}]}')) == \
        payload_hash(json.loads('{"b":[1,{"c":2}],"a":1}'))
    assert payload_hash({"a": 1}) != payload_hash({"a": 2})


def test_committed_view_redacts_secrets():
    from astara_lab.appliance import contract_payloads
    from astara_router.engine import REDACTED, Committed
    payload = contract_payloads()["router-vpn"]
    view = Committed(3, json.dumps(payload).encode(), None, "h").view()
    connection = view["configuration"]["vpn"]["ipsec"][0]["ipsec_connections"][0]
    assert connection["psk"] == REDACTED and "Xq7" not in str(view)
    assert payload["vpn"]["ipsec"][0]["ipsec_connections"][0]["psk"] == "Xq7-branch1-PSK-2016"
    assert (view["generation"], view["hash"]) == (3, "h")
    plain = contract_payloads()["router-basic"]  # nothing to redact: the bytes as pushed
    assert Committed(1, json.dumps(plain).encode(), None, "h").view()["configuration"] == plain


@pytest.mark.parametrize("name", ["router-basic", "router-vpn"])
def test_the_push_answer_is_the_view_with_the_change_count(name):
    """``Committed.answer``: from the pushed bytes before the view is rendered (nothing to
    redact), from the rendered view after, and redacted when a secret is named: each the
    view with ``changes`` first."""
    from astara_lab.appliance import contract_payloads
    from astara_router.engine import Committed, holds_secret
    raw = b" " + json.dumps(contract_payloads()[name]).encode() + b"\n"
    fresh = Committed(4, raw, None, "h", secrets=holds_secret(raw))
    before = b"".join(fresh.answer(7))
    view = Committed(4, raw, None, "h").view()
    assert json.loads(before) == {"changes": 7, **view}
    fresh.view_json  # noqa: B018 - rendered (render_reads), the bytes embedded in it
    assert b"".join(fresh.answer(7)) == before
    assert before.endswith(b', "generation": 4, "hash": "h"}\n') and before.count(b"\n") == 1
