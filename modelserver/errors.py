"""Errors of the serving core, each with the gRPC status a client should see."""

from __future__ import annotations

import grpc

from gamaserving.grpcutil import StatusError


class InferenceError(StatusError):
    """An error with the status a client should see and a message it can act on."""

    def __init__(self, status: grpc.StatusCode, message: str) -> None:
        super().__init__(status, message)


def invalid(message: str) -> InferenceError:
    return InferenceError(grpc.StatusCode.INVALID_ARGUMENT, message)


def exhausted(message: str) -> InferenceError:
    return InferenceError(grpc.StatusCode.RESOURCE_EXHAUSTED, message)


def unavailable(message: str) -> InferenceError:
    return InferenceError(grpc.StatusCode.UNAVAILABLE, message)
