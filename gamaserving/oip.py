"""Open Inference Protocol wire helpers shared by the model server and the router."""

from __future__ import annotations

import struct
from collections.abc import Mapping

from gamaserving.inference import grpc_predict_v2_pb2 as pb

Scalar = bool | int | float | str


def param_value(p: pb.InferParameter) -> Scalar | None:
    kind = p.WhichOneof("parameter_choice")
    return None if kind is None else getattr(p, kind)


def params_dict(params: Mapping[str, pb.InferParameter]) -> dict[str, Scalar | None]:
    return {key: param_value(value) for key, value in params.items()}


def set_param(target: Mapping[str, pb.InferParameter], key: str, value: Scalar) -> None:
    p = target[key]
    if isinstance(value, bool):
        p.bool_param = value
    elif isinstance(value, int):
        p.int64_param = value
    elif isinstance(value, float):
        p.double_param = value
    else:
        p.string_param = value


def split_bytes(raw: bytes) -> list[bytes]:
    """Triton's serialised BYTES tensor: <uint32 little-endian length><bytes>, repeated."""
    out: list[bytes] = []
    offset = 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise ValueError("raw BYTES tensor is truncated (a length prefix is cut off)")
        (n,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + n > len(raw):
            raise ValueError(f"raw BYTES element of {n} bytes runs past the end of the data")
        out.append(raw[offset : offset + n])
        offset += n
    return out


def join_bytes(items: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(b)) + b for b in items)
