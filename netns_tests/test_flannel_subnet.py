"""flanneld's subnet managers against a real etcd (EtcdStore) and a real podnet-apiserver."""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from ipaddress import IPv4Network
from typing import Any

import pytest

from flanneld.config import NetworkConfig
from flanneld.lease import LeaseAttrs, encode_attrs, subnet_key
from flanneld.subnet.base import SubnetError
from flanneld.subnet.etcd import SUBNET_TTL, EtcdSubnetManager
from flanneld.subnet.kube import ANNOTATION_PREFIX, KubeSubnetManager, own_annotations
from podnet.api.client import NODES, Client
from podnet.store.etcd import EtcdStore, EtcdWatchStream
from podnet.testing.etcd import EtcdProcess
from podnet.testing.wait import wait_until

P = "/coreos.com/network"
NET = b'{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}'
VX = {"VNI": 1, "VtepMAC": "aa:bb:cc:00:00:01"}
A = ANNOTATION_PREFIX


class GatedEtcdStore(EtcdStore):
    """watch() waits while `gate` is clear, so a test can line up changes before a reconnect."""

    def __init__(self, endpoints: list[str]) -> None:
        super().__init__(endpoints, timeout=3)
        self.gate = threading.Event()
        self.gate.set()
        self.watch_calls = 0

    def watch(self, prefix: str, start_revision: int) -> EtcdWatchStream:
        self.watch_calls += 1
        self.gate.wait(20)
        return super().watch(prefix, start_revision)


@pytest.fixture
def stores(etcd: EtcdProcess) -> Iterator[Callable[[], GatedEtcdStore]]:
    made: list[GatedEtcdStore] = []

    def make() -> GatedEtcdStore:
        made.append(GatedEtcdStore([etcd.endpoint]))
        return made[-1]

    yield make
    for s in made:
        s.close()


def watching(mgr: EtcdSubnetManager) -> tuple[threading.Event, list[int], threading.Thread]:
    stop, changes = threading.Event(), []
    t = threading.Thread(target=mgr.run_watch, args=(lambda: changes.append(1), stop), daemon=True)
    t.start()
    wait_until(lambda: bool(changes), what="first lease snapshot")
    return stop, changes, t


def test_etcd_hosts_race_for_distinct_subnets(etcd: EtcdProcess,
                                              stores: Callable[[], GatedEtcdStore]) -> None:
    setup = stores()
    setup.create(P + "/config", NET)
    # Every host draws the same random choice: only the txn create-if-absent keeps them apart.
    managers = [EtcdSubnetManager(stores(), P, rng=random.Random(7)) for _ in range(6)]
    with ThreadPoolExecutor(6) as pool:
        leases = list(pool.map(lambda i: managers[i].acquire(f"10.0.0.{i + 1}", "vxlan", VX, None), range(6)))
    assert len({lease.subnet for lease in leases}) == 6
    items, _, _ = setup.list(P + "/subnets/")
    assert len(items) == 6
    for kv in items:
        assert kv.lease != 0 and SUBNET_TTL - 5 <= setup.lease_time_to_live(kv.lease) <= SUBNET_TTL
    # A restarted host gets its subnet back by PublicIP, with a fresh etcd lease.
    again = EtcdSubnetManager(stores(), P).acquire("10.0.0.3", "vxlan", VX, None)
    assert again.subnet == leases[2].subnet


def test_etcd_watch_sees_peers_expiry_and_own_loss(etcd: EtcdProcess,
                                                   stores: Callable[[], GatedEtcdStore]) -> None:
    setup = stores()
    setup.create(P + "/config", NET)
    mine = EtcdSubnetManager(stores(), P)
    peer = EtcdSubnetManager(stores(), P, ttl=2)  # etcd's minimum TTL: expires within ~3 s
    stop, _, t = watching(mine)
    try:
        own = mine.acquire("10.0.0.1", "vxlan", VX, None)
        theirs = peer.acquire("10.0.0.2", "vxlan", {"VNI": 1, "VtepMAC": "aa:bb:cc:00:00:02"}, None)
        wait_until(lambda: set(mine.leases()) == {own.subnet, theirs.subnet}, what="both leases")
        assert mine.leases()[theirs.subnet].backend_data["VtepMAC"] == "aa:bb:cc:00:00:02"
        wait_until(lambda: theirs.subnet not in mine.leases(), timeout=10, what="peer's TTL expiry")
        assert not mine.own_lease_lost()
        setup.delete(subnet_key(P, own.subnet))
        wait_until(mine.own_lease_lost, what="own lease loss")
        assert mine.acquire("10.0.0.1", "vxlan", VX, own.subnet).subnet == own.subnet
        wait_until(lambda: not mine.own_lease_lost(), what="re-acquired")
    finally:
        stop.set()
        t.join(10)
    assert not t.is_alive()


