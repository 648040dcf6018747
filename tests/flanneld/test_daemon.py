import ipaddress
import json
import threading
import urllib.error
import urllib.request

import pytest

from flanneld import subnetenv
from flanneld.__main__ import make_backend, parse_args
from flanneld.backend.base import ROUTE_PROTO, Iface
from flanneld.backend.hostgw import HostGwBackend
from flanneld.backend.udp import UdpBackend
from flanneld.backend.vxlan import VxlanBackend
from flanneld.daemon import Daemon, Options, resolve_iface
from podnet.metrics import Metrics, MetricsServer
from podnet.testing.wait import wait_until
from podnet.xtables.fake import FakeIptables
from tests.flanneld.fake_dataplane import FakeNetConfig, FakeNetlink, FakeSubnetManager, lease

IFACE = Iface("eth0", "10.250.0.2", 1500, (ipaddress.IPv4Network("10.250.0.0/24"),))
PEER = lease("10.244.2.0/24", "10.250.0.3", mac="0e:00:00:00:00:02")


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def world(tmp_path):
    nl = FakeNetlink()
    nl.add_link("lo", "", "00:00:00:00:00:00", 65536, addrs=("127.0.0.1/8",))
    nl.add_link("eth0", addrs=("10.250.0.2/24",))
    clock = Clock()
    sm = FakeSubnetManager(ttl=86400.0, now=clock)
    sm.put(PEER)
    ipt = FakeIptables()
    opts = Options(public_ip="10.250.0.2", iface=IFACE, subnet_file=str(tmp_path / "subnet.env"),
                   ip_masq=True, renew_margin=3600.0)

    def make(**kw):
        return Daemon(sm, VxlanBackend({"Type": "vxlan"}), nl, ipt, kw.get("opts", opts), wall=clock)

    return nl, sm, ipt, opts, clock, make


def test_everything_waits_for_the_first_lease_snapshot(world):
    nl, sm, ipt, opts, _, make = world
    d = make()
    d.sync()
    assert sm.own is None and not nl.calls and not d.ready.is_set()
    d.on_leases_changed()
    d.sync()
    assert sm.acquired[0][:2] == ("10.250.0.2", "vxlan")
    assert sm.acquired[0][2]["VtepMAC"] == nl.links["flannel.1"].mac
    assert nl.routes["10.244.2.0/24"].proto == ROUTE_PROTO
    assert subnetenv.read(opts.subnet_file) == {
        "FLANNEL_NETWORK": "10.244.0.0/16", "FLANNEL_SUBNET": "10.244.1.1/24",
        "FLANNEL_MTU": "1450", "FLANNEL_IPMASQ": "true"}
    assert "FLANNEL-POSTRTG" in ipt.save("nat")
    assert d.ready.is_set() and d.metrics.get("flannel_leases") == 2


def test_restart_keeps_subnet_and_touches_nothing(world):
    nl, sm, ipt, _opts, _, make = world
    first = make()
    first.on_leases_changed()
    first.sync()
    nl.calls.clear()
    restores = len(ipt.restores)
    sm.table.pop(sm.own.subnet)  # etcd mode: the lease outlives us, but even if it did not...
    sm.next_subnet = ipaddress.IPv4Network("10.244.50.0/24")
    again = make()  # ...subnet.env brings the same subnet back
    again.on_leases_changed()
    again.sync()
    assert sm.acquired[-1][3] == ipaddress.IPv4Network("10.244.1.0/24")
    assert again.own.subnet == ipaddress.IPv4Network("10.244.1.0/24")
    assert nl.calls == [] and len(ipt.restores) == restores


def test_own_lease_lost_is_reacquired_with_the_same_subnet(world):
    _nl, sm, _, _, _, make = world
    d = make()
    d.on_leases_changed()
    d.sync()
    sm.table.pop(d.own.subnet)
    d.sync()
    assert len(sm.acquired) == 2 and sm.acquired[1][3] == ipaddress.IPv4Network("10.244.1.0/24")
    assert d.metrics.get("flannel_lease_acquisitions_total") == 2


def test_lease_renewed_within_the_margin_and_failures_do_not_break_the_sync(world):
    _nl, sm, _, _, clock, make = world
    d = make()
    d.on_leases_changed()
    d.sync()
    clock.t += 86400 - 3601
    d.sync()
    assert sm.renewed == []
    clock.t += 2
    sm.fail_renew = True
    d.sync()  # logged, retried next time; the dataplane sync still ran
    assert sm.renewed == []
    sm.fail_renew = False
    d.sync()
    assert len(sm.renewed) == 1 and d.own.expiration == clock.t + 86400


