"""gRPC servicers: protobuf in, plain objects to the core, protobuf out."""