def test_etcd_watch_relists_after_compaction_across_an_etcd_restart(
        etcd: EtcdProcess, stores: Callable[[], GatedEtcdStore]) -> None:
    setup = stores()
    setup.create(P + "/config", NET)
    store = stores()
    mine = EtcdSubnetManager(store, P)
    gone = subnet_key(P, IPv4Network("10.244.50.0/24"))
    setup.create(gone, encode_attrs(LeaseAttrs("10.0.0.5", "vxlan")))
    stop, changes, t = watching(mine)
    try:
        wait_until(lambda: IPv4Network("10.244.50.0/24") in mine.leases(), what="lease seen")
        store.gate.clear()
        calls = store.watch_calls
        etcd.kill()
        wait_until(lambda: store.watch_calls > calls, timeout=15, what="watch reconnect attempt")
        etcd.restart()
        wait_until(setup.healthy, timeout=15, what="etcd back")
        setup.delete(gone)
        setup.create(subnet_key(P, IPv4Network("10.244.51.0/24")), encode_attrs(LeaseAttrs("10.0.0.6")))
        setup.compact(setup.current_revision())
        seen = len(changes)
        store.gate.set()
        wait_until(lambda: set(mine.leases()) == {IPv4Network("10.244.51.0/24")}, timeout=15,
                   what="re-list after compaction")
        assert len(changes) > seen
    finally:
        store.gate.set()
        stop.set()
        t.join(10)
    assert not t.is_alive()


def _node(name: str, pod_cidr: str | None, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    obj: dict[str, Any] = {"apiVersion": "v1", "kind": "Node",
                           "metadata": {"name": name, "annotations": annotations or {}}, "spec": {}}
    if pod_cidr:
        obj["spec"]["podCIDR"] = pod_cidr
    return obj


def test_kube_manager_on_a_real_apiserver(client: Client) -> None:
    cfg = NetworkConfig.parse(NET)
    client.create(NODES, _node("bare", None))
    with pytest.raises(SubnetError, match='node "bare" pod cidr not assigned'):
        KubeSubnetManager(client, "bare", cfg).acquire("10.0.0.9", "vxlan", VX, None)
    client.create(NODES, _node("n1", "10.244.1.0/24"))
    mgr = KubeSubnetManager(client, "n1", cfg, resync_period=0)
    stop, changes = threading.Event(), []
    t = threading.Thread(target=mgr.run_watch, args=(lambda: changes.append(1), stop), daemon=True)
    t.start()
    try:
        wait_until(lambda: bool(changes), what="first node snapshot")
        own = mgr.acquire("10.0.0.1", "vxlan", VX, None)
        stored = client.get(NODES, "n1")
        assert stored["metadata"]["annotations"][f"{A}/public-ip"] == "10.0.0.1"
        assert json.loads(stored["metadata"]["annotations"][f"{A}/backend-data"]) == VX
        cond = [c for c in stored["status"]["conditions"] if c["type"] == "NetworkUnavailable"]
        assert cond and cond[0]["status"] == "False" and cond[0]["reason"] == "FlannelIsUp"
        client.create(NODES, _node("n2", "10.244.2.0/24", own_annotations("10.0.0.2", "host-gw", {})))
        wait_until(lambda: set(mgr.leases()) == {own.subnet, IPv4Network("10.244.2.0/24")}, what="peer")
        assert not mgr.own_lease_lost()
        client.delete(NODES, "n2")
        wait_until(lambda: set(mgr.leases()) == {own.subnet}, what="peer removed")
        client.delete(NODES, "n1")
        wait_until(mgr.own_lease_lost, what="own node deletion")
    finally:
        stop.set()
        t.join(15)
    assert not t.is_alive()
