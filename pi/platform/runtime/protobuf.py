"""Conversions between plain values and protobuf well-known types, for servicers.

Times in the services are aware UTC datetimes; on the wire they are
`google.protobuf.Timestamp`s.
"""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp


def timestamp(value: datetime) -> Timestamp:
    """The `Timestamp` of an aware datetime."""
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


def to_datetime(stamp: Timestamp) -> datetime:
    """The aware UTC datetime of a `Timestamp`.

    Raises ValueError or OverflowError when the timestamp is outside datetime's range.
    """
    return stamp.ToDatetime(tzinfo=UTC)
