"""The engine pauses the cyclic garbage collector while pushes run, and only then; what a
push leaves alive is frozen (no later collection walks it), the garbage before it collected."""
import gc
import weakref

import pytest

from astara_router.engine import CollectorPause


@pytest.fixture(autouse=True)
def collector_enabled():
    gc.enable()
    yield
    gc.enable()


def test_collections_resume_when_the_last_of_overlapping_pushes_ends():
    pause = CollectorPause()
    first, second = pause, pause  # two pushes (threads) that overlap
    first.__enter__()
    assert not gc.isenabled()
    second.__enter__()
    first.__exit__(None, None, None)
    assert not gc.isenabled()  # the second push still runs
    second.__exit__(None, None, None)
    assert gc.isenabled()


def test_a_collector_disabled_before_stays_disabled():
    gc.disable()
    pause = CollectorPause()
    with pause:
        assert not gc.isenabled()
    assert not gc.isenabled()


def test_an_exception_resumes_collections_without_freezing():
    pause = CollectorPause()
    alive = [Node() for _ in range(1000)]  # what a freeze would move into the permanent generation
    frozen = gc.get_freeze_count()
    with pytest.raises(RuntimeError):
        with pause:
            raise RuntimeError("a refused push")
    assert gc.isenabled()
    # Not equality: a frozen object that dies meanwhile (reference counting) leaves the
    # permanent generation, so the count may drop; a freeze would add at least ``alive``.
    assert gc.get_freeze_count() <= frozen, "a refused push froze what was alive"
    assert len(alive) == 1000


class Node:
    pass


def garbage_cycle():
    """A cycle nothing refers to (as reads may leave): only the collector frees it."""
    node = Node()
    node.self = node
    return weakref.ref(node)


def test_a_push_freezes_what_it_leaves_alive_after_collecting_the_earlier_garbage():
    gc.collect()
    left_by_reads = garbage_cycle()
    frozen = gc.get_freeze_count()
    try:
        with CollectorPause():
            kept = [Node() for _ in range(100)]  # the new generation, say
        assert left_by_reads() is None  # collected as the push began, not frozen
        assert gc.get_freeze_count() >= frozen + len(kept)
        assert gc.isenabled()
    finally:
        gc.unfreeze()

