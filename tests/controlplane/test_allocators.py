"""ClusterIP / NodePort allocators over the in-memory Store, and the Service-level helper."""

from __future__ import annotations

import random
import threading
from typing import Any

import pytest

from controlplane.apiserver.allocators import (
    AlreadyAllocated,
    ClusterIPAllocator,
    NodePortAllocator,
    NotInRange,
    RangeFull,
    ServiceAllocators,
    parse_port_range,
)
from controlplane.apiserver.errors import ApiError
from podnet.store.memory import MemoryStore


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


def test_cluster_ip_range_excludes_network_broadcast_and_kubernetes_ip(store: MemoryStore) -> None:
    alloc = ClusterIPAllocator(store, "10.0.0.0/29", rng=random.Random(1))
    assert alloc.kubernetes_ip == "10.0.0.1"
    got = {alloc.allocate() for _ in range(5)}
    assert got == {"10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"}
    with pytest.raises(RangeFull, match="range is full"):
        alloc.allocate()
    assert alloc.allocate("10.0.0.1", owner="default/kubernetes") == "10.0.0.1"
    assert alloc.owners()["10.0.0.1"] == "default/kubernetes"


def test_specific_ip_taken_and_out_of_range(store: MemoryStore) -> None:
    alloc = ClusterIPAllocator(store, "10.96.0.0/12")
    assert alloc.allocate("10.96.0.10") == "10.96.0.10"
    with pytest.raises(AlreadyAllocated, match="provided IP is already allocated"):
        alloc.allocate("10.96.0.10")
    for bad in ("10.95.255.255", "10.96.0.0", "10.111.255.255", "10.112.0.1", "fd00::1", "x"):
        with pytest.raises(NotInRange, match=r"The range of valid IPs is 10\.96\.0\.0/12"):
            alloc.allocate(bad)


def test_release_and_reuse(store: MemoryStore) -> None:
    alloc = ClusterIPAllocator(store, "10.0.0.0/30")  # one dynamic address: .2
    ip = alloc.allocate()
    assert ip == "10.0.0.2"
    with pytest.raises(RangeFull):
        alloc.allocate()
    alloc.release(ip)
    alloc.release(ip)  # twice is harmless
    assert alloc.allocate() == ip


def test_reservations_survive_a_new_allocator(store: MemoryStore) -> None:
    first = ClusterIPAllocator(store, "10.0.0.0/28")
    taken = {first.allocate() for _ in range(6)}
    second = ClusterIPAllocator(store, "10.0.0.0/28")
    assert second.allocated() == taken
    fresh = {second.allocate() for _ in range(7)}
    assert not fresh & taken


def test_ipv6_range(store: MemoryStore) -> None:
    alloc = ClusterIPAllocator(store, "fd00:10:96::/124")
    assert alloc.kubernetes_ip == "fd00:10:96::1"
    got = {alloc.allocate() for _ in range(14)}  # no broadcast in IPv6: ::2 .. ::f
    assert "fd00:10:96::f" in got
    with pytest.raises(RangeFull):
        alloc.allocate()


def test_parallel_allocations_never_duplicate(store: MemoryStore) -> None:
    alloc = ClusterIPAllocator(store, "10.0.0.0/25")  # 125 dynamic addresses for 100 threads
    results: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(100)

    def worker(seed: int) -> None:
        mine = ClusterIPAllocator(store, "10.0.0.0/25", rng=random.Random(seed % 3))
        barrier.wait()
        ip = mine.allocate()
        with lock:
            results.append(ip)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(100)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 100
    assert len(set(results)) == 100
    assert alloc.allocated() == set(results)


def test_node_ports(store: MemoryStore) -> None:
    alloc = NodePortAllocator(store, "30000-30002")
    assert alloc.allocate(30001) == 30001
    with pytest.raises(AlreadyAllocated, match="provided port is already allocated"):
        alloc.allocate(30001)
    with pytest.raises(NotInRange, match="The range of valid ports is 30000-30002"):
        alloc.allocate(80)
    assert {alloc.allocate(), alloc.allocate()} == {30000, 30002}
    with pytest.raises(RangeFull):
        alloc.allocate()
    alloc.release(30000)
    assert alloc.allocate() == 30000
    assert alloc.allocated_ports() == {30000, 30001, 30002}


@pytest.mark.parametrize(("text", "expected"), [("30000-32767", (30000, 32767)),
                                                ("30000+2767", (30000, 32767)), ("8080", (8080, 8080))])
