from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from pi.platform.runtime.protobuf import timestamp, to_datetime


def test_a_time_survives_the_round_trip_through_a_timestamp_as_aware_utc() -> None:
    paris = datetime(2026, 1, 2, 3, 4, 5, 678_901, tzinfo=timezone(timedelta(hours=1)))
    back = to_datetime(timestamp(paris))
    assert back == paris
    assert back.tzinfo is UTC
    assert back.hour == 2


def test_an_out_of_range_timestamp_is_an_error() -> None:
    with pytest.raises((ValueError, OverflowError)):
        to_datetime(Timestamp(seconds=10**12))


@pytest.mark.parametrize(
    "value",
    [
        datetime(1970, 1, 1, tzinfo=UTC),
        datetime(1969, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),  # before the epoch
        datetime(1, 1, 1, tzinfo=UTC),
        datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
        datetime(2026, 12, 7, 2, 45, 1, 123_456, tzinfo=timezone(timedelta(hours=-7))),
        datetime(2026, 12, 7, 2, 45, 1, 5),  # naive: taken as UTC, as protobuf does
    ],
)
def test_the_conversions_agree_with_protobufs_own(value: datetime) -> None:
    theirs = Timestamp()
    theirs.FromDatetime(value)
    assert timestamp(value) == theirs
    assert to_datetime(theirs) == theirs.ToDatetime(tzinfo=UTC)
    odd = Timestamp(seconds=theirs.seconds, nanos=999_999_999)  # nanoseconds cut, not rounded
    assert to_datetime(odd) == odd.ToDatetime(tzinfo=UTC)
