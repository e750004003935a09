"""A retry budget (gRPC retryThrottling / Envoy's retry budget): each request earns `ratio`
tokens, each retry spends one, so retries stay near `ratio` times the request rate and a
failing model never receives a multiple of the client load."""

from __future__ import annotations

from router.config import RetryBudgetSettings


class RetryBudget:
    def __init__(self, settings: RetryBudgetSettings) -> None:
        self.settings = settings
        self.tokens = 0.0

    def on_request(self) -> None:
        self.tokens = min(self.settings.max_tokens, self.tokens + self.settings.ratio)

    def try_spend(self) -> bool:
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False
