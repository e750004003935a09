"""The waits of the backends' reconnect loops (health Watch, metadata discovery): tenacity's
exponential backoff with jitter, so the replicas of a fleet do not all reconnect to a
restarted model server in the same instant."""

from __future__ import annotations

from tenacity import wait_exponential_jitter


def reconnect_wait(first_s: float, max_s: float) -> wait_exponential_jitter:
    """first_s, 2 x first_s, 4 x first_s ... up to max_s, each plus up to first_s of jitter."""
    return wait_exponential_jitter(multiplier=first_s, max=max_s, jitter=first_s)
