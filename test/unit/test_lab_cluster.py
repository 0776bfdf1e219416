"""astara_lab.cluster's pure parts: which member's view of a resource the lab shows."""
import types

from astara_lab.cluster import Cluster, from_owner


class MemberApi:
    """What from_owner needs of an AdminApi: the member's full view of a resource."""

    def __init__(self, identity):
        self.identity = identity

    def resource(self, resource_id):
        return {"id": resource_id, "owner": self.identity, "local": True, "instances": 1}


APIS = {"orch-1": MemberApi("orch-1"), "orch-2": MemberApi("orch-2")}


def test_from_owner_asks_the_owner_when_the_answer_is_not_local():
    row = {"id": "r1", "owner": "orch-2", "local": False, "instances": None}
    assert from_owner(row, APIS) == {"id": "r1", "owner": "orch-2", "local": True,
                                     "instances": 1}


def test_from_owner_keeps_a_local_answer_and_one_without_a_known_owner():
    local = {"id": "r1", "owner": "orch-1", "local": True, "instances": 2}
    assert from_owner(local, APIS) is local
    for owner in (None, "orch-9"):
        row = {"id": "r1", "owner": owner, "local": False, "instances": 0}
        assert from_owner(row, APIS) is row


def test_each_members_ini_names_its_admin_port(tmp_path):
    ctl = types.SimpleNamespace(name="lab-ctl")
    cluster = Cluster("lab-", "lab-fabric", ctl, tmp_path, count=3, backend=None,
                      standin=True)
    cluster.write_configs()
    ports = [cluster.members[identity].admin.http.port for identity in cluster.members]
    assert ports == [Cluster.admin_port(Cluster.index(identity))
                     for identity in cluster.members]
    assert len(set(ports)) == 3
