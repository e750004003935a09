"""tritonclient's streaming API against a running model server; prints JSON.

`start_stream` + `async_stream_infer(..., enable_empty_final_response=True)`, as a client of
Triton's decoupled models uses them, then the unary `infer` of the same request for
comparison. Its own process, for the reason tritonclient_probe.py gives.
"""

from __future__ import annotations

import argparse
import json
import queue
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as tc


def _inputs(wav: Path, prompt: str) -> list[Any]:
    audio = tc.InferInput("AUDIO", [1], "BYTES")
    audio.set_data_from_numpy(np.array([wav.read_bytes()], dtype=np.object_))
    text = tc.InferInput("PROMPT", [1], "BYTES")
    text.set_data_from_numpy(np.array([prompt.encode()], dtype=np.object_))
    return [audio, text]


def _params(response: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in response.parameters.items():
        out[key] = getattr(value, value.WhichOneof("parameter_choice"))
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--wav", type=Path, required=True)
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--request-id", required=True)
    parser.add_argument("--max-new-tokens", type=int, required=True)
    parser.add_argument("--temperature", type=float, default=None)
    args = parser.parse_args()

    params: dict[str, Any] = {"task": "describe", "max_new_tokens": args.max_new_tokens}
    if args.temperature is not None:
        params["temperature"] = args.temperature
    client = tc.InferenceServerClient(url=args.url)
    results: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    client.async_stream_infer(
        args.model,
        _inputs(args.wav, args.prompt),
        request_id=args.request_id,
        parameters=params,
        enable_empty_final_response=True,
    )
    pieces: list[str] = []
    final: dict[str, Any] = {}
    ids: set[str] = set()
    while True:
        result, error = results.get(timeout=60)
        if error is not None:
            raise SystemExit(f"stream error: {error}")
        response = result.get_response()
        ids.add(response.id)
        p = _params(response)
        if p.get("triton_final_response"):
            final = {"parameters": p, "outputs": [o.name for o in response.outputs]}
            break
        pieces.append(result.as_numpy("TEXT")[0].decode())
    client.stop_stream()
    unary = client.infer(
        args.model, _inputs(args.wav, args.prompt), request_id=args.request_id, parameters=params
    )
    print(
        json.dumps(
            {
                "pieces": pieces,
                "final": final,
                "ids": sorted(ids),
                "unary": unary.as_numpy("TEXT")[0].decode(),
                "unary_parameters": _params(unary.get_response()),
            }
        )
    )


if __name__ == "__main__":
    main()
