"""podnet.cluster.plan: the topology of `podnet up` as pure data."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from podnet.cluster import plan as P


def test_names_addresses_and_dirs_per_node(tmp_path: Path) -> None:
    p = P.make_plan(str(tmp_path / "c"), 3, "host-gw")
    assert [n.name for n in p.nodes] == ["node-1", "node-2", "node-3"]
    assert [n.ip for n in p.nodes] == ["10.250.0.11", "10.250.0.12", "10.250.0.13"]
    assert {n.netns for n in p.nodes} | {p.fabric_netns, p.cp_netns} == {
        f"{p.prefix}-node1", f"{p.prefix}-node2", f"{p.prefix}-node3", f"{p.prefix}-fab",
        f"{p.prefix}-cp"}
    assert p.nodes[1].cni_conf_dir == tmp_path / "c" / "nodes" / "node-2" / "cni" / "net.d"
    assert p.nodes[0].cni_socket.parent.parent == Path(P.RUN_ROOT) / p.prefix
    assert P.CONTROL_PLANE_IP not in {n.ip for n in p.nodes}
    assert p.backend == "host-gw" and p.external_etcd == ()
    # fabric-side veth names must fit IFNAMSIZ (15) at the largest size
    assert len(P.make_plan(str(tmp_path), P.MAX_NODES).nodes[-1].fabric_veth) <= 15


def test_prefix_is_stable_per_state_dir_and_differs_between_dirs(tmp_path: Path) -> None:
    a, b = P.prefix_for(str(tmp_path / "a")), P.prefix_for(str(tmp_path / "b"))
    assert a == P.prefix_for(str(tmp_path / "a")) and a != b
    assert a.startswith("pn") and len(a) == 8


def test_relative_state_dir_is_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert P.make_plan("rel", 1).state_dir == tmp_path / "rel"


@pytest.mark.parametrize(("nodes", "backend", "message"), [
    (0, "vxlan", "--nodes"), (P.MAX_NODES + 1, "vxlan", "--nodes"), (1, "ipip", "--flannel-backend"),
])
def test_invalid_options_are_refused(tmp_path: Path, nodes: int, backend: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        P.make_plan(str(tmp_path), nodes, backend)


def test_conflist_keeps_every_path_inside_the_node_dir(tmp_path: Path) -> None:
    node = P.make_plan(str(tmp_path), 2).nodes[1]
    conf = P.conflist(node)
    assert [p["type"] for p in conf["plugins"]] == ["flannel", "portmap"]
    flannel = conf["plugins"][0]
    for path in (flannel["subnetFile"], flannel["dataDir"], flannel["ipam"]["dataDir"]):
        assert Path(path).is_relative_to(node.dir)
    assert conf["plugins"][1]["capabilities"] == {"portMappings": True}


def test_net_conf_network_holds_node_ipam_subnets() -> None:
    conf = P.net_conf("udp")
    assert conf["Backend"] == {"Type": "udp"}
    network = ipaddress.IPv4Network(conf["Network"])
    assert network == ipaddress.IPv4Network(P.CLUSTER_CIDR)
    assert conf["SubnetLen"] == P.NODE_CIDR_MASK > network.prefixlen


def test_kubeconfig_names_server_ca_and_token() -> None:
    kc = P.kubeconfig("https://127.0.0.1:1", "/ca.crt", "tok")
    assert kc["clusters"][0]["cluster"] == {"server": "https://127.0.0.1:1",
                                            "certificate-authority": "/ca.crt"}
    assert kc["users"][0]["user"] == {"token": "tok"}
    assert kc["current-context"] == kc["contexts"][0]["name"]
