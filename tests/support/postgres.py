"""A real PostgreSQL on a loopback port for the tests: Debian's server, initdb in a temporary
directory, run as the `postgres` user when the tests run as root (PostgreSQL refuses root)."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.support.processes import free_port


def _binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


def _as_postgres(args: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else args


class Postgres:
    """One server; `stop()` and `start()` make an outage and end it on the same port."""

    def __init__(self) -> None:
        initdb, pg_ctl = _binary("initdb"), _binary("pg_ctl")
        if initdb is None or pg_ctl is None:
            pytest.skip("needs PostgreSQL's initdb and pg_ctl (Debian package postgresql; "
                        "`make tools` installs it as root)")  # fmt: skip
        self.pg_ctl = pg_ctl
        # Not under pytest's tmp_path: the postgres user must be able to reach it.
        self.root = Path(tempfile.mkdtemp(prefix="gamaserving-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        subprocess.run(
            _as_postgres([initdb, "-D", str(self.data), "-U", "postgres", "--auth=trust",
                          "--no-sync", "-E", "UTF8"]),
            check=True, capture_output=True,
        )  # fmt: skip
        self.start()

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def database(self, name: str) -> str:
        """The URL of a new, empty database on this server (a test's store of its own)."""
        subprocess.run(
            _as_postgres([_binary("psql") or "psql", "-h", str(self.root), "-p", str(self.port),
                          "-U", "postgres", "-c", f"CREATE DATABASE {name}"]),
            check=True, capture_output=True,
        )  # fmt: skip
        return self.url.rsplit("/", 1)[0] + f"/{name}"

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        subprocess.run(
            _as_postgres([self.pg_ctl, "-D", str(self.data), "-o", options, "-l",
                          str(self.root / "log"), "-w", "start"]),
            check=True, capture_output=True,
        )  # fmt: skip

    def stop(self) -> None:
        subprocess.run(
            _as_postgres([self.pg_ctl, "-D", str(self.data), "-m", "immediate", "-w", "stop"]),
            check=True, capture_output=True,
        )  # fmt: skip

    def close(self) -> None:
        subprocess.run(
            _as_postgres([self.pg_ctl, "-D", str(self.data), "-m", "fast", "-w", "stop"]),
            capture_output=True,
        )
        shutil.rmtree(self.root, ignore_errors=True)
