"""The activity history (astara_router/history.py): what each result means, the ring's
bound, and the log context an activity binds while it runs."""
import logging

import pytest

from astara_router import logs
from astara_router.errors import ApplyError
from astara_router.history import History
from astara_router.model import PayloadError
from astara_router.model.errors import FieldError


def run(history, origin="push", previous=3, transaction=None, finish=None, error=None):
    with history.activity(origin, "req-x", previous) as activity:
        if transaction is not None:
            history.transaction(*transaction)
        if error is not None:
            raise error
        if finish is not None:
            activity.finish(*finish)
    return history.entries()[-1]


def test_results():
    history = History()
    applied = run(history, transaction=(True, {"netlink": 0.25}, 4), finish=(4, 7))
    assert (applied["result"], applied["previous_generation"], applied["generation"],
            applied["changes"], applied["subsystem_seconds"]) == \
        ("applied", 3, 4, 7, {"netlink": 0.25})
    repaired = run(history, "reconcile", transaction=(True, {}, 3), finish=(3, 2))
    assert (repaired["result"], repaired["generation"]) == ("applied", 3)
    identical = run(history, finish=(3, 0))  # the fast path: no transaction ran
    assert (identical["result"], identical["generation"], identical["transaction"]) == \
        ("unchanged", 3, False)
    with pytest.raises(PayloadError):
        run(history, error=PayloadError([FieldError("hostname", "too long")]))
    refused = history.entries()[-1]
    assert (refused["result"], refused["status"], refused["generation"]) == \
        ("refused", 422, 3)
    assert "hostname" in refused["error"]
    with pytest.raises(ApplyError):
        run(history, transaction=(False, {"netlink": 0.1}), error=ApplyError("", "boom", 500))
    failed = history.entries()[-1]
    assert (failed["result"], failed["status"], failed["error"], failed["transaction"]) == \
        ("failed", 500, "boom", False)


def test_the_ring_keeps_the_newest():
    history = History(size=3)
    for generation in range(1, 6):
        run(history, previous=generation - 1, transaction=(True, {}, generation),
            finish=(generation, 1))
    assert [e["generation"] for e in history.entries()] == [3, 4, 5]
    assert [e["generation"] for e in history.entries(limit=2)] == [4, 5]


def test_log_lines_inside_carry_the_request_id_and_the_new_generation(caplog):
    history = History()
    seen = []

    class Spy(logging.Handler):
        def emit(self, record):
            seen.append((record.getMessage(), logs.current_fields()))

    spy = Spy()
    caplog.set_level(logging.INFO, logger="astara_router")
    logger = logging.getLogger("astara_router")
    logger.addHandler(spy)
    try:
        with history.activity("push", "req-42", 1) as activity:
            logger.info("before the commit")
            history.transaction(True, {}, 2)
            logger.info("after the commit")
            activity.finish(2, 1)
    finally:
        logger.removeHandler(spy)
    assert seen[0] == ("before the commit", {"request_id": "req-42", "generation": 1})
    assert seen[1] == ("after the commit", {"request_id": "req-42", "generation": 2})
    assert seen[2][0] == "push: applied in %.3f s, generation 1 -> 2, 1 changes" % \
        history.entries()[-1]["seconds"]
    assert logs.current_fields() == {}


def test_the_detail_ends_the_line(caplog):
    caplog.set_level(logging.INFO, logger="astara_router.history")
    history = History()
    with history.activity("push", "req-7", 4, "from orchestrator=orch-2 epoch=7") as activity:
        history.transaction(True, {}, 5)
        activity.finish(5, 3)
    [line] = [r.getMessage() for r in caplog.records]
    assert line == ("push: applied in %.3f s, generation 4 -> 5, 3 changes (from "
                    "orchestrator=orch-2 epoch=7)" % history.entries()[-1]["seconds"])
