"""Open Inference Protocol v2: the wire codec and the gRPC servicer."""
