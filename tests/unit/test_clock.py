from datetime import UTC, datetime, timedelta

import pytest

from engage import clock


def test_advance_moves_now_forward_and_never_back():
    # Given the clock at its real time
    clock.reset()
    before = clock.now()
    # When it is advanced three days
    after = clock.advance(timedelta(days=3))
    # Then now() is three days later, and moving back is refused
    assert timedelta(days=3) <= after - before < timedelta(days=3, seconds=5)
    with pytest.raises(ValueError, match="only moves forward"):
        clock.advance(timedelta(seconds=-1))
    clock.reset()


def test_iso_and_parse_round_trip_in_utc():
    moment = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    assert clock.iso(moment) == "2026-01-02T03:04:05.678Z"
    assert clock.parse("2026-01-02T03:04:05.678Z") == moment
    assert clock.parse("2026-01-02T05:04:05.678+02:00") == moment
    assert clock.parse("2026-01-02T03:04:05.678").tzinfo is not None
