"""The store after a crash or a power loss: each commit is one in-place write of a
checksummed record into a slot file, synced once (store.py). What a power loss can leave
of that write — any mix of the new record's and the old record's sectors, cut at any
length — is tried here on the real files: a restart comes back on the new generation
when all of it reached the disk, else on the last one committed before it; never on a
mix. And the agent's own process killed in the middle of commits leaves a store that
loads the last acknowledged generation or the one being written."""
import json
import os
import random
import signal
import subprocess
import sys
import textwrap

import pytest

from astara_router.store import CHECK_LENGTH, SLOTS, Store

SECTOR = 512


def payload(number, size=6000):
    return {"hostname": f"g{number}", "floating_ips": [
        {"floating_ip": f"198.18.{i // 250}.{i % 250 + 1}", "fixed_ip": f"10.{number}.0.9"}
        for i in range(size // 60)]}


def committed(tmp_path, count):
    store = Store(str(tmp_path))
    for number in range(1, count + 1):
        store.commit(number, payload(number))
    return store


def slot_of(store, number):
    [path] = [store.slot_path(s) for s in range(SLOTS)
              if b'"generation": %d,' % number in open(store.slot_path(s), "rb").read(200)]
    return path


def torn(old, new, rng):
    """What a power loss in the middle of overwriting ``old`` with ``new`` may leave: each
    sector either's, the file's length either's or a cut in between."""
    length = rng.choice([len(old), len(new), rng.randrange(0, max(len(old), len(new)) + 1)])
    share = rng.choice([0.0, 0.5, 0.95, 1.0])  # of the sectors that reached the disk
    out = bytearray()
    for start in range(0, length, SECTOR):
        stop = min(start + SECTOR, length)
        chunk = (new if rng.random() < share else old)[start:stop]
        out += chunk + bytes(stop - start - len(chunk))  # beyond the end: a hole, zeros
    return bytes(out)


@pytest.mark.parametrize("seed", range(40))
def test_a_torn_commit_comes_back_on_the_generation_before_it(tmp_path, seed):
    rng = random.Random(seed)
    count = rng.randrange(1, 12)
    store = committed(tmp_path, count)
    # The next commit overwrites the slot it will choose: record what it held first.
    before = {store.slot_path(s): open(store.slot_path(s), "rb").read() for s in range(SLOTS)}
    store.commit(count + 1, payload(count + 1))
    path = slot_of(store, count + 1)
    new = open(path, "rb").read()
    damaged = torn(before[path], new, rng)
    with open(path, "wb") as handle:
        handle.write(damaged)
    loaded = Store(str(tmp_path)).load()
    record = CHECK_LENGTH + int(new[20:30])  # the spaces after it, if any, are not read
    expected = count + 1 if damaged[:record] == new[:record] else count
    assert (loaded.number, loaded.payload) == (expected, payload(expected))
    assert [g.number for g in Store(str(tmp_path)).generations()][0] == expected
    # The next commit goes on from there, and a restart comes back on it.
    Store(str(tmp_path)).commit(expected + 1, payload(expected + 2))
    again = Store(str(tmp_path)).load()
    assert (again.number, again.payload) == (expected + 1, payload(expected + 2))


@pytest.mark.parametrize("seed", range(20))
def test_a_shorter_record_keeps_the_file_and_torn_comes_back_on_the_generation_before(
        tmp_path, seed):
    """A record shorter than the one its slot held is followed by spaces up to the file's
    size (one JSON document still; no new length to sync), or truncated when the file was
    over twice as long; torn, it counts only when the record itself reached the disk."""
    rng = random.Random(seed)
    store = Store(str(tmp_path))
    for number in range(1, SLOTS + 1):
        store.commit(number, payload(number, 9000))
    before = {store.slot_path(s): open(store.slot_path(s), "rb").read() for s in range(SLOTS)}
    smaller = payload(SLOTS + 1, rng.choice([3000, 6000, 8000]))
    store.commit(SLOTS + 1, smaller)
    path = slot_of(store, SLOTS + 1)
    new = open(path, "rb").read()
    record = CHECK_LENGTH + int(new[20:30])
    assert len(new) == (len(before[path]) if 2 * record >= len(before[path]) else record)
    assert new[record:].strip() == b"" and json.loads(new)["generation"] == SLOTS + 1
    damaged = torn(before[path], new, rng)
    with open(path, "wb") as handle:
        handle.write(damaged)
    loaded = Store(str(tmp_path)).load()
    expected = SLOTS + 1 if damaged[:record] == new[:record] else SLOTS
    assert loaded.number == expected
    assert loaded.payload == (smaller if expected > SLOTS else payload(SLOTS, 9000))


def test_a_flipped_byte_anywhere_in_the_newest_record_discards_it(tmp_path):
    store = committed(tmp_path, 3)
    path = slot_of(store, 3)
    good = open(path, "rb").read()
    for offset in (0, 12, 25, 40, len(good) // 2, len(good) - 1):
        with open(path, "wb") as handle:
            handle.write(good[:offset] + bytes([good[offset] ^ 0x20]) + good[offset + 1:])
        assert Store(str(tmp_path)).load().number == 2, offset
    with open(path, "wb") as handle:
        handle.write(good + b"trailing bytes of a longer record")  # a cut-short truncate
    assert Store(str(tmp_path)).load().number == 3


def test_a_failed_commit_leaves_no_record_of_its_generation(tmp_path):
    store = committed(tmp_path, 2)
    target = store._victim(store._headers(), store._newest(), 2)
    os.unlink(store.slot_path(target))
    os.mkdir(store.slot_path(target))  # writing it fails
    with pytest.raises(OSError):
        store.commit(3, payload(3))
    assert Store(str(tmp_path)).load().number == 2


WRITER = textwrap.dedent("""
    import sys
    from astara_router.store import Store
    store = Store(sys.argv[1])
    number = int(sys.argv[2])
    while True:
        number += 1
        store.commit(number, {"hostname": f"g{number}", "filler": "x" * (number % 7 * 40000)})
        print(number, flush=True)  # acknowledged: the commit returned
""")


def test_a_process_killed_while_committing_leaves_the_last_acknowledged_generation(tmp_path):
    rng = random.Random(7)
    acknowledged = 0
    for _ in range(8):
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path),
                                   str(acknowledged)], stdout=subprocess.PIPE, text=True)
        lines = [writer.stdout.readline() for _ in range(rng.randrange(1, 6))]
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        # The writer may have gone on committing (and printing) before the kill landed:
        # the last line it printed is the last acknowledged generation.
        acknowledged = int((lines + writer.stdout.read().splitlines())[-1])
        writer.stdout.close()
        loaded = Store(str(tmp_path)).load()
        # The last acknowledged one, or the one written when the kill came (complete).
        assert loaded.number in (acknowledged, acknowledged + 1)
        assert loaded.payload["hostname"] == f"g{loaded.number}"
        acknowledged = loaded.number
