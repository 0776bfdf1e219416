"""Commit-confirm on disk: an agent that starts while a generation awaits confirmation
comes back on the last confirmed one."""
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
