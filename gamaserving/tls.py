"""TLS and mutual TLS from certificate files, for servers and for channels. Both processes use
it: clients -> router, router -> model servers. Keys are read, never logged."""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from pathlib import Path

import grpc

from gamaserving.settings import ConfigPath, StrictSettings


class TlsError(ValueError):
    """A certificate or key file cannot be read; raised at start, naming the setting. Files
    are checked then, not when the configuration is parsed, so a configuration can be
    validated on a machine without the Secrets mounted."""


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise TlsError(f"{what}: cannot read {path}: {exc.strerror}") from exc


class ServerTls(StrictSettings):
    """The server's certificate and key; with `client_ca_file`, clients must present a
    certificate signed by that CA (mutual TLS)."""

    cert_file: ConfigPath
    key_file: ConfigPath
    client_ca_file: ConfigPath | None = None

    def credentials(self) -> grpc.ServerCredentials:
        pair = (_read(self.key_file, "key_file"), _read(self.cert_file, "cert_file"))
        ca = _read(self.client_ca_file, "client_ca_file") if self.client_ca_file else None
        return grpc.ssl_server_credentials(
            [pair], root_certificates=ca, require_client_auth=ca is not None
        )


class ClientTls(StrictSettings):
    """How a channel checks its server (`ca_file`; the system roots when unset) and, for mutual
    TLS, the certificate it presents."""

    ca_file: ConfigPath | None = None
    cert_file: ConfigPath | None = None
    key_file: ConfigPath | None = None
    server_name: str | None = None
    """Expected name in the server's certificate when it differs from the target's host."""

    def credentials(self) -> grpc.ChannelCredentials:
        if (self.cert_file is None) != (self.key_file is None):
            raise TlsError("cert_file and key_file go together (mutual TLS needs both)")
        return grpc.ssl_channel_credentials(
            root_certificates=_read(self.ca_file, "ca_file") if self.ca_file else None,
            private_key=_read(self.key_file, "key_file") if self.key_file else None,
            certificate_chain=_read(self.cert_file, "cert_file") if self.cert_file else None,
        )

    def options(self) -> list[tuple[str, str]]:
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []

    def ssl_context(self) -> ssl.SSLContext:
        """The same checks for HTTPS clients (e.g. the router's Alertmanager client)."""
        if (self.cert_file is None) != (self.key_file is None):
            raise TlsError("cert_file and key_file go together (mutual TLS needs both)")
        try:
            context = ssl.create_default_context(cafile=self.ca_file)
            if self.cert_file is not None and self.key_file is not None:
                context.load_cert_chain(self.cert_file, self.key_file)
        except (OSError, ssl.SSLError) as exc:
            raise TlsError(f"cannot load the TLS files: {exc}") from exc
        return context


def listen(server: grpc.aio.Server, address: str, tls: ServerTls | None) -> int:
    """Adds the listening port, secure when `tls` is set; returns the port (0 on failure:
    older grpcio returns 0, newer raises RuntimeError with a hint about GRPC_VERBOSITY)."""
    try:
        if tls is None:
            return int(server.add_insecure_port(address))
        return int(server.add_secure_port(address, tls.credentials()))
    except RuntimeError:
        return 0


def channel(
    target: str, tls: ClientTls | None, options: Sequence[tuple[str, object]] = ()
) -> grpc.aio.Channel:
    opts = list(options)
    if tls is None:
        return grpc.aio.insecure_channel(target, options=opts)
    return grpc.aio.secure_channel(target, tls.credentials(), options=opts + tls.options())
