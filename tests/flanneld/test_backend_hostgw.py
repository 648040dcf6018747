import ipaddress

import pytest

from flanneld.backend.base import ROUTE_PROTO, Iface, RouteSpec
from flanneld.backend.hostgw import HostGwBackend, hostgw_desired
from podnet.errors import PodnetError
from tests.flanneld.fake_dataplane import FakeNetlink, lease

IFACE = Iface("eth0", "10.250.0.2", 1500, (ipaddress.IPv4Network("10.250.0.0/24"),))
OWN = lease("10.244.1.0/24", "10.250.0.2", "host-gw")


def table(*leases):
    return {x.subnet: x for x in leases}


def test_desired_route_via_public_ip_on_iface():
    peers = [lease("10.244.2.0/24", "10.250.0.3", "host-gw"), lease("10.244.3.0/24", "10.250.0.4", "host-gw")]
    d = hostgw_desired(IFACE, OWN, table(OWN, *peers))
    assert d.routes == {RouteSpec("10.244.2.0/24", "10.250.0.3", "eth0"),
                        RouteSpec("10.244.3.0/24", "10.250.0.4", "eth0")}
    assert not d.neighbours and not d.fdb and not d.devices


def test_peer_off_l2_is_refused_clearly():
    far = lease("10.244.2.0/24", "192.168.7.7", "host-gw")
    d = hostgw_desired(IFACE, OWN, table(OWN, far))
    assert not d.routes
    assert "192.168.7.7" in d.problems[0] and "same L2" in d.problems[0]


def test_vxlan_leases_are_ignored():
    d = hostgw_desired(IFACE, OWN, table(OWN, lease("10.244.2.0/24", "10.250.0.3", mac="0e:00:00:00:00:02")))
    assert not d.routes


def test_prepare_refuses_public_ip_that_is_not_the_iface_address():
    with pytest.raises(PodnetError, match="public IP"):
        HostGwBackend({}).prepare(FakeNetlink(), "203.0.113.9", IFACE)


def test_apply_adds_replaces_and_removes_owned_routes_only():
    nl = FakeNetlink()
    nl.add_link("eth0", addrs=("10.250.0.2/24",))
    nl.add_foreign_route("10.244.3.0/24", "10.250.0.77", "eth0")  # someone's route to a subnet we want
    nl.add_foreign_route("172.16.0.0/12", "10.250.0.1", "eth0")
    backend = HostGwBackend({})
    assert backend.prepare(nl, "10.250.0.2", IFACE) == {}
    assert backend.mtu(IFACE) == 1500
    peers = [lease("10.244.2.0/24", "10.250.0.3", "host-gw"), lease("10.244.3.0/24", "10.250.0.4", "host-gw")]
    backend.apply(nl, backend.desired(OWN, table(OWN, *peers)))
    assert nl.routes["10.244.3.0/24"].gateway == "10.250.0.4"  # replaced, now ours
    assert nl.routes["10.244.3.0/24"].proto == ROUTE_PROTO
    backend.apply(nl, backend.desired(OWN, table(OWN, peers[1])))
    assert set(nl.routes) == {"10.244.3.0/24", "172.16.0.0/12"}
