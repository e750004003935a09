"""A bare grpc.aio pass-through proxy: bytes in, bytes out, no parsing. The floor against which
the router's added latency is judged.

    python -m benchmarks.proxy --listen 127.0.0.1:PORT --upstream 127.0.0.1:PORT
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import grpc


class PassThrough(grpc.GenericRpcHandler):
    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.channel = channel

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method = details.method
        call = self.channel.unary_unary(method, request_serializer=None, response_deserializer=None)

        async def forward(request: bytes, context: grpc.aio.ServicerContext) -> Any:
            remaining = context.time_remaining()
            return await call(request, timeout=remaining)

        return grpc.unary_unary_rpc_method_handler(
            forward, request_deserializer=None, response_serializer=None
        )


async def serve(listen: str, upstream: str) -> None:
    channel = grpc.aio.insecure_channel(upstream)
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((PassThrough(channel),))
    server.add_insecure_port(listen)
    await server.start()
    await server.wait_for_termination()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--listen", required=True)
    parser.add_argument("--upstream", required=True)
    args = parser.parse_args()
    asyncio.run(serve(args.listen, args.upstream))


if __name__ == "__main__":
    main()
