"""Errors the router core raises, with the status the client should see."""

from __future__ import annotations

import grpc


class RouteError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
