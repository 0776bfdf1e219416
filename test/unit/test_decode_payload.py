"""A push's body decoded in steps (model.decode_payload) is what one msgspec call gives:
the same objects in the same order, and the same error for what is not such a body."""
import json

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from astara_lab.appliance import contract_payloads
from astara_lab.synthetic import synthetic_router
from astara_router import readers
from astara_router.model import decode_payload, parse

PAYLOADS = {**contract_payloads(), "synthetic-1000": synthetic_router(networks=50,
                                                                       floating_ips=1000)}


def same_as_one_call(raw):
    expected = msgspec.json.decode(raw)
    decoded = decode_payload(raw)
    assert decoded == expected
    assert json.dumps(decoded) == json.dumps(expected)  # the order of every member too
    return decoded


@pytest.mark.parametrize("name", sorted(PAYLOADS))
def test_the_payloads_decode_to_what_one_call_gives(name):
    decoded = same_as_one_call(msgspec.json.encode(PAYLOADS[name]))
    assert decoded["networks"]


def test_reads_get_a_turn_between_members_and_every_sixteen_networks(monkeypatch):
    turns = []
    monkeypatch.setattr(readers, "let_readers_first", lambda: turns.append("network"))
    monkeypatch.setattr(parse, "let_readers_first", lambda: turns.append("member"))
    body = PAYLOADS["synthetic-1000"]
    same_as_one_call(msgspec.json.encode(body))
    assert turns.count("member") == len(body)
    assert turns.count("network") == len(body["networks"]) // 16


@pytest.mark.parametrize("raw", [
    b"",
    b"[1, 2]",
    b'"networks"',
    b'{"networks": [{"a": 1},, {"b": 2}]}',
    b'{"networks": [{"a": "\xff"}]}',  # not UTF-8, inside a network
    b'{"a": "\\ud800"}',
    b'{"networks": [{"a": 1}]} trailing',
    b'{"networks": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
])
def test_what_is_not_such_a_body_fails_as_in_one_call(raw):
    try:
        expected = ("decoded", msgspec.json.decode(raw))
    except Exception as exc:  # noqa: BLE001 - the very error is compared
        expected = ("raised", type(exc), str(exc))
    try:
        got = ("decoded", decode_payload(raw))
    except Exception as exc:  # noqa: BLE001
        got = ("raised", type(exc), str(exc))
    assert got == expected


def test_duplicate_members_keep_the_last_value_in_the_first_place():
    raw = b'{"networks": [], "a": 1, "networks": [{"x": 1}, {"x": 2}], "b": 2}'
    decoded = same_as_one_call(raw)
    assert list(decoded) == ["networks", "a", "b"]


def test_networks_that_are_not_a_list_decode_as_they_are():
    same_as_one_call(b'{"networks": {"x": [1, 2]}, "floating_ips": null}')


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
                    | st.text(), lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=5), inner, max_size=4), max_leaves=20)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(["networks", "floating_ips", "asn", "x"]), JSON),
       st.lists(st.dictionaries(st.text(max_size=5), JSON, max_size=3), max_size=40))
def test_any_object_decodes_to_what_one_call_gives(members, networks):
    same_as_one_call(msgspec.json.encode({**members, "networks": networks}))
    same_as_one_call(msgspec.json.encode(members))
