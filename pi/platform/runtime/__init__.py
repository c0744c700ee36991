"""The gRPC runtime of every service: server, interceptors, channels, status, logging, wiring."""
