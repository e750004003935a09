"""An OTLP/gRPC receiver that accepts and discards traces and metrics, so telemetry costs
what it costs in production (serialising and sending) without a collector. It never parses
what it receives: a collector runs elsewhere in production, and on a small benchmark machine
its parsing would compete with the processes being measured.

    python -m benchmarks.otlp_sink --port PORT
"""

from __future__ import annotations

import argparse
from concurrent import futures
from typing import Any

import grpc

# An empty Export*ServiceResponse serialises to no bytes.
_ACCEPTED = grpc.unary_unary_rpc_method_handler(lambda request, context: b"")


class _Discard(grpc.GenericRpcHandler):
    SERVICES = (
        "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
        "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
    )

    def service(self, details: Any) -> grpc.RpcMethodHandler | None:
        return _ACCEPTED if details.method in self.SERVICES else None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    server = grpc.server(futures.ThreadPoolExecutor(2), handlers=[_Discard()])
    server.add_insecure_port(f"127.0.0.1:{args.port}")
    server.start()
    server.wait_for_termination()


if __name__ == "__main__":
    main()
