"""Integer energy and token arithmetic. No floats ever touch an amount."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from fractions import Fraction


def parse_ratio(text: str | float | Decimal | Fraction) -> Fraction:
    """Parse TOKENIZATION_KWH_TO_TOKEN_RATIO ("1.0", "0.5", "3/2") into an exact fraction."""
    if isinstance(text, Fraction):
        ratio = text
    elif isinstance(text, float):
        ratio = Fraction(Decimal(repr(text)))
    else:
        try:
            ratio = Fraction(Decimal(str(text))) if "/" not in str(text) else Fraction(str(text))
        except (InvalidOperation, ValueError) as exc:
            raise ValueError(f"token ratio {text!r} is not a decimal number") from exc
    if ratio < 0:
        raise ValueError(f"token ratio {text!r} must not be negative")
    return ratio


def entitled_base_units(total_wh: int, *, ratio: Fraction, decimals: int) -> int:
    """Token base units a meter is entitled to for `total_wh` of validated export, rounded down.

    tokens = kWh × ratio, base units = tokens × 10^decimals, kWh = Wh / 1000. Minting is cumulative
    (entitled(total) − already minted), so the rounded-down remainder carries to the next mint.
    """
    numerator: int = total_wh * ratio.numerator * 10**decimals
    return numerator // (1000 * ratio.denominator)


def wh_to_kwh_text(wh: int) -> str:
    """Wh as an exact kWh decimal string with three places, for humans and the legacy format."""
    sign = "-" if wh < 0 else ""
    whole, frac = divmod(abs(wh), 1000)
    return f"{sign}{whole}.{frac:03d}"


def base_units_to_tokens_text(amount: int, decimals: int) -> str:
    """Base units as an exact token decimal string."""
    if decimals == 0:
        return str(amount)
    sign = "-" if amount < 0 else ""
    whole, frac = divmod(abs(amount), 10**decimals)
    return f"{sign}{whole}.{frac:0{decimals}d}"