def test_device_recreated_with_another_mac_republishes_the_lease(world):
    _nl, sm, _, _, _, make = world
    d = make()
    d.on_leases_changed()
    d.sync()
    d.backend._mac = "0e:12:34:56:78:9a"  # as if the device had to be recreated with a new MAC
    d.sync()
    assert sm.own.backend_data["VtepMAC"] == "0e:12:34:56:78:9a"


def test_failed_sync_counts_an_error_and_still_writes_subnet_env(world):
    nl, _sm, _, _opts, _, make = world
    nl.fail = lambda call: "10.244.2.0/24" in call
    d = make()
    d.on_leases_changed()
    with pytest.raises(Exception, match=r"10\.244\.2\.0/24"):
        d.sync()
    assert d.metrics.get("flannel_reconcile_errors_total") == 1
    assert d.ready.is_set()


def test_host_gw_off_l2_peer_is_a_metric(world, tmp_path):
    nl, sm, ipt, opts, _, _ = world
    sm.put(lease("10.244.3.0/24", "192.168.9.9", "host-gw"))
    d = Daemon(sm, HostGwBackend({}), nl, ipt, opts)
    d.on_leases_changed()
    d.sync()
    assert d.metrics.get("flannel_peer_errors") == 1


def test_run_until_stopped(world):
    nl, sm, _, _, _, make = world
    d = make()
    stop = threading.Event()
    t = threading.Thread(target=d.run, args=(stop,))
    t.start()
    try:
        wait_until(d.ready.is_set, timeout=5, what="daemon ready")
        assert "10.244.2.0/24" in nl.routes
        # A watch event marks the runner dirty: the new peer is programmed at once, not at
        # the next periodic resync (10 s).
        sm.put(lease("10.244.3.0/24", "10.250.0.4", mac="0e:00:00:00:00:03"))
        wait_until(lambda: "10.244.3.0/24" in nl.routes, timeout=1, what="new peer routed")
        sm.remove("10.244.2.0/24")
        wait_until(lambda: "10.244.2.0/24" not in nl.routes, timeout=1, what="gone peer removed")
    finally:
        stop.set()
        t.join(timeout=5)
    assert not t.is_alive()


def test_resolve_iface():
    nl = FakeNetlink()
    nl.add_link("lo", "", "00:00:00:00:00:00", 65536, addrs=("127.0.0.1/8",))
    nl.add_link("eth0", addrs=("10.250.0.2/24",), mtu=9000)
    nl.add_link("eth1", addrs=("192.168.5.5/24", "192.168.6.5/24"))
    want = Iface("eth0", "10.250.0.2", 9000, (ipaddress.IPv4Network("10.250.0.0/24"),))
    assert resolve_iface(nl, None) == want
    nl.add_foreign_route("0.0.0.0/0", "192.168.5.1", "eth1")
    assert resolve_iface(nl, None).name == "eth1"
    assert resolve_iface(nl, "eth0").ip == "10.250.0.2"
    assert resolve_iface(nl, "192.168.6.5").ip == "192.168.6.5"
    with pytest.raises(LookupError):
        resolve_iface(nl, "eth9")


def test_flags_and_env(monkeypatch):
    monkeypatch.setenv("FLANNELD_IP_MASQ", "true")
    monkeypatch.setenv("FLANNELD_ETCD_PREFIX", "/x")
    args = parse_args(["--iface", "eth0", "--resync-period", "2s", "--healthz-port", "8471"])
    assert args.ip_masq and args.etcd_prefix == "/x" and args.resync_period == 2.0
    assert args.subnet_file == "/run/flannel/subnet.env" and args.healthz_port == 8471
    assert not parse_args([]).kube_subnet_mgr


def test_make_backend():
    assert isinstance(make_backend(FakeNetConfig(backend={"Type": "vxlan", "VNI": 4})), VxlanBackend)
    assert isinstance(make_backend(FakeNetConfig(backend={"Type": "host-gw"})), HostGwBackend)
    assert isinstance(make_backend(FakeNetConfig(backend={"Type": "udp"})), UdpBackend)
    with pytest.raises(ValueError, match="wireguard"):
        make_backend(FakeNetConfig(backend={"Type": "wireguard"}))


