"""`router admin`: every RouterAdmin RPC and the health checks from the command line, as
tables for people or `--json` for programs, so nobody needs grpcurl or stubs of their own."""

from __future__ import annotations

import argparse
import functools
import getpass
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gamaserving.jsonout import dumps, message_to_plain
from gamaserving.router.v1 import router_pb2 as rpb
from gamaserving.router.v1 import router_pb2_grpc as rpb_grpc
from gamaserving.terminal import DefaultsHelp, print_out
from gamaserving.tls import ClientTls, TlsError
from router.admin import render
from router.api.auth import AdminTokenError, load_token

HEALTH_SERVICES = ("liveness", "readiness")
TARGET_ENV = "ROUTER_ADMIN_TARGET"


def add_parser(sub: Any) -> None:
    admin = sub.add_parser(
        "admin",
        help="ask a running router: experiments, reports, assignments, quality, alerts, health",
        description="Call a router's RouterAdmin API (and its health checks). Tables by "
        "default; --json prints strict JSON (undefined numbers as null).",
        formatter_class=DefaultsHelp,
    )
    admin.add_argument(
        "--target",
        default=os.environ.get(TARGET_ENV, "127.0.0.1:50051"),
        help=f"the router, HOST:PORT (or ${TARGET_ENV})",
    )
    admin.add_argument(
        "--token-file",
        type=Path,
        help="file holding the RouterAdmin bearer token (default: $ROUTER_ADMIN_TOKEN, if set)",
    )
    admin.add_argument("--tls-ca", type=Path, help="TLS: CA that signed the router's certificate")
    admin.add_argument("--tls-cert", type=Path, help="mutual TLS: this client's certificate")
    admin.add_argument("--tls-key", type=Path, help="mutual TLS: its private key")
    admin.add_argument("--tls-server-name", help="TLS: the name in the router's certificate")
    admin.add_argument("--timeout", type=float, default=10.0, help="seconds per call")
    admin.add_argument("--json", action="store_true", help="print strict JSON instead of tables")
    # --json is accepted after the command too (`admin report E --json`); SUPPRESS keeps a
    # command's parser from resetting what came before it.
    json_flag = argparse.ArgumentParser(add_help=False)
    json_flag.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="print strict JSON"
    )
    what = admin.add_subparsers(dest="admin_command", required=True, metavar="COMMAND")
    parser = functools.partial(what.add_parser, parents=[json_flag], formatter_class=DefaultsHelp)
    parser("experiments", help="experiments, their coverage in force and arms")
    report = parser("report", help="an experiment's verdict and comparisons")
    report.add_argument("experiment", help="the experiment's name (see `experiments`)")
    report.add_argument("--seed", default="", help="an earlier phase (default: the current one)")
    report.add_argument(
        "--segment",
        default="",
        metavar="DIMENSION",
        help="also break the phase down by one of the experiment's `dimensions`",
    )
    report.add_argument(
        "--correction",
        choices=["holm", "bh"],
        default="holm",
        help="how --segment corrects p-values: holm (the default) or bh (Benjamini-Hochberg)",
    )
    report.add_argument(
        "--html",
        type=Path,
        metavar="OUT",
        help="write the results page the router renders to OUT",
    )
    assignment = parser("assignment", help="which arm users get now (records nothing)")
    assignment.add_argument("experiment", help="the experiment's name (see `experiments`)")
    assignment.add_argument("users", nargs="+", metavar="USER", help="user ids to look up")
    quality = parser("quality", help="quality checks, anomalies, shadow agreement, trends")
    quality.add_argument("--model", default="", help="one model (default: every model)")
    alerts = parser("alerts", help="the alert history, newest first")
    alerts.add_argument("--all", action="store_true", help="resolved alerts too")
    alerts.add_argument("--limit", type=int, default=0, help="at most this many (0: all)")
    ack = parser("ack", help="acknowledge an alert")
    ack.add_argument("id", help="the alert's id (from `router admin alerts`)")
    ack.add_argument(
        "--by",
        default=getpass.getuser(),
        help="who acknowledges it (default: you; the first acknowledgement stands)",
    )
    health = parser("health", help="liveness and readiness (exit 1 unless SERVING)")
    health.add_argument(
        "--service",
        action="append",
        help=f"a health service name (repeatable; default: {', '.join(HEALTH_SERVICES)})",
    )


def _fail(message: str, code: int = 2) -> int:
    print(f"router admin: {message}", file=sys.stderr)
    return code


def _channel(args: argparse.Namespace) -> grpc.Channel:
    if args.tls_ca is None and args.tls_cert is None and args.tls_server_name is None:
        if args.tls_key is not None:
            raise TlsError("--tls-key goes with --tls-cert")
        return grpc.insecure_channel(args.target)
    tls = ClientTls(
        ca_file=args.tls_ca,
        cert_file=args.tls_cert,
        key_file=args.tls_key,
        server_name=args.tls_server_name,
    )
    options = [("grpc.ssl_target_name_override", tls.server_name)] if tls.server_name else []
    return grpc.secure_channel(args.target, tls.credentials(), options=options)


