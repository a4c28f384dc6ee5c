"""ConfigError and the checks every config and spec field goes through: a message that names the field, shows
the value safely (huge ints, deep nesting) and says what is allowed."""

from __future__ import annotations

import math
from typing import Any


class ConfigError(ValueError):
    """A config value outside what is allowed; the message names the field."""


def _shown(value: Any, limit: int = 80) -> str:
    """repr of a value for a message: short, and safe on hostile values (huge ints, deep nesting)."""
    try:
        text = repr(value)
    except (ValueError, RecursionError):  # ints past Python's digit limit, nesting past the recursion limit
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[:limit - 5] + " ...>"


def _fail(path: str, value: Any, allowed: str) -> None:
    raise ConfigError(f"{path} = {_shown(value)} is not allowed: {allowed}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    try:
        return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)
    except OverflowError:  # an int too large for a float
        return False


def _int(path: str, v: Any, lo: int, hi: int | None = None) -> None:
    if not _is_int(v) or v < lo or (hi is not None and v > hi):
        _fail(path, v, f"an integer ≥ {lo}" if hi is None else f"an integer in [{lo}, {hi}]")


def _num(path: str, v: Any, lo: float, hi: float, lo_open: bool = False) -> None:
    ok = _is_num(v) and (v > lo if lo_open else v >= lo) and v <= hi
    if not ok:
        bracket = "(" if lo_open else "["
        _fail(path, v, f"a finite number in {bracket}{lo}, {hi}]")


def _choice(path: str, v: Any, allowed: tuple[str, ...]) -> None:
    if v not in allowed:
        _fail(path, v, "one of " + ", ".join(allowed))
