import ipaddress
import os

from flanneld import subnetenv

ENV = subnetenv.SubnetEnv(ipaddress.IPv4Network("10.244.0.0/16"), ipaddress.IPv4Network("10.244.1.0/24"),
                          1450, True)


def test_render_as_upstream():
    assert ENV.render() == ("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\n"
                            "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n")


def test_write_creates_dirs_atomically_and_skips_unchanged(tmp_path):
    path = tmp_path / "run" / "flannel" / "subnet.env"
    assert subnetenv.write(path, ENV)
    assert path.read_text() == ENV.render()
    assert oct(path.stat().st_mode & 0o777) == "0o644"
    inode = path.stat().st_ino
    assert not subnetenv.write(path, ENV)
    assert path.stat().st_ino == inode
    assert os.listdir(path.parent) == ["subnet.env"]  # no temp file left behind


def test_rewrite_replaces_the_file_not_edits_it(tmp_path):
    path = tmp_path / "subnet.env"
    subnetenv.write(path, ENV)
    reader = path.open()  # a reader holding the old file sees it whole
    changed = subnetenv.SubnetEnv(ENV.network, ipaddress.IPv4Network("10.244.7.0/24"), 1450, False)
    assert subnetenv.write(path, changed)
    assert reader.read() == ENV.render()
    reader.close()
    assert subnetenv.read(path)["FLANNEL_SUBNET"] == "10.244.7.1/24"


def test_previous_subnet(tmp_path):
    path = tmp_path / "subnet.env"
    assert subnetenv.previous_subnet(path) is None
    subnetenv.write(path, ENV)
    assert subnetenv.previous_subnet(path) == ipaddress.IPv4Network("10.244.1.0/24")
    path.write_text("FLANNEL_SUBNET=garbage\n")
    assert subnetenv.previous_subnet(path) is None
