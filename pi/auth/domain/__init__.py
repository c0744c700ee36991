"""The auth model and its rules: standard library and the platform kernel only, so every
rule is testable without a database, gRPC or a clock.

- `merchants`: identifiers, secrets, merchants and their API keys, input rules.
- `throttle`: failed secrets per key and per client address, progressive delays (PCI DSS 8.3.4).
- `tokens`: what an access token grants, its claims, revocations.
- `signing_keys`: the signing-key lifecycle.
"""
