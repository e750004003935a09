"""Real server processes on loopback ports, stopped whatever happens."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from demo.stack import free_port, modelserver_args, router_args

__all__ = ["ServerProcess", "free_port", "modelserver", "modelserver_args", "router_args"]


class ServerProcess:
    """A `modelserver serve` process; its log goes to a file so a full pipe never blocks it."""

    def __init__(self, args: list[str], log_path: Path, port: int) -> None:
        self.args = args
        self.log_path = log_path
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, env: dict[str, str] | None = None, cwd: Path | None = None) -> ServerProcess:
        """`cwd` runs another checkout's code (`python -m` imports from it first)."""
        log = self.log_path.open("wb")
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc = subprocess.Popen(
            self.args, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd
        )
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_status(
        self,
        service: str = "readiness",
        want: int = health_pb2.HealthCheckResponse.SERVING,
        timeout: float = 60,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        deadline = time.monotonic() + timeout
        with (
            grpc.secure_channel(self.address, credentials)
            if credentials is not None
            else grpc.insecure_channel(self.address)
        ) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
                with contextlib.suppress(grpc.RpcError):
                    if (
                        stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=1).status
                        == want
                    ):
                        return
                time.sleep(0.05)
        raise TimeoutError(f"{service} never became {want}:\n{self.log()}")

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 30) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


@contextlib.contextmanager
def modelserver(
    model_dir: Path, log_dir: Path, *extra: str, ready: bool = True
) -> Iterator[ServerProcess]:
    port = free_port()
    server = ServerProcess(
        modelserver_args(model_dir, port, *extra), log_dir / f"modelserver-{port}.log", port
    )
    server.start()
    try:
        if ready:
            server.wait_status()
        yield server
    finally:
        server.stop()
