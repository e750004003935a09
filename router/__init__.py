"""gama-serving router: the stateless front door (A/B, shadow, failover, quality checks).

Its light dependency set (no torch, onnxruntime or transformers) is the `router` extra.
"""
