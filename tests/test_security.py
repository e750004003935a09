"""TLS and mutual TLS (client -> router -> model servers) and the RouterAdmin bearer token,
against live processes with certificates made for the test."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gamaserving.inference import grpc_predict_v2_pb2 as pb
from gamaserving.inference import grpc_predict_v2_pb2_grpc as pb_grpc
from gamaserving.router.v1 import router_pb2 as rpb
from gamaserving.router.v1 import router_pb2_grpc as rpb_grpc
from tests.support.audio import wav
from tests.support.certs import CertificateAuthority, Pair
from tests.support.processes import ServerProcess, free_port, modelserver_args, router_args

TOKEN = "s3cret-admin-token-for-tests"


@dataclass(frozen=True)
class Pki:
    ca: Path
    server: Pair
    client: Pair
    router_client: Pair
    rogue_ca: Path
    rogue_client: Pair


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    out = tmp_path_factory.mktemp("pki")
    ca = CertificateAuthority(out, "test-ca")
    rogue = CertificateAuthority(out / "rogue", "rogue-ca")
    return Pki(
        ca=ca.pair.cert,
        server=ca.issue("server", server=True),
        client=ca.issue("client", server=False),
        router_client=ca.issue("router", server=False),
        rogue_ca=rogue.pair.cert,
        rogue_client=rogue.issue("rogue-client", server=False),
    )


def _creds(ca: Path, client: Pair | None = None) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=ca.read_bytes(),
        private_key=client.key.read_bytes() if client else None,
        certificate_chain=client.cert.read_bytes() if client else None,
    )


@dataclass
class Stack:
    router: ServerProcess
    model: ServerProcess
    health_ports: dict[str, int]


@pytest.fixture(scope="module")
def stack(pki: Pki, tiny_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A wav2vec2 model server and a router, both requiring client certificates."""
    out = tmp_path_factory.mktemp("secure")
    mtls = [
        "--tls-cert", str(pki.server.cert), "--tls-key", str(pki.server.key),
        "--tls-client-ca", str(pki.ca),
    ]  # fmt: skip
    mport, mhealth, rhealth = free_port(), free_port(), free_port()
    model = ServerProcess(
        modelserver_args(tiny_models / "wav2vec2", mport, *mtls, "--health-port", str(mhealth)),
        out / "model.log",
        mport,
    )
    token_file = out / "admin-token"
    token_file.write_text(TOKEN + "\n")
    config = {
        "server": {
            "grace_seconds": 2,
            "tls": {
                "cert_file": str(pki.server.cert),
                "key_file": str(pki.server.key),
                "client_ca_file": str(pki.ca),
            },
            "admin_token_file": str(token_file),
            "health_port": rhealth,
        },
        "models": {
            "wav2vec2": {
                "endpoints": [f"127.0.0.1:{mport}"],
                "tls": {
                    "ca_file": str(pki.ca),
                    "cert_file": str(pki.router_client.cert),
                    "key_file": str(pki.router_client.key),
                },
            }
        },
        "routes": {"embed": {"primary": "wav2vec2"}},
    }
    path = out / "router.yaml"
    path.write_text(yaml.safe_dump(config))
    rport = free_port()
    args = router_args(path, rport)
    args[args.index("--host") + 1] = "0.0.0.0"  # beyond loopback: allowed with a token
    router = ServerProcess(args, out / "router.log", rport)
    model.start()
    try:
        model.wait_status(credentials=_creds(pki.ca, pki.client))
        router.start()
        try:
            router.wait_status(credentials=_creds(pki.ca, pki.client))
            yield Stack(router, model, {"router": rhealth, "model": mhealth})
        finally:
            router.stop()
    finally:
        model.stop()


def _process(channel: grpc.Channel) -> rpb.ProcessResponse:
    stub = rpb_grpc.AudioRouterStub(channel)
    request = rpb.ProcessRequest(audio=wav(0.5), task=rpb.TASK_EMBED)
    return stub.Process(request, timeout=10)


