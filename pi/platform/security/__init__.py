"""Access tokens, revocation, column encryption and secret hashing."""
