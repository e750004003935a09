"""RouterAdmin requires `authorization: Bearer <token>`; other services are not affected. The
token is compared in constant time and never logged."""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc

log = logging.getLogger(__name__)

ADMIN_PREFIX = "/gamaserving.router.v1.RouterAdmin/"
TOKEN_ENV = "ROUTER_ADMIN_TOKEN"


class AdminTokenError(Exception):
    pass


def load_token(path: Path | None) -> str | None:
    """From the file (a mounted Secret) when configured, else from ROUTER_ADMIN_TOKEN."""
    if path is not None:
        try:
            token = path.read_text().strip()
        except OSError as exc:
            raise AdminTokenError(
                f"server.admin_token_file: cannot read {path}: {exc.strerror}"
            ) from exc
        if not token:
            raise AdminTokenError(f"server.admin_token_file: {path} is empty")
        return token
    return os.environ.get(TOKEN_ENV) or None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _deny(message: str) -> grpc.RpcMethodHandler:
    async def abort(request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    return grpc.unary_unary_rpc_method_handler(abort)


class AdminAuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        if not details.method.startswith(ADMIN_PREFIX):
            return await continuation(details)
        sent = next((v for k, v in details.invocation_metadata or () if k == "authorization"), None)
        if sent is None:
            return _deny("RouterAdmin needs metadata `authorization: Bearer <token>`")
        given = sent.encode() if isinstance(sent, str) else sent
        if not hmac.compare_digest(given, self._expected):
            log.warning("RouterAdmin call %s refused: wrong token", details.method)
            return _deny("RouterAdmin: the bearer token is not valid")
        return await continuation(details)
