"""Backends: one OIP v2 gRPC client per model, a channel per configured endpoint."""
