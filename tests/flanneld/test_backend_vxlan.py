import ipaddress

import pytest

from flanneld.backend.base import ROUTE_PROTO, ApplyError, FdbSpec, Iface, NeighSpec, RouteSpec
from flanneld.backend.vxlan import VxlanBackend, random_mac, vxlan_desired
from tests.flanneld.fake_dataplane import FakeNetlink, lease

OWN = lease("10.244.1.0/24", "10.250.0.2", mac="0e:00:00:00:00:01")
B = lease("10.244.2.0/24", "10.250.0.3", mac="0e:00:00:00:00:02")
C = lease("10.244.3.0/24", "192.168.9.4", mac="0E:00:00:00:00:03")
IFACE = Iface("eth0", "10.250.0.2", 1500, (ipaddress.IPv4Network("10.250.0.0/24"),))


def table(*leases):
    return {x.subnet: x for x in leases}


def test_desired_per_remote_lease_neighbour_fdb_onlink_route():
    d = vxlan_desired("flannel.1", OWN, table(OWN, B, C), None)
    assert d.routes == {RouteSpec("10.244.2.0/24", "10.244.2.0", "flannel.1", onlink=True),
                        RouteSpec("10.244.3.0/24", "10.244.3.0", "flannel.1", onlink=True)}
    assert d.neighbours == {NeighSpec("flannel.1", "10.244.2.0", "0e:00:00:00:00:02"),
                            NeighSpec("flannel.1", "10.244.3.0", "0e:00:00:00:00:03")}
    assert d.fdb == {FdbSpec("flannel.1", "0e:00:00:00:00:02", "10.250.0.3"),
                     FdbSpec("flannel.1", "0e:00:00:00:00:03", "192.168.9.4")}
    assert d.addresses == {"flannel.1": "10.244.1.0/32"}
    assert d.devices == ("flannel.1",)
    assert d.problems == ()


@pytest.mark.parametrize("other, why", [
    (lease("10.244.4.0/24", "10.250.0.5", "host-gw"), "other backend type"),
    (lease("10.244.5.0/24", "10.250.0.2", mac="0e:00:00:00:00:09"), "our own PublicIP (a leftover)"),
])
def test_desired_ignores(other, why):
    d = vxlan_desired("flannel.1", OWN, table(OWN, other), None)
    assert not d.routes and not d.neighbours and not d.fdb, why


def test_desired_lease_without_mac_is_a_problem_not_a_crash():
    d = vxlan_desired("flannel.1", OWN, table(OWN, lease("10.244.6.0/24", "10.250.0.6")), None)
    assert not d.routes
    assert "no VtepMAC" in d.problems[0]


def test_direct_routing_same_l2_gets_plain_route_others_vxlan():
    d = vxlan_desired("flannel.1", OWN, table(OWN, B, C), IFACE)
    assert d.routes == {RouteSpec("10.244.2.0/24", "10.250.0.3", "eth0"),
                        RouteSpec("10.244.3.0/24", "10.244.3.0", "flannel.1", onlink=True)}
    assert {n.ip for n in d.neighbours} == {"10.244.3.0"}


def test_random_mac_is_local_unicast():
    first = int(random_mac().split(":")[0], 16)
    assert first & 0x02 and not first & 0x01


@pytest.fixture
def nl():
    fake = FakeNetlink()
    fake.add_link("lo", "", "00:00:00:00:00:00", 65536)
    fake.add_link("eth0", addrs=("10.250.0.2/24",))
    return fake


def prepared(nl, config=None):
    backend = VxlanBackend(config or {"Type": "vxlan"})
    data = backend.prepare(nl, "10.250.0.2", IFACE)
    return backend, data


def test_prepare_creates_device_mtu_minus_50_up_and_publishes_mac(nl):
    backend, data = prepared(nl)
    link = nl.links["flannel.1"]
    assert link.mtu == 1450 and link.up
    assert link.vxlan == (1, 8472, "10.250.0.2", "eth0", False)
    assert data == {"VNI": 1, "VtepMAC": link.mac}
    assert backend.mtu(IFACE) == 1450


def test_prepare_adopts_existing_device_mac_and_is_idempotent(nl):
    _, data = prepared(nl)
    calls = len(nl.calls)
    _, again = prepared(nl)  # a restarted daemon: a new backend object
    assert again == data
    assert len(nl.calls) == calls  # nothing recreated or changed


def test_prepare_vni_and_port_from_config(nl):
    _, data = prepared(nl, {"Type": "vxlan", "VNI": 7, "Port": 4789})
    assert data["VNI"] == 7 and nl.links["flannel.7"].vxlan[:2] == (7, 4789)


