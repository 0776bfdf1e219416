"""``engine.holds_secret`` with an earlier payload that names no secret searches only what
changed: it must answer exactly as a search of the whole body, whatever the change."""
import json
import random

import pytest

from astara_lab.synthetic import synthetic_router
from astara_router.engine import SECRET_KEY, SECRET_KEYS, holds_secret

BASE = json.dumps(synthetic_router(4, 200)).encode()
KEYS = [k.encode() for k in sorted(SECRET_KEYS)] + [b"pskx", b"xpsk", b"secre", b"Psk"]

BLOCK = 4096  # long runs of filler and spaces around the edits


def edit(rng, body):
    """``body`` with a few bytes removed and a key, a quote, a colon, spaces or filler put
    in their place, somewhere."""
    new = bytearray(body)
    at = rng.randrange(0, len(new) + 1)
    if rng.random() < 0.3:
        del new[at:at + rng.randrange(0, 40)]
    new[at:at] = rng.choice([
        b'"%s"%s:' % (rng.choice(KEYS), b" \n\t"[:rng.randrange(0, 4)]), b'"', b":",
        b" " * rng.randrange(1, 9), rng.choice(KEYS), b"x" * rng.randrange(0, 3 * BLOCK)])
    return bytes(new)


@pytest.mark.parametrize("seed", range(20))
def test_searching_what_changed_answers_as_searching_everything(seed):
    rng = random.Random(seed)
    for _ in range(100):
        old = BASE[:rng.randrange(0, len(BASE))]
        if SECRET_KEY.search(old):
            continue
        new = edit(rng, old)
        for _ in range(rng.randrange(0, 3)):
            new = edit(rng, new)
        assert holds_secret(new, old) == (SECRET_KEY.search(new) is not None)
        assert holds_secret(new, memoryview(old)) == holds_secret(new)


def test_a_colon_after_many_spaces_completes_a_key_before_them():
    spaces = b" " * (3 * BLOCK)
    old = b'{"a": 1, "psk"' + spaces + b' 1}'
    new = b'{"a": 1, "psk"' + spaces + b': 1}'
    assert not holds_secret(old) and holds_secret(new, old)


def test_a_floating_ip_added_to_a_clean_body_is_clean():
    grown = synthetic_router(4, 201)
    assert not holds_secret(json.dumps(grown).encode(), BASE)
    grown["services"] = {"router": {"vpn": [{"psk": "x"}]}}
    assert holds_secret(json.dumps(grown).encode(), BASE)
