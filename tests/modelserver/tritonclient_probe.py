"""A stock OIP v2 client (tritonclient) against a running model server; prints JSON.

Runs in its own process: tritonclient registers the same `inference.*` protobuf symbols as our
stubs, and one process's descriptor pool refuses a second copy.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import tritonclient.grpc as tc


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--wav", type=Path, required=True)
    parser.add_argument("--task", action="append", required=True)
    parser.add_argument("--prompt", default=None)
    args = parser.parse_args()

    client = tc.InferenceServerClient(url=args.url)
    meta = client.get_model_metadata(args.model, as_json=True)
    report: dict[str, object] = {
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "model_ready": client.is_model_ready(args.model),
        "metadata": meta,
        "results": {},
    }
    audio = np.array([args.wav.read_bytes()], dtype=np.object_)
    for task in args.task:
        inputs = [tc.InferInput("AUDIO", [1], "BYTES")]
        inputs[0].set_data_from_numpy(audio)
        if task == "describe":
            prompt = tc.InferInput("PROMPT", [1], "BYTES")
            prompt.set_data_from_numpy(np.array([args.prompt.encode()], dtype=np.object_))
            inputs.append(prompt)
        result = client.infer(args.model, inputs, parameters={"task": task})
        response = result.get_response(as_json=True)
        outs = {}
        for out in response["outputs"]:
            value = result.as_numpy(out["name"])
            if value.dtype == np.object_:
                outs[out["name"]] = [
                    v.decode() if isinstance(v, bytes) else str(v) for v in value.reshape(-1)
                ]
            else:
                outs[out["name"]] = {
                    "shape": list(value.shape),
                    "finite": bool(np.isfinite(value).all()),
                    "values": value.reshape(-1)[:8].tolist(),
                }
        report["results"][task] = {"outputs": outs, "parameters": response.get("parameters", {})}  # type: ignore[index]
    print(json.dumps(report))


if __name__ == "__main__":
    main()
