"""The auth use cases, one module per use case or small family, on the ports of
`ports` (unit of work, cryptography, announcements)."""
