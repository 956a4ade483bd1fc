"""How cvlab writes a length of time for people: one formatter for the lock's messages and the report's plan."""
from __future__ import annotations


def duration(seconds: float) -> str:
    """'45 s' under 2 minutes, '12 min' under 2 hours, then '2 h 3 min' (rounded to the second, then the minute)."""
    seconds = round(seconds)
    if seconds < 120:
        return f"{seconds} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 120 else f"{minutes // 60} h {minutes % 60} min"
