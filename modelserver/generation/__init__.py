"""Generation serving: per-step (continuous) batching and streamed text pieces."""
