"""Send-window and phase-calendar arithmetic: pure functions of instants and IANA zones.

Imported into the workflow sandbox with imports_passed_through(), which lets
ZoneInfo work there (docs/design.md, "Sandbox and ZoneInfo"). Every datetime passed in or
returned is timezone-aware; days are the shop's local calendar days.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

from sluice.schemas.rules import WINDOW_CLOSE, WINDOW_OPEN


@lru_cache(maxsize=512)
def zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def local_instant(day: date, at: time, tz: str) -> datetime:
    """The UTC instant of wall-clock `at` on `day` in `tz` (a gap in DST resolves forward)."""
    naive = datetime.combine(day, at)
    aware = naive.replace(tzinfo=zone(tz))
    return aware.astimezone(UTC)


def local_day(instant: datetime, tz: str) -> date:
    return instant.astimezone(zone(tz)).date()


def local_time(instant: datetime, tz: str) -> time:
    return instant.astimezone(zone(tz)).time()


def first_open_day(now: datetime, tz: str, earliest: date | None = None) -> date:
    """The first day, not before `earliest`, whose send window (until 22:00 local) is still open at `now`."""
    today = local_day(now, tz)
    if earliest is not None and earliest > today:
        return earliest
    return today if local_instant(today, WINDOW_CLOSE, tz) > now else today + timedelta(days=1)


@dataclass(frozen=True)
class DayWindow:
    day: date
    send_at: datetime  # when sending may start: the phase's send time, never before 08:00
    close_at: datetime  # 22:00: whatever is unsent stops for the day (R-PH-2, R-WIN-1)
    snapshot_at: datetime  # 00:00 of the day: the audience is a T+1 snapshot (R-OC-5)


def day_window(day: date, send_time: time, tz: str) -> DayWindow:
    start = max(send_time, WINDOW_OPEN)
    return DayWindow(
        day=day,
        send_at=local_instant(day, start, tz),
        close_at=local_instant(day, WINDOW_CLOSE, tz),
        snapshot_at=local_instant(day, time(0, 0), tz),
    )


def platform_day(instant: datetime, platform_tz: str) -> date:
    """The natural day on which fatigue caps are counted (R-FAT-1..3)."""
    return local_day(instant, platform_tz)


def utc(dt: datetime) -> datetime:
    return dt.astimezone(UTC)


def hours(n: float) -> timedelta:
    return timedelta(hours=n)
