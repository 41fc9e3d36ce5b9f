"""Meter models: what a simulated meter measures in one interval. Pure functions, no I/O.

Four meter types (solar prosumer, grid consumer, hybrid prosumer, battery storage), daily load
profiles (residential morning/evening peaks, commercial weekday plateau), solar power as capacity ×
clear-sky irradiance × a weather factor, and a day-level weather process (sunny, partly cloudy,
cloudy, overcast, rain) that persists from day to day like a Markov chain.

Every random draw is a hash of (fleet seed, meter, interval start), not a stateful generator: the
same interval of the same meter always measures the same energy, so a run is reproducible and a
restart continues exactly where the previous process stopped without saving any generator state.
"""

from __future__ import annotations

import functools
import math
import zlib
from dataclasses import dataclass
from enum import StrEnum

DAY = 86_400
#: GridTokenX's home, Thailand: the default site's local time is UTC+7.
SITE_UTC_OFFSET_HOURS = 7.0
_MASK64 = (1 << 64) - 1


class MeterType(StrEnum):
    SOLAR = "solar"
    """Rooftop solar on an export meter: exports what the panels produce, imports a little standby."""
    CONSUMER = "consumer"
    """Grid consumer: imports its load, exports nothing."""
    HYBRID = "hybrid"
    """Solar plus a household load behind one net meter: exports the surplus, imports the deficit."""
    BATTERY = "battery"
    """Battery storage: charges from the grid at night, discharges into the evening peak."""


class Weather(StrEnum):
    SUNNY = "sunny"
    PARTLY_CLOUDY = "partly_cloudy"
    CLOUDY = "cloudy"
    OVERCAST = "overcast"
    RAIN = "rain"


#: Fraction of clear-sky irradiance that reaches the panels, by weather.
IRRADIANCE: dict[Weather, float] = {
    Weather.SUNNY: 1.0, Weather.PARTLY_CLOUDY: 0.75, Weather.CLOUDY: 0.45,
    Weather.OVERCAST: 0.25, Weather.RAIN: 0.12,
}
_ORDER = list(Weather)
#: Day-to-day transition weights: weather tends to stay, or move one step.
_TRANSITIONS: dict[Weather, tuple[float, ...]] = {
    Weather.SUNNY: (0.60, 0.25, 0.10, 0.03, 0.02),
    Weather.PARTLY_CLOUDY: (0.30, 0.35, 0.20, 0.10, 0.05),
    Weather.CLOUDY: (0.15, 0.25, 0.30, 0.20, 0.10),
    Weather.OVERCAST: (0.10, 0.15, 0.25, 0.30, 0.20),
    Weather.RAIN: (0.10, 0.15, 0.20, 0.25, 0.30),
}
#: Days of chain replayed to find a day's weather: enough to forget the starting state.
_WEATHER_MEMORY_DAYS = 8

#: Default fleet mix used by `sim keygen --types mix` (fractions of the fleet).
MIX: tuple[tuple[MeterType, float], ...] = (
    (MeterType.SOLAR, 0.40), (MeterType.CONSUMER, 0.25), (MeterType.HYBRID, 0.25), (MeterType.BATTERY, 0.10),
)
#: Registered capacity range (W) by type: panel peak, service size or inverter power.
CAPACITY_RANGE_W: dict[MeterType, tuple[int, int]] = {
    MeterType.SOLAR: (3_000, 10_000), MeterType.CONSUMER: (3_000, 8_000),
    MeterType.HYBRID: (5_000, 15_000), MeterType.BATTERY: (5_000, 10_000),
}


def unit(*parts: int) -> float:
    """A reproducible uniform draw in [0, 1) from integers (splitmix64 over their mix)."""
    x = 0x9E3779B97F4A7C15
    for p in parts:
        x = (x ^ (p & _MASK64)) * 0xBF58476D1CE4E5B9 & _MASK64
        x ^= x >> 31
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9 & _MASK64
    x = (x ^ (x >> 27)) * 0x94D049BB133111EB & _MASK64
    x ^= x >> 31
    return (x >> 11) / float(1 << 53)


@functools.lru_cache(maxsize=65_536)
def salt(text: str) -> int:
    """A stable integer for a meter id (Python's hash() changes per process)."""
    return zlib.crc32(text.encode())


@functools.lru_cache(maxsize=4096)
def weather_on(seed: int, day: int) -> Weather:
    """The site's weather on UTC day number `day`: a Markov chain replayed over the days before."""
    state = Weather.SUNNY
    for d in range(day - _WEATHER_MEMORY_DAYS, day + 1):
        u, acc = unit(seed, 0x57EA, d), 0.0
        for nxt, w in zip(_ORDER, _TRANSITIONS[state], strict=True):
            acc += w
            if u < acc:
                state = nxt
                break
    return state