def test_port_range_syntax(text: str, expected: tuple[int, int]) -> None:
    assert parse_port_range(text) == expected


@pytest.mark.parametrize("text", ["", "a-b", "0-10", "20-10", "1-70000"])
def test_bad_port_range(text: str) -> None:
    with pytest.raises(ValueError):
        parse_port_range(text)


# ------------------------------------------------------------------------------------ services


def service(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"namespace": "default", "name": name}, "spec": spec}


@pytest.fixture
def svc_alloc(store: MemoryStore) -> ServiceAllocators:
    return ServiceAllocators(ClusterIPAllocator(store, "10.96.0.0/28"),
                             NodePortAllocator(store, "30000-30009"))


def test_cluster_ip_service(svc_alloc: ServiceAllocators) -> None:
    svc = service("web", {"ports": [{"port": 80}]})
    svc_alloc.reserve_create(svc).commit()
    ip = svc["spec"]["clusterIP"]
    assert svc["spec"]["clusterIPs"] == [ip]
    assert "nodePort" not in svc["spec"]["ports"][0]
    assert svc_alloc.ips.owners() == {ip: "default/web"}
    svc_alloc.release(svc)
    assert svc_alloc.ips.allocated() == set()


def test_headless_and_external_name_reserve_nothing(svc_alloc: ServiceAllocators) -> None:
    headless = service("h", {"clusterIP": "None", "ports": [{"port": 80}]})
    svc_alloc.reserve_create(headless)
    assert headless["spec"]["clusterIPs"] == ["None"]
    svc_alloc.reserve_create(service("e", {"type": "ExternalName", "externalName": "x.example"}))
    assert svc_alloc.ips.allocated() == set()


def test_node_port_service_shares_a_port_across_protocols(svc_alloc: ServiceAllocators) -> None:
    svc = service("dns", {"type": "NodePort", "ports": [
        {"name": "a", "port": 53, "protocol": "UDP", "nodePort": 30005},
        {"name": "b", "port": 53, "protocol": "TCP", "nodePort": 30005},
        {"name": "c", "port": 9153}]})
    svc_alloc.reserve_create(svc)
    ports = [p["nodePort"] for p in svc["spec"]["ports"]]
    assert ports[:2] == [30005, 30005]
    assert svc_alloc.ports.allocated_ports() == {30005, ports[2]}


def test_taken_cluster_ip_is_invalid_and_rolls_back(svc_alloc: ServiceAllocators) -> None:
    svc_alloc.reserve_create(service("a", {"clusterIP": "10.96.0.10"}))
    b = service("b", {"clusterIP": "10.96.0.10", "type": "NodePort", "ports": [{"port": 80}]})
    with pytest.raises(ApiError) as err:
        svc_alloc.reserve_create(b)
    assert err.value.code == 422
    assert err.value.message == ('Service "b" is invalid: spec.clusterIPs: Invalid value: '
                                 '[]string{"10.96.0.10"}: failed to allocate IP 10.96.0.10: '
                                 'provided IP is already allocated')
    assert svc_alloc.ports.allocated_ports() == set()


def test_node_port_errors_roll_back_the_cluster_ip(svc_alloc: ServiceAllocators) -> None:
    svc = service("b", {"type": "NodePort", "ports": [{"port": 80, "nodePort": 31000}]})
    with pytest.raises(ApiError) as err:
        svc_alloc.reserve_create(svc)
    assert err.value.code == 422
    assert "spec.ports[0].nodePort: Invalid value: 31000: provided port is not in the valid range" \
        in err.value.message
    assert svc_alloc.ips.allocated() == set()


def test_full_range_is_an_internal_error(store: MemoryStore) -> None:
    alloc = ServiceAllocators(ClusterIPAllocator(store, "10.0.0.0/30"), NodePortAllocator(store))
    alloc.reserve_create(service("a", {}))
    with pytest.raises(ApiError) as err:
        alloc.reserve_create(service("b", {}))
    assert (err.value.code, err.value.reason) == (500, "InternalError")
    assert err.value.message == "Internal error occurred: failed to allocate a serviceIP: range is full"


