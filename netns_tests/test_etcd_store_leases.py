"""EtcdStore leases against a real etcd: the same LeaseContract MemoryStore passes."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from podnet.store.base import Store
from podnet.store.etcd import EtcdStore
from podnet.testing.etcd import EtcdProcess
from podnet.testing.wait import wait_until
from tests.podnet.test_store_leases import LeaseContract


@pytest.fixture(scope="module")
def shared_etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdProcess]:
    proc = EtcdProcess(str(tmp_path_factory.mktemp("etcd")))
    try:
        yield proc.start()
    finally:
        proc.cleanup()


class TestEtcdStoreLeases(LeaseContract):
    @pytest.fixture
    def store(self, shared_etcd: EtcdProcess) -> Iterator[EtcdStore]:
        self.P = f"/l-{uuid.uuid4().hex[:8]}/"
        s = EtcdStore([shared_etcd.endpoint], timeout=5)
        yield s
        s.close()

    def expire(self, store: Store, lease_id: int) -> None:
        # etcd's lessor checks expiry every 500 ms; a 2 s lease is gone within about 3 s.
        wait_until(lambda: store.lease_time_to_live(lease_id) == -1, timeout=10.0)
