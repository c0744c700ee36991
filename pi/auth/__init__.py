"""The auth service: merchants, API keys, access tokens and their signing keys."""