def test_mtls_client_to_router_to_model_server(pki: Pki, stack: Stack) -> None:
    with grpc.secure_channel(stack.router.address, _creds(pki.ca, pki.client)) as channel:
        reply = _process(channel)
    assert reply.route.model == "wav2vec2" and len(reply.features) > 0


@pytest.mark.parametrize("who", ["router", "model"])
@pytest.mark.parametrize("client", ["plaintext", "no certificate", "wrong CA", "rogue cert"])
def test_rejected_clients(pki: Pki, stack: Stack, who: str, client: str) -> None:
    address = stack.router.address if who == "router" else stack.model.address
    channel = {
        "plaintext": lambda: grpc.insecure_channel(address),
        "no certificate": lambda: grpc.secure_channel(address, _creds(pki.ca)),
        "wrong CA": lambda: grpc.secure_channel(address, _creds(pki.rogue_ca, pki.client)),
        "rogue cert": lambda: grpc.secure_channel(address, _creds(pki.ca, pki.rogue_client)),
    }[client]()
    with channel, pytest.raises(grpc.RpcError) as err:
        if who == "router":
            _process(channel)
        else:
            pb_grpc.GRPCInferenceServiceStub(channel).ServerLive(pb.ServerLiveRequest(), timeout=5)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_admin_needs_the_bearer_token(pki: Pki, stack: Stack) -> None:
    with grpc.secure_channel(stack.router.address, _creds(pki.ca, pki.client)) as channel:
        admin = rpb_grpc.RouterAdminStub(channel)
        request = rpb.ListExperimentsRequest()
        with pytest.raises(grpc.RpcError) as err:
            admin.ListExperiments(request, timeout=5)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "authorization: Bearer" in (err.value.details() or "")
        with pytest.raises(grpc.RpcError) as err:
            admin.ListExperiments(request, timeout=5, metadata=[("authorization", "Bearer nope")])
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        admin.ListExperiments(request, timeout=5, metadata=[("authorization", f"Bearer {TOKEN}")])
        _process(channel)  # AudioRouter itself needs no token
    for process in (stack.router, stack.model):
        log = process.log()
        assert TOKEN not in log
        assert "PRIVATE KEY" not in log


def test_router_refuses_to_listen_beyond_loopback_without_a_token(tmp_path: Path) -> None:
    path = tmp_path / "router.yaml"
    path.write_text(
        yaml.safe_dump(
            {"models": {"m": {"endpoints": ["127.0.0.1:1"]}}, "routes": {"embed": {"primary": "m"}}}
        )
    )
    args = router_args(path, free_port())
    args[args.index("--host") + 1] = "0.0.0.0"
    done = subprocess.run(
        [*args, "--metadata-wait", "0.1"],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if k != "ROUTER_ADMIN_TOKEN"},
    )
    assert done.returncode == 2, done.stderr
    assert "server.host 0.0.0.0 is reachable beyond loopback" in done.stderr
    assert "admin_token_file" in done.stderr


@pytest.mark.parametrize("who", ["router", "model"])
def test_plaintext_health_port_for_kubelet_probes(stack: Stack, who: str) -> None:
    """The kubelet's gRPC probes cannot speak TLS: a separate port answers health only."""
    with grpc.insecure_channel(f"127.0.0.1:{stack.health_ports[who]}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("liveness", "readiness"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as err:
            if who == "router":
                _process(channel)
            else:
                pb_grpc.GRPCInferenceServiceStub(channel).ServerLive(
                    pb.ServerLiveRequest(), timeout=5
                )
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_model_server_refuses_half_a_tls_setting(tiny_models: Path, tmp_path: Path) -> None:
    args = modelserver_args(tiny_models / "wav2vec2", free_port(), "--tls-cert", "x.crt")
    done = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "--tls-cert and --tls-key go together" in done.stderr
