"""How the world drives the transaction service: its gRPC servicers (`grpc`, with the
proto mapping in `mapping`) and its background workers (`workers`)."""
