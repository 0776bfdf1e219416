"""Commit-confirm on disk: an agent that starts while a generation awaits confirmation
comes back on the last confirmed one; the generations kept for a manual rollback."""
import json

from astara_router.store import Store

ONE, TWO, THREE = ({"hostname": name} for name in ("one", "two", "three"))


def test_an_unconfirmed_generation_is_not_what_a_restart_comes_back_on(tmp_path):
    store = Store(str(tmp_path))
    store.commit(1, ONE)
    store.commit(2, TWO, awaiting=True)
    assert store.awaiting() == 2
    reloaded = Store(str(tmp_path)).load()
    assert (reloaded.number, reloaded.payload) == (3, ONE)
    assert store.awaiting() is None
    again = Store(str(tmp_path)).load()  # the revert is itself committed
    assert (again.number, again.payload) == (3, ONE)


def test_a_confirmed_generation_stays(tmp_path):
    store = Store(str(tmp_path))
    store.commit(1, ONE)
    store.commit(2, TWO, awaiting=True)
    store.confirm()
    loaded = Store(str(tmp_path)).load()
    assert (loaded.number, loaded.payload) == (2, TWO)
    assert store.load_previous().payload == ONE


def test_a_second_unconfirmed_push_keeps_the_last_confirmed_one(tmp_path):
    store = Store(str(tmp_path))
    store.commit(1, ONE)
    store.commit(2, TWO, awaiting=True)
    store.commit(3, THREE, awaiting=True)
    assert store.load_previous().payload == ONE
    loaded = Store(str(tmp_path)).load()
    assert (loaded.number, loaded.payload) == (4, ONE)
    # Keeping generations for a manual rollback leaves commit-confirm alone: both
    # unconfirmed ones are kept, and so is the revert to generation 1's payload.
    assert [(g.number, store.load_generation(g.number).payload)
            for g in store.generations()] == [(4, ONE), (3, THREE), (2, TWO), (1, ONE)]


def test_a_plain_push_confirms(tmp_path):
    store = Store(str(tmp_path))
    store.commit(1, ONE)
    store.commit(2, TWO, awaiting=True)
    store.commit(3, THREE)
    assert store.awaiting() is None
    loaded = Store(str(tmp_path)).load()
    assert (loaded.number, loaded.payload) == (3, THREE)
    assert store.load_previous().payload == TWO


def test_a_marker_for_a_generation_never_committed_is_ignored(tmp_path):
    store = Store(str(tmp_path))
    store.commit(1, ONE)
    (tmp_path / "confirm.json").write_text('{"generation": 2}')  # crash before config.json
    loaded = Store(str(tmp_path)).load()
    assert (loaded.number, loaded.payload) == (1, ONE)


# -- the generations kept for a manual rollback --------------------------------------------
def test_the_generations_before_the_committed_one_are_kept_up_to_five(tmp_path):
    store = Store(str(tmp_path))
    for number in range(1, 9):
        store.commit(number, {"hostname": f"g{number}"})
    assert [g.number for g in store.generations()] == [8, 7, 6, 5, 4, 3]
    assert sorted(p.name for p in (tmp_path / "generations").iterdir()) == \
        ["3.json", "4.json", "5.json", "6.json", "7.json"]
    assert store.load_generation(3).payload == {"hostname": "g3"}
    assert store.load_generation(8).payload == {"hostname": "g8"}  # the committed one
    assert store.load_generation(2) is None
    # Hard links of what config.json was: no copy of a megabyte payload per commit.
    assert (tmp_path / "generations" / "7.json").stat().st_nlink == 2  # and previous.json


def test_a_generation_that_cannot_be_kept_does_not_stop_the_commit(tmp_path):
    store = Store(str(tmp_path))
    store.commit(1, ONE)
    (tmp_path / "generations").write_text("not a directory")
    store.commit(2, TWO)
    assert Store(str(tmp_path)).load().payload == TWO
    assert [g.number for g in store.generations()] == [2]


def test_listing_the_generations_reads_their_headers_only(tmp_path):
    store = Store(str(tmp_path))
    for number in range(1, 4):
        store.commit(number, {"hostname": f"g{number}", "domain": "x" * 100})
    full = {n: store.load_generation(n) for n in (1, 2, 3)}
    kept = tmp_path / "generations" / "1.json"
    kept.write_bytes(kept.read_bytes()[:-50])  # a payload no parser would take
    assert [(g.number, g.hash, g.committed_at) for g in store.generations()] == \
        [(n, full[n].hash, full[n].committed_at) for n in (3, 2, 1)]
    # A file whose header is not first (not written by commit()) is read whole.
    (tmp_path / "generations" / "2.json").write_text(json.dumps(
        {"payload": {"hostname": "g2"}, "generation": 2, "hash": full[2].hash}))
    assert [(g.number, g.hash) for g in store.generations()][1] == (2, full[2].hash)
