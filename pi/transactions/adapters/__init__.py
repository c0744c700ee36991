"""The transaction service's adapters: its PostgreSQL store (`postgres`), the in-memory
store use-case tests run on (`memory`), and the payment service over gRPC
(`payments_grpc`)."""
