"""Errors the router core raises, with the status the client should see."""

from __future__ import annotations

import grpc

from gamaserving.grpcutil import StatusError


class RouteError(StatusError):
    @property
    def code(self) -> grpc.StatusCode:
        return self.status