def test_apply_programs_arp_then_fdb_then_route_and_resync_is_noop(nl):
    backend, data = prepared(nl)
    own = lease("10.244.1.0/24", "10.250.0.2", mac=data["VtepMAC"])
    applied = backend.apply(nl, backend.desired(own, table(own, B)))
    assert applied.changed
    peer_calls = [c for c in nl.calls if "10.244.2.0" in c or "10.250.0.3" in c]
    assert [c.split()[0] for c in peer_calls] == ["neigh", "fdb", "route"]
    route = nl.routes["10.244.2.0/24"]
    assert route.proto == ROUTE_PROTO and route.onlink and route.gateway == "10.244.2.0"
    assert nl.addrs["flannel.1"] == {"10.244.1.0/32"}
    before = len(nl.calls)
    assert not backend.apply(nl, backend.desired(own, table(own, B))).changed
    assert len(nl.calls) == before


def test_removed_lease_is_garbage_collected_everywhere(nl):
    backend, data = prepared(nl)
    own = lease("10.244.1.0/24", "10.250.0.2", mac=data["VtepMAC"])
    backend.apply(nl, backend.desired(own, table(own, B, C)))
    backend.apply(nl, backend.desired(own, table(own, C)))
    assert set(nl.routes) == {"10.244.3.0/24"}
    assert {n.ip for n in nl.list_neighbours("flannel.1")} == {"10.244.3.0"}
    assert {f.dst for f in nl.list_fdb("flannel.1")} == {"192.168.9.4"}


def test_restart_gc_of_entries_left_by_a_previous_run_foreign_routes_untouched(nl):
    backend, data = prepared(nl)
    # A previous run programmed a peer whose lease vanished while we were down (flannel#2554).
    nl.ensure_neighbour("flannel.1", "10.244.9.0", "0e:00:00:00:00:99")
    nl.ensure_fdb("flannel.1", "0e:00:00:00:00:99", "10.250.0.99")
    nl.ensure_route("10.244.9.0/24", gateway="10.244.9.0", dev="flannel.1", proto=ROUTE_PROTO, onlink=True)
    nl.add_foreign_route("192.168.0.0/16", "10.250.0.254", "eth0")
    own = lease("10.244.1.0/24", "10.250.0.2", mac=data["VtepMAC"])
    backend.apply(nl, backend.desired(own, table(own)))
    assert set(nl.routes) == {"192.168.0.0/16"}
    assert nl.list_neighbours("flannel.1") == [] and nl.list_fdb("flannel.1") == []


def test_tampering_is_restored_on_the_next_apply(nl):
    backend, data = prepared(nl)
    own = lease("10.244.1.0/24", "10.250.0.2", mac=data["VtepMAC"])
    leases = table(own, B)
    backend.apply(nl, backend.desired(own, leases))
    nl.routes.pop("10.244.2.0/24")
    nl.fdb["flannel.1"].clear()
    nl.addrs["flannel.1"] = {"10.99.0.0/32"}
    applied = backend.apply(nl, backend.desired(own, leases))
    assert "10.244.2.0/24" in nl.routes and len(nl.list_fdb("flannel.1")) == 1
    assert nl.addrs["flannel.1"] == {"10.244.1.0/32"}
    assert len(applied.added) == 3 and len(applied.removed) == 1


def test_peer_mac_change_replaces_without_deleting(nl):
    backend, data = prepared(nl)
    own = lease("10.244.1.0/24", "10.250.0.2", mac=data["VtepMAC"])
    backend.apply(nl, backend.desired(own, table(own, B)))
    moved = lease("10.244.2.0/24", "10.250.0.3", mac="0e:00:00:00:00:22")
    nl.calls.clear()
    backend.apply(nl, backend.desired(own, table(own, moved)))
    assert nl.list_neighbours("flannel.1")[0].mac == "0e:00:00:00:00:22"
    assert [f.mac for f in nl.list_fdb("flannel.1")] == ["0e:00:00:00:00:22"]
    assert not any(c.startswith(("neigh del", "route del")) for c in nl.calls)


def test_one_failing_peer_does_not_stop_the_others(nl):
    backend, data = prepared(nl)
    own = lease("10.244.1.0/24", "10.250.0.2", mac=data["VtepMAC"])
    nl.fail = lambda call: "10.244.2.0/24" in call
    with pytest.raises(ApplyError, match=r"10\.244\.2\.0/24"):
        backend.apply(nl, backend.desired(own, table(own, B, C)))
    assert "10.244.3.0/24" in nl.routes


def test_restore_takes_the_previous_lease_mac_over_the_existing_device(nl):
    prepared(nl)
    backend = VxlanBackend({"Type": "vxlan"})
    backend.restore({"VNI": 1, "VtepMAC": "0E:00:00:00:00:77"})
    assert backend.prepare(nl, "10.250.0.2", IFACE)["VtepMAC"] == "0e:00:00:00:00:77"
    assert nl.links["flannel.1"].mac == "0e:00:00:00:00:77"
    other_vni = VxlanBackend({"Type": "vxlan", "VNI": 2})
    other_vni.restore({"VNI": 1, "VtepMAC": "0e:00:00:00:00:77"})
    assert other_vni.prepare(nl, "10.250.0.2", IFACE)["VtepMAC"] != "0e:00:00:00:00:77"