def test_metrics_server_healthz_readyz_metrics():
    metrics = Metrics()
    metrics.describe("flannel_leases", "gauge", "Leases known")
    metrics.set("flannel_leases", 3)
    metrics.inc("flannel_errors_total", labels={"kind": 'a"b'})
    metrics.describe("flannel_renewals_total", "counter", "Renewals")
    metrics.describe("flannel_sync_seconds", "summary", "Sync time")
    metrics.observe("flannel_sync_seconds", 0.25)
    metrics.observe("flannel_sync_seconds", 0.5)
    ready = threading.Event()
    server = MetricsServer("127.0.0.1", 0, metrics, ready.is_set).start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        assert urllib.request.urlopen(base + "/healthz", timeout=5).read() == b"ok\n"
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(base + "/readyz", timeout=5)
        assert info.value.code == 503
        ready.set()
        assert urllib.request.urlopen(base + "/readyz", timeout=5).status == 200
        text = urllib.request.urlopen(base + "/metrics", timeout=5).read().decode()
        assert "# TYPE flannel_leases gauge\nflannel_leases 3\n" in text
        assert 'flannel_errors_total{kind="a\\"b"} 1' in text
        assert "# TYPE flannel_renewals_total counter\nflannel_renewals_total 0\n" in text
        assert ("# TYPE flannel_sync_seconds summary\nflannel_sync_seconds_count 2\n"
                "flannel_sync_seconds_sum 0.75\n") in text
    finally:
        server.stop()
    json.dumps(metrics.render())


def test_lease_events_skip_iptables_full_resyncs_repair_it(world):
    _nl, sm, ipt, _opts, _, make = world
    d = make()
    d.on_leases_changed()
    d.sync(full=False)  # the first one writes the rules even when not full
    restores = len(ipt.restores)
    saves = ipt.save
    calls = []
    ipt.save = lambda table: calls.append(table) or saves(table)
    sm.put(lease("10.244.3.0/24", "10.250.0.4", mac="0e:00:00:00:00:03"))
    d.sync(full=False)
    assert calls == []
    ipt.restore("*nat\n-D POSTROUTING -m comment --comment \"flanneld masq\" -j FLANNEL-POSTRTG\nCOMMIT\n")
    d.sync(full=True)
    assert calls and len(ipt.restores) == restores + 2
    assert "-j FLANNEL-POSTRTG" in saves("nat").split("COMMIT")[0]


def test_reboot_recreates_the_device_with_the_mac_of_our_previous_lease(world):
    nl, sm, _, _, _, make = world
    sm.put(lease("10.244.1.0/24", "10.250.0.2", mac="0e:00:00:00:00:aa"))  # ours, from before
    sm.put(lease("10.244.9.0/24", "10.250.0.2", "host-gw"))  # ours too, but another backend
    d = make()
    d.on_leases_changed()
    d.sync()
    assert nl.links["flannel.1"].mac == "0e:00:00:00:00:aa"
    assert sm.acquired[0][2] == {"VNI": 1, "VtepMAC": "0e:00:00:00:00:aa"}


def test_kernel_events_that_wake_a_sync():
    from flanneld.kernelwatch import touches_ours
    from podnet import netlink, rtnl

    names, indexes = frozenset({"flannel.1"}), frozenset({5})

    def route(proto):
        return netlink.route_body("10.244.2.0/24", gateway="10.244.2.0", oif=5, scope=None, table=None,
                                  priority=None, extra={"proto": proto})

    def link(name):
        return rtnl.ifinfomsg(index=5) + rtnl.attr_str(rtnl.IFLA_IFNAME, name)

    assert touches_ours(rtnl.RTM_DELROUTE, route(ROUTE_PROTO), names, indexes)
    assert not touches_ours(rtnl.RTM_DELROUTE, route(4), names, indexes)  # someone else's
    assert not touches_ours(rtnl.RTM_NEWROUTE, route(ROUTE_PROTO), names, indexes)
    neigh = netlink.neigh_body(2, 5, ip="10.244.2.0", mac="0e:00:00:00:00:02")
    assert touches_ours(rtnl.RTM_DELNEIGH, neigh, names, indexes)
    pod_arp = netlink.neigh_body(2, 7, ip="10.244.1.5", mac="0e:00:00:00:00:05")  # cni0 churn
    assert not touches_ours(rtnl.RTM_DELNEIGH, pod_arp, names, indexes)
    assert touches_ours(rtnl.RTM_DELADDR, netlink.addr_body(5, "10.244.1.0/32", delete=True), names, indexes)
    assert touches_ours(rtnl.RTM_DELLINK, link("flannel.1"), names, indexes)
    assert not touches_ours(rtnl.RTM_DELLINK, link("veth1234"), names, indexes)
