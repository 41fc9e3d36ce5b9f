"""The per-meter limits (edge/guard.py) with an injected clock: an honest catch-up passes, a flood is
cut off within a few thousand messages (before the edge broker's session queue could fill)."""

from __future__ import annotations

from edge.guard import Guard, Limits, meter_of_topic


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_honest_catch_up_passes_and_a_flood_is_cut_off_fast() -> None:
    clock = Clock()
    cut: list[tuple[str, str]] = []
    guard = Guard(Limits(), clock=clock, on_cut_off=lambda m, why: cut.append((m, why)))
    # A meter replaying 10,000 readings of 350 B at 1,000/s (a long outage), then one per 15 min.
    for _ in range(10_000):
        clock.t += 0.001
        assert guard.admit("meters/honest/readings", 350) is None
    # A flood of 4,000-byte payloads at 50,000/s from another meter.
    n = 0
    while guard.admit("meters/flood/readings", 4000) is None:
        clock.t += 0.00002
        n += 1
    assert n < 2_200, f"cut off only after {n} messages"
    assert cut == [("flood", cut[0][1])] and "bytes" in cut[0][1]
    # From then on every message of that meter is charged to it; the honest meter is unaffected.
    assert guard.admit("meters/flood/readings", 10) == "flood"
    assert guard.admit("meters/honest/readings", 350) is None


def test_many_small_messages_are_cut_off_by_count() -> None:
    clock = Clock()
    guard = Guard(Limits(), clock=clock)
    n = 0
    while guard.admit("meters/chatty/readings", 20) is None:
        clock.t += 0.00001
        n += 1
    assert 10_000 <= n < 10_100
    assert "messages" in guard.cut_off["chatty"]


def test_limits_off_and_topic_parsing() -> None:
    guard = Guard(Limits(rate=0))
    assert all(guard.admit("meters/x/readings", 4000) is None for _ in range(50_000))
    assert meter_of_topic("meters/M-1/readings") == "M-1"
    assert meter_of_topic("elsewhere") == "elsewhere"
