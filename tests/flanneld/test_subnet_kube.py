"""The Kubernetes subnet manager against a fake API (our KubeApi seam); the informer is fed directly."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from ipaddress import IPv4Network
from typing import Any

import pytest

from flanneld.config import NetworkConfig
from flanneld.lease import Lease
from flanneld.subnet.base import SubnetError
from flanneld.subnet.kube import ANNOTATION_PREFIX, KubeSubnetManager, lease_from_node, own_annotations
from podnet.api.client import ApiError, Resource, WatchEvent

A = ANNOTATION_PREFIX
CFG = NetworkConfig.parse(b'{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}')
VX = {"VNI": 1, "VtepMAC": "aa:bb:cc:00:00:01"}
NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def node(name: str, pod_cidr: str | None = None, annotations: dict[str, str] | None = None,
         rv: int = 1) -> dict[str, Any]:
    obj: dict[str, Any] = {"metadata": {"name": name, "resourceVersion": str(rv),
                                        "annotations": dict(annotations or {})}, "spec": {}, "status": {}}
    if pod_cidr:
        obj["spec"]["podCIDR"] = pod_cidr
    return obj


class FakeApi:
    """Nodes in a dict; strategic patches of annotations and status conditions (merge key type)."""

    def __init__(self, *nodes: dict[str, Any]) -> None:
        self.nodes = {n["metadata"]["name"]: n for n in nodes}
        self.rv = 10
        self.patches: list[tuple[str, str | None, Any]] = []

    def get(self, res: Resource, name: str, namespace: str | None = None) -> dict[str, Any]:
        if name not in self.nodes:
            raise ApiError({"code": 404, "reason": "NotFound", "message": f'nodes "{name}" not found'})
        return copy.deepcopy(self.nodes[name])

    def patch(self, res: Resource, name: str, patch: Any, namespace: str | None = None, *,
              patch_type: str = "merge", subresource: str | None = None, field_manager: str | None = None,
              force: bool | None = None) -> dict[str, Any]:
        assert patch_type == "strategic"
        self.patches.append((name, subresource, patch))
        obj = self.nodes[name]
        obj["metadata"]["annotations"].update(patch.get("metadata", {}).get("annotations", {}))
        for cond in patch.get("status", {}).get("conditions", []):
            conds = [c for c in obj["status"].get("conditions", []) if c["type"] != cond["type"]]
            obj["status"]["conditions"] = [*conds, cond]
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        return copy.deepcopy(obj)

    def list_all(self, res: Resource, namespace: str | None = None, **kw: Any) -> tuple[list[Any], str]:
        return [copy.deepcopy(n) for n in self.nodes.values()], str(self.rv)

    def watch(self, *args: Any, **kw: Any) -> Any:
        raise AssertionError("these tests feed the informer directly")


def mgr_for(api: FakeApi, name: str = "n1") -> KubeSubnetManager:
    return KubeSubnetManager(api, name, CFG, clock=lambda: NOW)


def test_acquire_publishes_annotations_and_condition() -> None:
    api = FakeApi(node("n1", "10.244.3.0/24"))
    lease = mgr_for(api).acquire("192.168.1.1", "vxlan", VX, IPv4Network("10.244.9.0/24"))
    assert lease == Lease(IPv4Network("10.244.3.0/24"), "192.168.1.1", "vxlan", VX, None)
    ann = api.nodes["n1"]["metadata"]["annotations"]
    assert ann == {f"{A}/backend-data": json.dumps(VX, separators=(",", ":")), f"{A}/backend-type": "vxlan",
                   f"{A}/kube-subnet-manager": "true", f"{A}/public-ip": "192.168.1.1"}
    assert api.nodes["n1"]["status"]["conditions"] == [{
        "type": "NetworkUnavailable", "status": "False", "reason": "FlannelIsUp",
        "message": "Flannel is running on this node", "lastTransitionTime": "2026-01-02T03:04:05Z",
        "lastHeartbeatTime": "2026-01-02T03:04:05Z"}]
    assert [(n, sub) for n, sub, _ in api.patches] == [("n1", None), ("n1", "status")]


def test_acquire_again_writes_nothing_when_already_published() -> None:
    api = FakeApi(node("n1", "10.244.3.0/24"))
    mgr_for(api).acquire("192.168.1.1", "vxlan", VX, None)
    mgr_for(api).acquire("192.168.1.1", "vxlan", VX, None)
    assert len(api.patches) == 2


def test_public_ip_overwrite_wins() -> None:
    api = FakeApi(node("n1", "10.244.3.0/24", {f"{A}/public-ip-overwrite": "203.0.113.7"}))
    lease = mgr_for(api).acquire("192.168.1.1", "vxlan", VX, None)
    assert lease.public_ip == "203.0.113.7"
    assert api.nodes["n1"]["metadata"]["annotations"][f"{A}/public-ip"] == "203.0.113.7"


@pytest.mark.parametrize(("nodes", "message"), [
    ([node("n1")], 'node "n1" pod cidr not assigned'),
    ([node("n1", "10.99.0.0/24")], "not inside Network"),
    ([], "not found"),
])
def test_acquire_errors(nodes: list[dict[str, Any]], message: str) -> None:
    with pytest.raises(SubnetError, match=message):
        mgr_for(FakeApi(*nodes)).acquire("192.168.1.1", "vxlan", VX, None)


def test_set_node_network_unavailable_off() -> None:
    api = FakeApi(node("n1", "10.244.3.0/24"))
    mgr = KubeSubnetManager(api, "n1", CFG, set_node_network_unavailable=False)
    mgr.acquire("1.1.1.1", "host-gw", {}, None)
    assert [sub for _, sub, _ in api.patches] == [None]


def test_renew_reasserts_edited_annotations() -> None:
    api = FakeApi(node("n1", "10.244.3.0/24"))
    mgr = mgr_for(api)
    lease = mgr.acquire("192.168.1.1", "vxlan", VX, None)
    api.nodes["n1"]["metadata"]["annotations"][f"{A}/public-ip"] = "6.6.6.6"
    assert mgr.renew(lease) == lease
    assert api.nodes["n1"]["metadata"]["annotations"][f"{A}/public-ip"] == "192.168.1.1"


@pytest.mark.parametrize(("ann", "cidr", "want"), [
    (own_annotations("10.0.0.2", "vxlan", VX), "10.244.4.0/24",
     Lease(IPv4Network("10.244.4.0/24"), "10.0.0.2", "vxlan", VX, None)),
    (own_annotations("10.0.0.2", "host-gw", {}), "10.244.4.0/24",
     Lease(IPv4Network("10.244.4.0/24"), "10.0.0.2", "host-gw", {}, None)),
    (own_annotations("10.0.0.2", "vxlan", VX), None, None),  # no podCIDR yet
    ({**own_annotations("10.0.0.2", "vxlan", VX), f"{A}/kube-subnet-manager": "false"}, "10.244.4.0/24",
     None),
    ({**own_annotations("10.0.0.2", "vxlan", VX), f"{A}/backend-data": "{"}, "10.244.4.0/24", None),
    ({}, "10.244.4.0/24", None),  # not a flannel node
])
def test_lease_from_node(ann: dict[str, str], cidr: str | None, want: Lease | None) -> None:
    assert lease_from_node(node("x", cidr, ann)) == want


def test_leases_and_change_notifications_from_the_informer() -> None:
    api = FakeApi(node("n1", "10.244.3.0/24"))
    mgr = mgr_for(api)
    calls: list[int] = []
    mgr._on_change = lambda: calls.append(1)
    peer = node("n2", "10.244.4.0/24", own_annotations("10.0.0.2", "vxlan", VX), rv=5)
    bare = node("n3", None, {}, rv=5)
    mgr.informer.replace([peer, bare], "5")
    assert set(mgr.leases()) == {IPv4Network("10.244.4.0/24")} and len(calls) == 1
    heartbeat = copy.deepcopy(peer)
    heartbeat["metadata"]["resourceVersion"] = "6"
    heartbeat["status"]["conditions"] = [{"type": "Ready", "status": "True"}]
    mgr.informer.apply_event(WatchEvent("MODIFIED", heartbeat))
    mgr.informer.apply_event(WatchEvent("MODIFIED", {**bare, "metadata": {**bare["metadata"],
                                                                          "resourceVersion": "7"}}))
    assert len(calls) == 1  # neither changed a lease
    moved = copy.deepcopy(heartbeat)
    moved["metadata"]["annotations"][f"{A}/public-ip"] = "10.0.0.22"
    moved["metadata"]["resourceVersion"] = "8"
    mgr.informer.apply_event(WatchEvent("MODIFIED", moved))
    assert len(calls) == 2 and mgr.leases()[IPv4Network("10.244.4.0/24")].public_ip == "10.0.0.22"
    mgr.informer.apply_event(WatchEvent("DELETED", moved))
    assert len(calls) == 3 and mgr.leases() == {}


def test_own_lease_lost_when_node_deleted_or_changed() -> None:
    api = FakeApi(node("n1", "10.244.3.0/24"))
    mgr = mgr_for(api)
    lease = mgr.acquire("192.168.1.1", "vxlan", VX, None)
    assert not mgr.own_lease_lost()  # informer not synced: unknown, not lost
    mgr.informer.replace([node("n1", "10.244.3.0/24", rv=1)], "1")
    assert not mgr.own_lease_lost()  # the cache is older than our patch
    mgr.informer.replace([copy.deepcopy(api.nodes["n1"])], str(api.rv))
    assert not mgr.own_lease_lost() and mgr.leases() == {lease.subnet: lease}
    edited = copy.deepcopy(api.nodes["n1"])
    edited["spec"]["podCIDR"] = "10.244.8.0/24"
    edited["metadata"]["resourceVersion"] = str(api.rv + 1)
    mgr.informer.apply_event(WatchEvent("MODIFIED", edited))
    assert mgr.own_lease_lost()
    mgr.informer.apply_event(WatchEvent("DELETED", edited))
    assert mgr.own_lease_lost()


def test_stored_backend_data_keeps_the_vtep_mac() -> None:
    api = FakeApi(node("n1", "10.244.3.0/24"))
    mgr = mgr_for(api)
    assert mgr.stored_backend_data("192.168.1.1", "vxlan") == {}
    mgr.acquire("192.168.1.1", "vxlan", VX, None)
    assert mgr.stored_backend_data("192.168.1.1", "vxlan") == VX
    assert mgr.stored_backend_data("192.168.1.1", "host-gw") == {}
    api.nodes["n1"]["metadata"]["annotations"][f"{A}/backend-data"] = "{"
    assert mgr.stored_backend_data("192.168.1.1", "vxlan") == {}
