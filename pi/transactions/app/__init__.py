"""The transaction service's use cases, one module per use case (or small family), on the
ports of `ports`: no database, network or protobuf here."""
