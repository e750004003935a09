"""gama-serving model server: one process serves one audio model over OIP v2 gRPC."""

__version__ = "0.1.0"
