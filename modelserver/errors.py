"""Errors of the serving core, each with the gRPC status a client should see."""

from __future__ import annotations

from enum import Enum

import grpc

from gamaserving.grpcutil import StatusError


class ErrorKind(Enum):
    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    NOT_FOUND = "NOT_FOUND"
    UNAVAILABLE = "UNAVAILABLE"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    INTERNAL = "INTERNAL"


class InferenceError(StatusError):
    """An error with the status a client should see and a message it can act on."""

    def __init__(self, kind: ErrorKind, message: str) -> None:
        super().__init__(grpc.StatusCode[kind.value], message)
        self.kind = kind


def invalid(message: str) -> InferenceError:
    return InferenceError(ErrorKind.INVALID_ARGUMENT, message)


def exhausted(message: str) -> InferenceError:
    return InferenceError(ErrorKind.RESOURCE_EXHAUSTED, message)


def unavailable(message: str) -> InferenceError:
    return InferenceError(ErrorKind.UNAVAILABLE, message)
