"""Per-application and per-request state shared by the server's middlewares and handlers."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from controlplane.apiserver import auth
from controlplane.apiserver.auth import Attributes, Decision, User

# The identity of the plain-HTTP --insecure-port (loopback only): upstream's insecure port skipped
# authentication and authorization altogether.
INSECURE_USER = User("system:unsecured", "", (auth.MASTERS_GROUP, auth.AUTHENTICATED_GROUP))


class Access:
    """Authentication (static tokens) and authorization (RBAC over the store) for one server."""

    def __init__(self, authenticator: auth.TokenAuthenticator | None,
                 authorizer: auth.Authorizer, *, insecure_is_admin: bool = True) -> None:
        self.authenticator = authenticator
        self.authorizer = authorizer
        # True in the server process (plain HTTP only listens on 127.0.0.1 --insecure-port); unit
        # tests turn it off to exercise tokens over the test client's plain HTTP
        self.insecure_is_admin = insecure_is_admin

    def authenticate(self, request: web.Request) -> User | None:
        if not request.secure and self.insecure_is_admin:
            return INSECURE_USER
        if self.authenticator is None:
            return None
        return self.authenticator.authenticate(request.headers)

    async def decide(self, user: User, attrs: Attributes) -> Decision:
        """The RBAC decision; non-admin users may need store reads, done off the event loop."""
        if auth.MASTERS_GROUP in user.groups:
            return self.authorizer.decide(user, attrs)
        return await asyncio.to_thread(self.authorizer.decide, user, attrs)


ACCESS: web.AppKey[Access] = web.AppKey("access", Access)
REGISTRY: web.AppKey[Any] = web.AppKey("registry", object)
STORE: web.AppKey[Any] = web.AppKey("store", object)
SERVER_ADDRESS: web.AppKey[str] = web.AppKey("server_address", str)
# Set once the registry has started (watch caches synced, default objects in place).
STARTED: web.AppKey[asyncio.Event] = web.AppKey("started", asyncio.Event)
USER_KEY: web.RequestKey[User] = web.RequestKey("user", User)


def request_user(request: web.Request) -> User:
    return request[USER_KEY]  # the auth middleware sets it before every resource handler
