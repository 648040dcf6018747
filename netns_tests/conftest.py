"""Fixtures for the root-only tier: simulated hosts and pods in private network namespaces.

The whole tier is skipped (with the reason) when not root.  Every test gets the `netns` marker
and pytest-timeout's limit from pyproject.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from netns_tests.apiserver_fixtures import ApiServerProcess, etcd_and_apiserver
from podnet.api.client import Client
from podnet.api.kubeconfig import load_kubeconfig
from podnet.testing.etcd import ETCD, EtcdProcess
from podnet.testing.harness import Topology

REFERENCE_CNI = "/usr/lib/cni"
REPO = Path(__file__).resolve().parent.parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip = pytest.mark.skip(reason="netns tests need root (CAP_NET_ADMIN, CAP_SYS_ADMIN)")
    for item in items:
        if "netns_tests" in str(item.fspath):
            item.add_marker(pytest.mark.netns)
            if os.geteuid() != 0:
                item.add_marker(skip)


@pytest.fixture
def topo(request: pytest.FixtureRequest) -> Iterator[Topology]:
    """A fresh topology; its cleanup is registered before anything is created."""
    t = Topology()
    request.addfinalizer(t.cleanup)
    yield t


@pytest.fixture(scope="session")
def cni_bin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Our plugins installed as real executables (`podnet cni install --dir`)."""
    d = tmp_path_factory.mktemp("cni-bin")
    subprocess.run([sys.executable, "-m", "cni.install", "--dir", str(d)], check=True, cwd=REPO)
    return d


@pytest.fixture(scope="session")
def reference_cni() -> Path:
    if not os.path.exists(os.path.join(REFERENCE_CNI, "bridge")):
        pytest.skip("reference plugins missing: apt-get install containernetworking-plugins")
    return Path(REFERENCE_CNI)


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[EtcdProcess]:
    """A fresh /usr/bin/etcd on free loopback ports (data in tmp_path), killed by PID at teardown.

    Function-scoped so a test may kill/restart it; starting one takes ~1 s.
    """
    if not os.path.exists(ETCD):
        pytest.skip("etcd missing: apt-get install etcd-server")
    proc = EtcdProcess(str(tmp_path / "etcd"))
    try:
        yield proc.start()
    finally:
        proc.cleanup()


@pytest.fixture
def apiserver(etcd: EtcdProcess, tmp_path: Path) -> Iterator[ApiServerProcess]:
    """A real podnet-apiserver (HTTPS, generated CA, token file) on a fresh etcd; killed by PID at
    teardown.  `.url`, `.token` (system:masters), `.nobody_token`, `.ca_file`, `.kubeconfig()`,
    `.request()`, `.kill()`/`.restart()`; `.etcd` is the etcd fixture."""
    server = ApiServerProcess(etcd, tmp_path / "apiserver")
    try:
        yield server.start()
    finally:
        server.cleanup()


@pytest.fixture(scope="module")
def shared_apiserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServerProcess]:
    """One etcd + podnet-apiserver for a whole module (read-mostly scenarios: kubectl runs)."""
    if not os.path.exists(ETCD):
        pytest.skip("etcd missing: apt-get install etcd-server")
    with etcd_and_apiserver(tmp_path_factory.mktemp("shared-apiserver")) as server:
        yield server


@pytest.fixture
def client(apiserver: ApiServerProcess) -> Iterator[Client]:
    """An API client (podnet.api) on the per-test `apiserver`, closed afterwards."""
    c = Client.from_config(load_kubeconfig(apiserver.kubeconfig()))
    yield c
    c.close()


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    """A `podnet up` state dir; a test that failed half-way still leaves nothing behind."""
    from netns_tests.podnet_cli import podnet

    d = tmp_path / "cluster"
    yield d
    if (d / "manifest.json").exists():
        podnet("down", "--state-dir", str(d))
