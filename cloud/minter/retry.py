"""The retry schedule (pure): exponential backoff from TOKENIZATION_INITIAL_RETRY_DELAY_MINUTES,
doubling per failed attempt, capped at TOKENIZATION_MAX_RETRY_DELAY_MINUTES; dead letter after
TOKENIZATION_MAX_RETRY_ATTEMPTS failed attempts (or at once when retries are disabled)."""

from __future__ import annotations

from dataclasses import dataclass

from cloud.settings import TokenizationSettings


@dataclass(frozen=True, slots=True)
class RetryDecision:
    attempts: int
    delay_seconds: float
    dead_letter: bool


def backoff_seconds(attempts: int, *, initial_minutes: float, max_minutes: float) -> float:
    """Delay after the `attempts`-th failure (1-based): initial × 2^(attempts−1), capped."""
    exponent = min(max(attempts - 1, 0), 60)
    return float(min(initial_minutes * 60.0 * (2**exponent), max_minutes * 60.0))


def after_failure(previous_attempts: int, settings: TokenizationSettings) -> RetryDecision:
    attempts = previous_attempts + 1
    dead = (not settings.retry_enabled) or attempts >= settings.max_retry_attempts
    delay = backoff_seconds(attempts, initial_minutes=settings.initial_retry_delay_minutes,
                            max_minutes=settings.max_retry_delay_minutes)
    return RetryDecision(attempts, delay, dead)
