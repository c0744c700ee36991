"""Processor connectors (`pi.payments.app.ports.Connector`): the built-in sandbox."""

from pi.payments.adapters.processor.sandbox import TEST_CARDS, SandboxConnector

__all__ = ["TEST_CARDS", "SandboxConnector"]
