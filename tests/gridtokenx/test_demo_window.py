"""The demo's simulated window is the site's most recent daytime, whatever the hour it runs at."""

from __future__ import annotations

import pytest

from gridtokenx.demo import daytime_backfill
from simulator.models import DAY, SITE_UTC_OFFSET_HOURS

BASE = 1_795_000_000.0  # a fixed instant: the test never reads the clock


@pytest.mark.parametrize("minute", range(0, 24 * 60, 37))
@pytest.mark.parametrize("window", [6 * 3600.0, 86_400.0])
def test_window_starts_at_local_eight_and_ends_by_now(minute: int, window: float) -> None:
    now = BASE + minute * 60
    backfill = daytime_backfill(now, window)
    start = now - backfill
    local = (start + SITE_UTC_OFFSET_HOURS * 3600) % DAY
    assert local == 8 * 3600
    assert start + window <= now
    assert backfill < DAY + window  # the latest such morning, well inside the cloud's 7-day limit
