"""Pi Platform: an open payments backend built as a gRPC service mesh."""
