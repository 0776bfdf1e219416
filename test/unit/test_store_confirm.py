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


def test_a_confirmation_of_another_generation_confirms_nothing(tmp_path):
    store = Store(str(tmp_path))
    store.commit(1, ONE)
    store.commit(2, TWO, awaiting=True)
    (tmp_path / "committed" / "confirmed").write_text("1\n")  # an older confirmation
    loaded = Store(str(tmp_path)).load()
    assert (loaded.number, loaded.payload) == (3, ONE)


# -- the generations kept for a manual rollback --------------------------------------------
def test_the_generations_before_the_committed_one_are_kept_up_to_five(tmp_path):
    store = Store(str(tmp_path))
    for number in range(1, 9):
        store.commit(number, {"hostname": f"g{number}"})
    assert [g.number for g in store.generations()] == [8, 7, 6, 5, 4, 3]
    assert store.load_generation(3).payload == {"hostname": "g3"}
    assert store.load_generation(8).payload == {"hostname": "g8"}  # the committed one
    assert store.load_generation(2) is None
    # A fixed set of files overwritten in place: no file created or removed per commit.
    assert sorted(p.name for p in (tmp_path / "committed").iterdir()) == \
        [f"{slot}.json" for slot in range(7)]


def test_listing_the_generations_leaves_out_a_torn_record(tmp_path):
    store = Store(str(tmp_path))
    for number in range(1, 4):
        store.commit(number, {"hostname": f"g{number}", "domain": "x" * 100})
    full = {n: store.load_generation(n) for n in (1, 2, 3)}
    [torn] = [p for p in (tmp_path / "committed").glob("*.json")
              if b'"generation": 1,' in p.read_bytes()]
    torn.write_bytes(torn.read_bytes()[:-50])
    assert [(g.number, g.hash, g.committed_at) for g in store.generations()] == \
        [(n, full[n].hash, full[n].committed_at) for n in (3, 2)]
    assert store.load_generation(1) is None


def test_an_older_agents_files_are_moved_into_the_slots(tmp_path):
    def legacy(name, number, payload):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(json.dumps({"generation": number, "hash": f"h{number}",
                                                 "committed_at": 1.0, "payload": payload}))
    for number in range(1, 4):
        legacy(f"generations/{number}.json", number, {"hostname": f"g{number}"})
    legacy("previous.json", 3, {"hostname": "g3"})
    legacy("config.json", 4, TWO)
    (tmp_path / "confirm.json").write_text('{"generation": 4}')
    assert Store(str(tmp_path)).current().payload == TWO  # read as it is, moved by load()
    loaded = Store(str(tmp_path)).load()  # 4 awaited confirmation: back on 3's payload
    assert (loaded.number, loaded.payload) == (5, {"hostname": "g3"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["committed"]
    store = Store(str(tmp_path))
    assert [(g.number, g.hash) for g in store.generations()] == \
        [(5, "h3"), (4, "h4"), (3, "h3"), (2, "h2"), (1, "h1")]
    assert store.load_previous().number == 3 and store.awaiting() is None
