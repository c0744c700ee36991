"""What the auth ports are implemented with: PostgreSQL and in-memory units of work,
the cryptography (secret hashes, the signing-key ring) and the revocation fan-out."""
