"""The payment service in memory: units of work and the outbox's delivery queue on one
`MemoryState`, keeping the rules the database keeps."""

from pi.payments.adapters.memory.outbox import MemoryOutbox
from pi.payments.adapters.memory.state import IntegrityViolation, MemoryState
from pi.payments.adapters.memory.units import MemoryPaymentsUnit, MemoryUnits

__all__ = ["IntegrityViolation", "MemoryOutbox", "MemoryPaymentsUnit", "MemoryState", "MemoryUnits"]