def solar_shape(local_hour: float) -> float:
    """Clear-sky irradiance 0..1 by local solar hour: a sine from 06:00 to 18:00."""
    if not 6.0 <= local_hour <= 18.0:
        return 0.0
    return float(math.sin(math.pi * (local_hour - 6.0) / 12.0) ** 1.3)


def residential_load(local_hour: float) -> float:
    """Share of peak load at `local_hour`: a night base, a morning peak and a larger evening peak."""
    morning = 0.45 * math.exp(-(((local_hour - 7.5) / 1.2) ** 2))
    evening = 0.85 * math.exp(-(((local_hour - 19.5) / 1.8) ** 2))
    return min(1.0, 0.12 + morning + evening)


def commercial_load(local_hour: float, weekday: int) -> float:
    """Share of peak load: a weekday plateau from 08:00 to 18:00, a low base otherwise."""
    if weekday >= 5:
        return 0.15
    if 8.0 <= local_hour < 18.0:
        return 0.85
    if 7.0 <= local_hour < 8.0 or 18.0 <= local_hour < 19.0:
        return 0.45
    return 0.15


@dataclass(frozen=True, slots=True)
class MeterModel:
    """The physics of one meter. `capacity_w` bounds what it can export in an interval."""

    meter_id: str
    meter_type: MeterType
    capacity_w: int
    fleet_seed: int = 0
    utc_offset_hours: float = SITE_UTC_OFFSET_HOURS
    """Local time of the site (GridTokenX's home, Thailand, is UTC+7): shapes the daily curves."""
    max_reading_wh: int = 100_000
    """TOKENIZATION_MAX_READING_KWH in Wh: a reading never exceeds it, however long the interval."""

    @property
    def commercial(self) -> bool:
        return unit(self.fleet_seed, salt(self.meter_id), 0xC0) < 0.25

    def max_export_wh(self, seconds: int) -> int:
        """The most a reading may export: capacity × interval (the cloud's rule) and the per-reading cap."""
        return min(self.capacity_w * seconds // 3600, self.max_reading_wh)

    def measure(self, start: int, end: int) -> tuple[int, int]:
        """(export_wh, import_wh) for the interval [start, end): non-negative integers."""
        seconds = end - start
        mid = start + seconds / 2 + self.utc_offset_hours * 3600
        hour = (mid % DAY) / 3600
        day = int(mid // DAY)
        weekday = (day + 3) % 7  # 1970-01-01 was a Thursday
        noise = unit(self.fleet_seed, salt(self.meter_id), start)
        jitter = 0.85 + 0.3 * noise
        hours = seconds / 3600

        def solar_w() -> float:
            cloud = IRRADIANCE[weather_on(self.fleet_seed, day)]
            # Passing clouds: the weather factor varies ±20 % from interval to interval.
            cloud = min(1.0, cloud * (0.8 + 0.4 * unit(self.fleet_seed, start // 600, 0x5C)))
            return self.capacity_w * solar_shape(hour) * cloud * (0.95 + 0.05 * noise)

        def load_w(peak_w: float) -> float:
            shape = commercial_load(hour, weekday) if self.commercial else residential_load(hour)
            return peak_w * shape * jitter

        export_w = import_w = 0.0
        if self.meter_type is MeterType.SOLAR:
            export_w, import_w = solar_w(), (8.0 if solar_shape(hour) == 0 else 0.0)
        elif self.meter_type is MeterType.CONSUMER:
            import_w = load_w(self.capacity_w * 0.6)
        elif self.meter_type is MeterType.HYBRID:
            net = solar_w() - load_w(self.capacity_w * 0.35)
            export_w, import_w = max(0.0, net), max(0.0, -net)
        else:
            export_w, import_w = self._battery_w(hour, jitter)
        export_wh = min(round(export_w * hours), self.max_export_wh(seconds))
        return export_wh, round(import_w * hours)

    def _battery_w(self, hour: float, jitter: float) -> tuple[float, float]:
        """Charge 01:00-05:00 at half power, discharge 17:00-21:00 (about 90 % round trip)."""
        if 1.0 <= hour < 5.0:
            return 0.0, self.capacity_w * 0.5
        if 17.0 <= hour < 21.0:
            return self.capacity_w * 0.45 * jitter, 0.0
        return 0.0, 0.0
