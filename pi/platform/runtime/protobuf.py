"""Conversions between plain values and protobuf well-known types, for servicers.

Times in the services are aware UTC datetimes; on the wire they are
`google.protobuf.Timestamp`s.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from google.protobuf.timestamp_pb2 import Timestamp

# protobuf's own FromDatetime/ToDatetime go through time tuples and calendar.timegm:
# every response carries two or three times, and they were 2-3% of a service's CPU in
# the bench's profile. Plain arithmetic on the epoch gives the same values.
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def timestamp(value: datetime) -> Timestamp:
    """The `Timestamp` of an aware datetime (a naive one is taken as UTC, as protobuf's
    `FromDatetime` does)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    since = value - _EPOCH
    return Timestamp(seconds=since.days * 86_400 + since.seconds, nanos=since.microseconds * 1000)


def to_datetime(stamp: Timestamp) -> datetime:
    """The aware UTC datetime of a `Timestamp` (nanoseconds cut to microseconds).

    Raises ValueError or OverflowError when the timestamp is outside datetime's range.
    """
    return _EPOCH + timedelta(seconds=stamp.seconds, microseconds=stamp.nanos // 1000)
