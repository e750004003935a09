"""A real Alertmanager (Debian's prometheus-alertmanager) on loopback, and its v2 API."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import yaml

from tests.support.processes import free_port


def binary() -> str | None:
    return shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")


class Alertmanager:
    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            self.url + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            text = response.read()
        return json.loads(text) if text else None

    async def alerts(self, **filters: str) -> list[dict[str, Any]]:
        query = "&".join(f"filter={k}%3D%22{v}%22" for k, v in filters.items())
        return await asyncio.to_thread(self._call, "GET", f"/api/v2/alerts?{query}")  # type: ignore[no-any-return]

    async def silence(self, matchers: dict[str, str], hours: float = 1.0) -> str:
        body = {
            "matchers": [
                {"name": k, "value": v, "isRegex": False, "isEqual": True}
                for k, v in matchers.items()
            ],
            "startsAt": "2000-01-01T00:00:00Z",
            "endsAt": "2100-01-01T00:00:00Z",
            "createdBy": "test",
            "comment": "silenced by a test",
        }
        reply = await asyncio.to_thread(self._call, "POST", "/api/v2/silences", body)
        return str(reply["silenceID"])

    async def until(
        self, check: Callable[[list[dict[str, Any]]], bool], **filters: str
    ) -> list[dict[str, Any]]:
        """Poll the alert list until `check` holds (an event, not a timing; 30 s at most)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30.0
        while True:
            found = await self.alerts(**filters)
            if check(found):
                return found
            if loop.time() > deadline:
                raise AssertionError(f"Alertmanager never showed it; last: {found}")
            await asyncio.sleep(0.1)


def config(webhook_url: str) -> dict[str, Any]:
    """One webhook receiver, quick grouping, and the inhibition operators configure."""
    return {
        "route": {
            "receiver": "hook",
            "group_by": ["alertname", "model"],
            "group_wait": "200ms",
            "group_interval": "1s",
            "repeat_interval": "1h",
        },
        "receivers": [
            {"name": "hook", "webhook_configs": [{"url": webhook_url, "send_resolved": True}]}
        ],
        "inhibit_rules": [
            {
                "source_matchers": ['alertname="ModelUnhealthy"'],
                "target_matchers": ['alertname="FailoverRateHigh"'],
                "equal": ["model"],
            }
        ],
    }


@contextlib.asynccontextmanager
async def alertmanager(directory: Path, webhook_url: str) -> AsyncIterator[Alertmanager]:
    found = binary()
    assert found is not None, "callers skip when prometheus-alertmanager is missing"
    (directory / "alertmanager.yml").write_text(yaml.safe_dump(config(webhook_url)))
    port = free_port()
    log = (directory / "alertmanager.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        found,
        f"--config.file={directory / 'alertmanager.yml'}",
        f"--storage.path={directory / 'am-data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--cluster.listen-address=",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=log,
    )
    am = Alertmanager(port)
    try:
        for _ in range(200):
            try:
                await asyncio.to_thread(am._call, "GET", "/api/v2/status")
                break
            except OSError:
                if proc.returncode is not None:
                    raise AssertionError((directory / "alertmanager.log").read_text()) from None
                await asyncio.sleep(0.05)
        yield am
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 10)
        log.close()
