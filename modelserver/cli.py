"""`modelserver`: serve a model directory, build tiny reference models, export checkpoints."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
from pathlib import Path

from pydantic import ValidationError

from gamaserving.logs import setup_logging
from gamaserving.terminal import add_standard_options, checked_log_level


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="modelserver", description=__doc__)
    add_standard_options(parser, "MODELSERVER_LOG_LEVEL")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser(
        "serve",
        help="serve one model over OIP v2 gRPC",
        description="Serve one model directory (model.yaml and its artifacts) over the Open "
        "Inference Protocol v2 on gRPC, with grpc.health.v1 (liveness, readiness) and reflection.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    serve.add_argument("--model-dir", required=True, type=Path, help="directory holding model.yaml")
    serve.add_argument("--host", default="0.0.0.0", help="interface to listen on")
    serve.add_argument("--port", type=int, default=50061, help="gRPC port (0 picks a free one)")
    serve.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        default="auto",
        help="auto takes the GPU only when a CUDA session really starts",
    )
    _memory_options(serve)
    serve.add_argument(
        "--grace-seconds",
        type=float,
        default=20.0,
        help="on SIGTERM, how long calls in flight get to finish",
    )
    serve.add_argument(
        "--drain-delay-seconds",
        type=float,
        default=0.0,
        help="on SIGTERM, keep accepting calls this long after readiness turns NOT_SERVING",
    )
    serve.add_argument(
        "--stuck-after-seconds",
        type=float,
        default=60.0,
        help="liveness turns NOT_SERVING when one model call runs longer than this",
    )
    serve.add_argument(
        "--metrics-port", type=int, default=None, help="Prometheus /metrics port (off if unset)"
    )
    serve.add_argument(
        "--health-port",
        type=int,
        default=None,
        help="plaintext port with health checks only, for probes that cannot speak TLS",
    )
    serve.add_argument("--tls-cert", type=Path, help="serve TLS with this certificate (PEM)")
    serve.add_argument("--tls-key", type=Path, help="its private key (PEM)")
    serve.add_argument(
        "--tls-client-ca", type=Path, help="require client certificates from this CA (mTLS)"
    )

    planning = sub.add_parser(
        "plan",
        help="the memory plan `serve` would make, without loading anything",
        description="Weights at the compute dtype (from the safetensors headers), the memory "
        "available, and the KV budget that leaves: the arithmetic `serve` does before it loads "
        "(modelserver/plan.py). Exit 2 when the model would not fit.",
    )
    planning.add_argument("--model-dir", required=True, type=Path, help="directory with model.yaml")
    planning.add_argument(
        "--device",
        choices=["cpu", "cuda"],
        default="cpu",
        help="plan for this device (default: cpu)",
    )
    _memory_options(planning)
    tiny = sub.add_parser("make-tiny", help="build a tiny reference model directory")
    tiny.add_argument(
        "--family", choices=["wav2vec2", "gama"], required=True, help="which model to build"
    )
    tiny.add_argument("--out", type=Path, required=True, help="the directory to write")
    tiny.add_argument("--runtime", choices=["onnx", "torch"], default="onnx", help="wav2vec2 only")

    rehearsal = sub.add_parser(
        "make-rehearsal",
        help="write a random-weight model at full size, in its released layout",
        description="Random weights at the real sizes, in the layouts the authors publish: GAMA "
        "(LLaMA-2-7B float16 shards, the Q-Former shard and the stage checkpoint; 1b: a 1.1B "
        "LLaMA for a short GPU budget) or wav2vec2-base. Written one tensor at a time, so memory "
        "stays bounded by the largest tensor. 7b takes about 15 GB of disk.",
    )
    rehearsal.add_argument(
        "--family", choices=["wav2vec2", "gama"], required=True, help="which model to write"
    )
    rehearsal.add_argument(
        "--size",
        choices=["7b", "1b", "tiny"],
        default="7b",
        help="gama: the LLM's size (default: 7b, the release's; tiny: the same path in "
        "seconds); wav2vec2 is always base",
    )
    rehearsal.add_argument("--out", type=Path, required=True, help="the directory to write")
    rehearsal.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bar (it is off anyway when stderr is not a terminal)",
    )

    export = sub.add_parser(
        "export", help="export a transformers checkpoint, checked against torch"
    )
    export.add_argument(
        "--family", choices=["wav2vec2", "gama"], required=True, help="the checkpoint's model"
    )
    export.add_argument(
        "--checkpoint",
        required=True,
        help="wav2vec2: local directory or hub id; gama: the stage checkpoint-N directory "
        "or its pytorch_model.bin",
    )
    export.add_argument(
        "--base-model", type=Path, help="gama: the base directory (Llama-2-7b-chat-hf-qformer)"
    )
    export.add_argument(
        "--labels", type=Path, help="gama: label names for tag, one per line (omit: no tag)"
    )
    export.add_argument(
        "--max-new-tokens", type=int, default=None, help="gama: answer bound (released: 400)"
    )
    export.add_argument(
        "--out", type=Path, required=True, help="the model directory to write (model.yaml ...)"
    )
    export.add_argument("--name", default=None, help="the served model name (default: the family)")
    export.add_argument("--version", default="1", help="the model version it reports (default: 1)")
    export.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bar (it is off anyway when stderr is not a terminal)",
    )
    export.add_argument(
        "--atol",
        type=float,
        default=1e-4,
        help="largest difference allowed between the export and the checkpoint (default: 1e-4)",
    )
    return parser


def _tls(args: argparse.Namespace) -> dict[str, Path] | None:
    if args.tls_cert is None and args.tls_key is None and args.tls_client_ca is None:
        return None
    tls = {"cert_file": args.tls_cert, "key_file": args.tls_key}
    if args.tls_client_ca is not None:
        tls["client_ca_file"] = args.tls_client_ca
    return tls


def _memory_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dtype",
        choices=["auto", "float32", "bfloat16", "float16"],
        default=None,
        help="compute precision, overriding model.yaml's dtype (auto: bfloat16 on CUDA, "
        "float32 on the CPU)",
    )
    parser.add_argument(
        "--device-memory",
        type=_size,
        default=None,
        metavar="SIZE",
        help="memory the plan may count on, e.g. 80GiB (default: what the device has available)",
    )
    parser.add_argument(
        "--emulated-bfloat16",
        action="store_true",
        help="allow bfloat16 on a CPU without native support (AVX512-BF16, AMX): several times "
        "slower than float32, in half the memory",
    )


def _size(text: str) -> int:
    units = {"": 1, "B": 1, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40,
             "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}  # fmt: skip
    number = text.strip().upper().rstrip("BIKMGT") or "0"
    unit = text.strip().upper()[len(number) :]
    try:
        return int(float(number) * units[unit])
    except (KeyError, ValueError) as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: a size such as 80GiB or 24GB") from exc


def _plan(args: argparse.Namespace) -> int:
    from modelserver.config import ModelDirError, load_model_config
    from modelserver.plan import PlanError, plan

    try:
        config = load_model_config(args.model_dir)
        if args.dtype is not None:
            config = config.model_copy(update={"dtype": args.dtype})
        planned = plan(args.model_dir, config, args.device, args.device_memory,
                       emulated_bf16=args.emulated_bfloat16)  # fmt: skip
    except (ModelDirError, ValidationError) as exc:
        print(f"modelserver: {exc}", file=sys.stderr)
        return 2
    except PlanError as exc:
        print(f"modelserver: {exc}", file=sys.stderr)
        return 2
    print("\n".join(planned.lines()))
    return 0


def _serve(args: argparse.Namespace) -> int:
    from modelserver.config import ModelDirError, ServerSettings, load_model_config
    from modelserver.plan import PlanError
    from modelserver.runtime.onnx_runtime import DeviceUnavailableError
    from modelserver.server import ModelServer

    if (args.tls_cert is None) != (args.tls_key is None) or (
        args.tls_client_ca is not None and args.tls_cert is None
    ):
        print(
            "modelserver: --tls-cert and --tls-key go together (and --tls-client-ca needs them)",
            file=sys.stderr,
        )
        return 2
    try:
        settings = ServerSettings(
            model_dir=args.model_dir,
            host=args.host,
            port=args.port,
            device=args.device,
            grace_seconds=args.grace_seconds,
            drain_delay_seconds=args.drain_delay_seconds,
            stuck_after_seconds=args.stuck_after_seconds,
            metrics_port=args.metrics_port,
            tls=_tls(args),
            health_port=args.health_port,
            dtype=args.dtype,
            device_memory=args.device_memory,
            emulated_bfloat16=args.emulated_bfloat16,
        )
        config = load_model_config(settings.model_dir)
    except (ModelDirError, ValidationError) as exc:
        print(f"modelserver: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(ModelServer(settings, config).run())
    except PlanError as exc:
        # Refused before loading: one line with the numbers and the setting to change.
        print(f"modelserver: {exc}", file=sys.stderr)
        return 2
    except DeviceUnavailableError as exc:
        print(f"modelserver: {exc}", file=sys.stderr)
        return 3
    except (ValueError, OSError) as exc:
        logging.getLogger("modelserver").error("cannot serve %s: %s", settings.model_dir, exc)
        return 1
    return 0


def _make_tiny(args: argparse.Namespace) -> int:
    from modelserver.tiny.gama import make_tiny_gama
    from modelserver.tiny.wav2vec2 import make_tiny_wav2vec2

    if args.family == "wav2vec2":
        config = make_tiny_wav2vec2(args.out, runtime=args.runtime)
        print(f"built {config.family} model {config.name!r} in {args.out}")
    else:
        stage = make_tiny_gama(args.out)
        print(f"built a tiny GAMA release in {args.out} (stage checkpoint {stage})")
    return 0


def _make_rehearsal(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from modelserver.tiny.full_size import gama_release_bytes, make_gama_release, make_wav2vec2_base

    started = time.monotonic()
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"modelserver make-rehearsal: {exc}", file=sys.stderr)
        return 2
    if args.family == "wav2vec2":
        make_wav2vec2_base(args.out)
        print(f"wrote wav2vec2-base in {args.out} in {time.monotonic() - started:.1f} s")
        return 0
    total = gama_release_bytes(args.size)
    with tqdm(total=total, unit="B", unit_scale=True, desc=f"GAMA {args.size}",
              disable=True if args.no_progress else None) as bar:  # fmt: skip
        release = make_gama_release(args.out, args.size, progress=bar.update)
    print(
        f"wrote a {args.size} GAMA release in {args.out} in {time.monotonic() - started:.1f} s "
        f"(base {release.base.name}, stage {release.stage.name}, labels {release.labels.name})"
    )
    return 0


def _export_gama(args: argparse.Namespace) -> None:
    from modelserver.config import GamaGeneration
    from modelserver.families.gama.convert import export_gama

    if args.base_model is None:
        raise _UsageError(
            "--family gama needs --base-model (the Llama-2-7b-chat-hf-qformer directory)"
        )
    labels = None
    if args.labels is not None:
        labels = [line.strip() for line in args.labels.read_text().splitlines() if line.strip()]
    generation = GamaGeneration()
    if args.max_new_tokens is not None:
        generation = GamaGeneration(max_new_tokens=args.max_new_tokens)
    export_gama(
        Path(args.checkpoint),
        args.base_model,
        args.out,
        name=args.name or "gama",
        version=args.version,
        labels=labels,
        generation=generation,
        progress=not args.no_progress,
    )


class _UsageError(Exception):
    pass


def _export(args: argparse.Namespace) -> int:
    from modelserver.export import ExportCheckError, export_wav2vec2
    from modelserver.families.gama.convert import CheckpointError

    started = time.monotonic()
    try:
        if args.family == "wav2vec2":
            export_wav2vec2(
                args.checkpoint,
                args.out,
                name=args.name or "wav2vec2",
                version=args.version,
                atol=args.atol,
            )
        else:
            _export_gama(args)
    except ExportCheckError as exc:
        print(f"modelserver export: numerical check FAILED: {exc}", file=sys.stderr)
        return 4
    except CheckpointError as exc:
        print(f"modelserver export: {exc}", file=sys.stderr)
        return 4
    except (_UsageError, ValidationError, OSError) as exc:
        print(f"modelserver export: {exc}", file=sys.stderr)
        return 2
    print(f"exported {args.checkpoint} to {args.out} in {time.monotonic() - started:.1f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    setup_logging(checked_log_level(parser, args.log_level, "MODELSERVER_LOG_LEVEL"))
    if args.command == "serve":
        # Model directories are local: a server never reaches for a hub at run time.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    commands = {"serve": _serve, "plan": _plan, "make-tiny": _make_tiny,
                "make-rehearsal": _make_rehearsal, "export": _export}  # fmt: skip
    return commands[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
