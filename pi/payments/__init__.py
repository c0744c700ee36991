"""The payment service: attempts to pay transactions through a processor connector."""