class _Admin:
    """One call at a time over one channel, with the token and the deadline on each."""

    def __init__(self, channel: grpc.Channel, token: str | None, timeout: float) -> None:
        self.stub = rpb_grpc.RouterAdminStub(channel)
        self.health = health_pb2_grpc.HealthStub(channel)
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.timeout = timeout

    def call(self, method: str, request: Message) -> Any:
        rpc: Callable[..., Any] = getattr(self.stub, method)
        return rpc(request, timeout=self.timeout, metadata=self.metadata)

    def status(self, service: str) -> str:
        request = health_pb2.HealthCheckRequest(service=service)
        try:
            answer = self.health.Check(request, timeout=self.timeout)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return "UNKNOWN_SERVICE"
            raise
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status))


def _experiment_task(admin: _Admin, name: str) -> rpb.Task.ValueType:
    listed: rpb.ListExperimentsResponse = admin.call(
        "ListExperiments", rpb.ListExperimentsRequest()
    )
    for e in listed.experiments:
        if e.name == name:
            return e.task
    known = ", ".join(e.name for e in listed.experiments) or "none"
    raise LookupError(f"no experiment {name!r} on this router (experiments: {known})")


def _experiments(admin: _Admin, args: argparse.Namespace) -> tuple[Any, str]:
    r = admin.call("ListExperiments", rpb.ListExperimentsRequest())
    return message_to_plain(r), render.experiments(r)


def _report(admin: _Admin, args: argparse.Namespace) -> tuple[Any, str]:
    request = rpb.GetExperimentReportRequest(
        experiment=args.experiment,
        seed=args.seed,
        segment=args.segment,
        correction=args.correction,
        html=args.html is not None,
    )
    r = admin.call("GetExperimentReport", request)
    if args.html is not None:
        args.html.write_text(r.html)
        r.html = ""  # the page is in the file, not on the terminal
        return {"wrote": str(args.html)}, f"wrote {args.html}"
    return message_to_plain(r), render.report(r)


def _assignment(admin: _Admin, args: argparse.Namespace) -> tuple[Any, str]:
    task = _experiment_task(admin, args.experiment)
    r = admin.call("GetAssignment", rpb.GetAssignmentRequest(task=task, user_ids=args.users))
    return message_to_plain(r), render.assignments(r)


def _quality(admin: _Admin, args: argparse.Namespace) -> tuple[Any, str]:
    r = admin.call("GetQualityReport", rpb.GetQualityReportRequest(model=args.model))
    return message_to_plain(r), render.quality(r)


def _alerts(admin: _Admin, args: argparse.Namespace) -> tuple[Any, str]:
    listing = rpb.ListAlertsRequest(include_resolved=args.all, limit=args.limit)
    r = admin.call("ListAlerts", listing)
    return message_to_plain(r), render.alerts(r.alerts)


def _ack(admin: _Admin, args: argparse.Namespace) -> tuple[Any, str]:
    r = admin.call("AcknowledgeAlert", rpb.AcknowledgeAlertRequest(id=args.id, by=args.by))
    return message_to_plain(r), render.alerts([r.alert])


def _health(admin: _Admin, args: argparse.Namespace) -> tuple[Any, str]:
    statuses = {s: admin.status(s) for s in args.service or HEALTH_SERVICES}
    return statuses, render.health(statuses)


# Each command: (what --json prints, what a person reads).
COMMANDS: dict[str, Callable[[_Admin, argparse.Namespace], tuple[Any, str]]] = {
    "experiments": _experiments,
    "report": _report,
    "assignment": _assignment,
    "quality": _quality,
    "alerts": _alerts,
    "ack": _ack,
    "health": _health,
}


def _why(args: argparse.Namespace, exc: Exception) -> tuple[str, int]:
    """What a failed command says, and its exit code: 1 for what the router answered (or the
    name it does not know), 2 for a local error (--html to a path it cannot write)."""
    if isinstance(exc, grpc.RpcError):
        return f"{args.target}: {exc.code().name}: {exc.details()}", 1
    return str(exc), 1 if isinstance(exc, LookupError) else 2


def run(args: argparse.Namespace) -> int:
    try:
        token = load_token(args.token_file)
        channel = _channel(args)
    except AdminTokenError as exc:
        return _fail(str(exc).replace("server.admin_token_file", "--token-file"))
    except (TlsError, ValueError) as exc:
        return _fail(f"TLS: {exc}")
    with channel:
        try:
            plain, text = COMMANDS[args.admin_command](_Admin(channel, token, args.timeout), args)
        except (LookupError, grpc.RpcError, OSError) as exc:
            return _fail(*_why(args, exc))
    print_out(dumps(plain) if args.json else text)
    if args.admin_command == "health" and any(s != "SERVING" for s in plain.values()):
        return 1
    return 0
