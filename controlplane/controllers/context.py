"""What a controller is built from: the API client, the flags and shared informers.

Every controller asks the factory for the informers it reads; two controllers that watch pods share
one list+watch and one cache (client-go's SharedInformerFactory), each adding its own handlers.
"""

from __future__ import annotations

import argparse
import socket
import threading
from dataclasses import dataclass, field
from typing import Protocol

from podnet.api.client import Client, Resource
from podnet.api.events import EventRecorder
from podnet.api.informer import Informer, wait_for_all

__all__ = ["ControllerContext", "InformerFactory", "Runnable"]


class Runnable(Protocol):
    name: str

    def run(self, stop: threading.Event, poll: float = 0.5) -> None: ...


class InformerFactory:
    def __init__(self, client: Client) -> None:
        self.client = client
        self._informers: dict[Resource, Informer] = {}

    def get(self, res: Resource) -> Informer:
        """The shared informer of `res` (all namespaces), created on first use."""
        if res not in self._informers:
            self._informers[res] = Informer(self.client, res, name=f"informer-{res.plural}")
        return self._informers[res]

    def start_all(self) -> None:
        for informer in self._informers.values():
            informer.start()

    def wait_for_sync(self, stop: threading.Event) -> bool:
        return wait_for_all(list(self._informers.values()), stop)

    def stop_all(self) -> None:
        for informer in self._informers.values():
            informer.stop()


@dataclass
class ControllerContext:
    client: Client
    options: argparse.Namespace
    informers: InformerFactory = field(init=False)
    # Events for `kubectl describe` (SuccessfulCreate, NodeNotReady...); asynchronous, never blocks
    # a sync; its writer thread starts with the first event.
    recorder: EventRecorder = field(init=False)

    def __post_init__(self) -> None:
        self.informers = InformerFactory(self.client)
        self.recorder = EventRecorder(self.client, "controller-manager", socket.gethostname())
