"""Processor connectors: the `Connector` interface and the built-in `sandbox` connector."""

from pi.payments.connectors.base import (
    AuthorizeRequest,
    CaptureRequest,
    Connector,
    ConnectorResult,
    ProcessorOutcome,
    RefundRequest,
    VoidRequest,
)
from pi.payments.connectors.sandbox import TEST_CARDS, SandboxConnector

__all__ = [
    "TEST_CARDS",
    "AuthorizeRequest",
    "CaptureRequest",
    "Connector",
    "ConnectorResult",
    "ProcessorOutcome",
    "RefundRequest",
    "SandboxConnector",
    "VoidRequest",
]
