"""Event queue coalescing: delete wins, rebuild absorbs create/update, create absorbs
update, polls drop behind (and in front of) real work, identical neighbours merge."""
import pytest

from orchestrator_lite.events import (CLUSTER_REBUILD, CREATE, DELETE, MANAGE, POLL, REBUILD,
                                      UPDATE, Event, EventQueue, ResourceRef, merge)


def drain(*actions):
    queue = EventQueue("test")
    for action in actions:
        queue.push(action)
    popped = []
    while True:
        action = queue.pop()
        if action is None:
            return popped
        popped.append(action)


@pytest.mark.parametrize("actions, expected", [
    ((), []),
    ((POLL,), [POLL]),
    ((POLL, POLL, POLL), [POLL]),
    # delete wins, wherever it is
    ((CREATE, UPDATE, DELETE), [DELETE]),
    ((DELETE, CREATE), [DELETE]),
    ((REBUILD, DELETE, POLL), [DELETE]),
    # polls drop behind real work, and in front of it
    ((UPDATE, POLL), [UPDATE]),
    ((POLL, UPDATE), [UPDATE]),
    ((POLL, UPDATE, POLL, POLL), [UPDATE]),
    # create absorbs update (both orders)
    ((CREATE, UPDATE, UPDATE), [CREATE]),
    ((UPDATE, CREATE), [CREATE]),
    # rebuild absorbs create/update/cluster_rebuild/manage next to it
    ((UPDATE, REBUILD), [REBUILD]),
    ((CREATE, REBUILD, UPDATE), [REBUILD]),
    ((CLUSTER_REBUILD, REBUILD), [REBUILD]),
    ((MANAGE, REBUILD), [REBUILD]),
    # manage (clear error + push) absorbs create/update
    ((UPDATE, MANAGE), [MANAGE]),
    ((MANAGE, UPDATE), [MANAGE]),
    # identical neighbours merge; merging stops at the first action that does not merge
    ((UPDATE, UPDATE), [UPDATE]),
    ((UPDATE, CLUSTER_REBUILD, UPDATE), [UPDATE, CLUSTER_REBUILD, UPDATE]),
])
def test_coalescing(actions, expected):
    assert drain(*actions) == expected


def test_merge_is_none_for_unrelated_actions():
    assert merge(UPDATE, CLUSTER_REBUILD) is None
    assert merge(MANAGE, CLUSTER_REBUILD) is None


def test_event_rejects_unknown_action():
    with pytest.raises(ValueError):
        Event(ResourceRef("router", "r1"), "explode")


def test_resource_ref_identity_ignores_tenant():
    assert ResourceRef("router", "r1", "t1") == ResourceRef("router", "r1", "t2")
    assert ResourceRef("router", "r1").key == ("router", "r1")
