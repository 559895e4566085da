"""Exponential backoff with a cap, as a value: what the autoscaler keeps per node type (and zone)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Backoff:
    initial_s: float
    max_s: float
    failures: int = 0
    until: float = 0.0
    last_error: str = ""

    def fail(self, now: float, error: str) -> float:
        """Record a failure at `now`; returns the delay before the next try."""
        self.failures += 1
        delay = min(self.initial_s * 2 ** (self.failures - 1), self.max_s)
        self.until, self.last_error = now + delay, error
        return delay

    def active(self, now: float) -> bool:
        return self.until > now
