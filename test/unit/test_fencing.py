"""The agent's ownership-epoch fence (astara_router/fencing.py)."""
import json

import pytest

from astara_router.fencing import EpochFence, StaleEpoch, parse_epoch


def test_fence_admits_equal_or_newer_and_refuses_older(tmp_path):
    fence = EpochFence(str(tmp_path))
    with fence.admitted(None):  # the original orchestrator sends no epoch
        pass
    assert fence.accepted is None
    with fence.admitted(3, "orch-a"):
        pass
    with fence.admitted(3, "orch-a"):
        pass
    with pytest.raises(StaleEpoch) as refused:
        with fence.admitted(2, "orch-b"):
            raise AssertionError("a stale push must not run")
    assert refused.value.to_dict()["accepted_epoch"] == 3
    assert refused.value.to_dict()["accepted_from"] == "orch-a"
    assert json.loads((tmp_path / "epoch.json").read_text()) == {"epoch": 3,
                                                                 "orchestrator": "orch-a"}
    again = EpochFence(str(tmp_path))  # a restarted agent remembers
    with pytest.raises(StaleEpoch):
        with again.admitted(2, "orch-b"):
            pass
    with again.admitted(4, "orch-b"):
        pass
    assert (again.accepted, again.holder) == (4, "orch-b")


@pytest.mark.parametrize("raw, value", [(None, None), ("", None), ("0", 0), ("17", 17)])
def test_parse_epoch(raw, value):
    assert parse_epoch(raw) == value


@pytest.mark.parametrize("raw", ["-1", "1.5", "abc", "9" * 19])
def test_parse_epoch_refuses_non_integers(raw):
    with pytest.raises(ValueError, match="X-Astara-Epoch"):
        parse_epoch(raw)
