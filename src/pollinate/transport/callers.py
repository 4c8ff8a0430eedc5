"""Who makes a call: the certificate its connection presented, checked by the hub per call.

Invariants:

- an identity comes only from the certificate the TLS handshake verified (gRPC's auth
  context), never from what a request says, and the hub checks it on every call
  (``Hub.check_caller``): a user or node revoked a moment ago is refused at its next call;
- the guest certificate (``security.guest``) names no one: it makes only the newcomer calls
  (``Enrol``, ``Login``, ``Diagnose``), which check their tokens themselves;
- without TLS (``--insecure``) every control call is the local admin's, and nodes name
  themselves (the fleet service reads the name or id they send).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import grpc

from pollinate.hub.access import LOCAL_ADMIN, Caller, Forbidden
from pollinate.hub.hub import Hub
from pollinate.security import SecurityError
from pollinate.security.guest import is_guest

T = TypeVar("T")

LOG_IN = "log in first: `pollinate login --hub HOST:PORT --token TOKEN` (an admin makes the token)"


class Callers:
    """Identifies the callers of one hub's services."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.secure = hub.credentials is not None

    async def user(self, context: grpc.aio.ServicerContext) -> Caller:
        """The user making a control call; the call is aborted if it is not one this hub
        knows and accepts now."""
        if not self.secure:
            return LOCAL_ADMIN
        certificate = await self._certificate(context)
        if is_guest(certificate):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, f"no user certificate: {LOG_IN}")
        return await _checked(context, self.hub.check_user, certificate)

    async def node(self, context: grpc.aio.ServicerContext) -> int:
        """The node making a fleet call (TLS only); the call is aborted if it is not one this
        hub enrolled and accepts now."""
        certificate = await self._certificate(context)
        if is_guest(certificate):
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                "no node certificate: enrol first (`pollinate node --token TOKEN`)",
            )
        return await _checked(context, self.hub.check_node, certificate)

    @staticmethod
    async def _certificate(context: grpc.aio.ServicerContext) -> bytes:
        pems = (context.auth_context() or {}).get("x509_pem_cert") or []
        if not pems:  # the handshake demands one: only a misconfigured server gets here
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "no client certificate")
        return bytes(pems[0])


async def _checked(
    context: grpc.aio.ServicerContext, check: Callable[[bytes], T], certificate: bytes
) -> T:
    """``check(certificate)``; the call aborted with the reason if the hub refuses it."""
    try:
        return check(certificate)
    except Forbidden as exc:
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
    except SecurityError as exc:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, str(exc))
    raise AssertionError("unreachable")  # abort raises
