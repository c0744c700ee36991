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
