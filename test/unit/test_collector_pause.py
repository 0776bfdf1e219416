"""The engine pauses the cyclic garbage collector while pushes run, and only then."""
import gc

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


def test_an_exception_resumes_collections():
    pause = CollectorPause()
    with pytest.raises(RuntimeError):
        with pause:
            raise RuntimeError("a refused push")
    assert gc.isenabled()