def test_update_keeps_values_and_frees_dropped_ones(svc_alloc: ServiceAllocators) -> None:
    old = service("w", {"type": "NodePort", "ports": [{"port": 80}, {"port": 443}]})
    svc_alloc.reserve_create(old).commit()
    ip, (p80, p443) = old["spec"]["clusterIP"], [p["nodePort"] for p in old["spec"]["ports"]]
    new = service("w", {"type": "NodePort", "ports": [{"port": 80}, {"port": 8080}]})
    reservation = svc_alloc.reserve_update(old, new)
    assert new["spec"]["clusterIP"] == ip
    assert new["spec"]["ports"][0]["nodePort"] == p80
    p8080 = new["spec"]["ports"][1]["nodePort"]
    assert svc_alloc.ports.allocated_ports() == {p80, p443, p8080}
    reservation.commit()
    assert svc_alloc.ports.allocated_ports() == {p80, p8080}
    to_cluster_ip = service("w", {"type": "ClusterIP", "clusterIP": ip, "ports": [{"port": 80}]})
    svc_alloc.reserve_update(new, to_cluster_ip).commit()
    assert svc_alloc.ports.allocated_ports() == set()
    assert svc_alloc.ips.allocated() == {ip}


def test_failed_update_undo_keeps_the_old_values(svc_alloc: ServiceAllocators) -> None:
    old = service("w", {"ports": [{"port": 80}]})
    svc_alloc.reserve_create(old).commit()
    new = service("w", {"type": "NodePort", "ports": [{"port": 80}]})
    svc_alloc.reserve_update(old, new).undo()
    assert svc_alloc.ports.allocated_ports() == set()
    assert svc_alloc.ips.allocated() == {old["spec"]["clusterIP"]}


def test_load_balancer_local_gets_a_health_check_port(svc_alloc: ServiceAllocators) -> None:
    svc = service("lb", {"type": "LoadBalancer", "externalTrafficPolicy": "Local",
                         "ports": [{"port": 80}]})
    svc_alloc.reserve_create(svc)
    assert svc["spec"]["healthCheckNodePort"] in svc_alloc.ports.allocated_ports()
    assert len(svc_alloc.ports.allocated_ports()) == 2
    svc_alloc.release(svc)
    assert svc_alloc.ports.allocated_ports() == set()
    no_ports = service("lb2", {"type": "LoadBalancer", "allocateLoadBalancerNodePorts": False,
                               "ports": [{"port": 80}]})
    svc_alloc.reserve_create(no_ports)
    assert svc_alloc.ports.allocated_ports() == set()


# -------------------------------------------------------------------------------------- repair


def test_repair_releases_a_leak_after_three_sightings(svc_alloc: ServiceAllocators) -> None:
    from controlplane.apiserver.allocators import AllocationRepair

    kept = service("kept", {"type": "NodePort", "ports": [{"port": 80}]})
    svc_alloc.reserve_create(kept)
    # a create that reserved and then crashed before storing its service
    leaked_ip = svc_alloc.ips.allocate(owner="default/crashed")
    leaked_port = svc_alloc.ports.allocate(owner="default/crashed")
    repair = AllocationRepair(svc_alloc)
    assert repair.run([kept]) == ([], [])
    assert repair.run([kept]) == ([], [])
    assert repair.run([kept]) == ([leaked_ip], [leaked_port])
    assert svc_alloc.ips.allocated() == {kept["spec"]["clusterIP"]}
    assert svc_alloc.ports.allocated_ports() == {kept["spec"]["ports"][0]["nodePort"]}


def test_repair_forgets_a_leak_once_its_service_shows_up(svc_alloc: ServiceAllocators) -> None:
    from controlplane.apiserver.allocators import AllocationRepair

    slow = service("slow", {"ports": [{"port": 80}]})
    svc_alloc.reserve_create(slow)  # reserved, service not stored yet
    repair = AllocationRepair(svc_alloc)
    repair.run([])
    repair.run([])
    repair.run([slow])  # stored now: the count starts over
    repair.run([])
    assert repair.run([]) == ([], [])
    assert svc_alloc.ips.allocated() == {slow["spec"]["clusterIP"]}


def test_repair_reserves_values_held_without_a_reservation(svc_alloc: ServiceAllocators) -> None:
    from controlplane.apiserver.allocators import AllocationRepair

    restored = service("restored", {"type": "NodePort", "clusterIP": "10.96.0.9",
                                    "ports": [{"port": 80, "nodePort": 30003}]})
    AllocationRepair(svc_alloc).run([restored])
    assert svc_alloc.ips.owners() == {"10.96.0.9": "repair"}
    assert svc_alloc.ports.allocated_ports() == {30003}
