"""How the auth use cases are reached: gRPC servicers and background workers."""
