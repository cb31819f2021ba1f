"""Checks of single received values: one JSON field of a header or a record at a time.

Every check returns the value (as its Python type) or raises ProtocolError naming the field, so
the message and record checks (wire.validation, wire.results) read as one line per field. Nothing
here knows a message type.
"""

from __future__ import annotations

import math
from typing import Any, NoReturn

import numpy as np

MAX_INT = (1 << 63) - 1
"""Largest integer field: what every other language can hold."""
MAX_NAME = 256
"""Characters of a stream, stage or counter name."""
MAX_AUTH = 128
"""Characters of a sender's auth string."""
MAX_SIDE = 16384
"""Largest frame width or height, pixels."""
MAX_COORD = float(1 << 20)
"""Largest box coordinate magnitude, pixels: far outside any frame, safe for int32 drawing."""


class ProtocolError(ValueError):
    """A message that is not a valid streamseg message of this protocol version."""


def fail(what: str, must: str, value: Any) -> NoReturn:
    raise ProtocolError(f"{what} must be {must}, got {show(value)}")


def show(value: Any) -> str:
    """A short description of a received value for an error message."""
    if isinstance(value, np.ndarray):
        return f"{value.dtype}{list(value.shape)}"
    try:
        text = repr(value)
    except ValueError:  # an int longer than Python prints (sys.get_int_max_str_digits)
        return f"a {type(value).__name__} too large to show"
    return text if len(text) <= 60 else text[:57] + "..."


def exact_keys(record: dict[str, Any], expected: frozenset[str], what: str) -> None:
    """ProtocolError naming the keys of `record` that are missing from or foreign to `expected`."""
    missing = sorted(expected - record.keys())
    if missing:
        raise ProtocolError(f"{what} misses field(s) {', '.join(missing)}")
    unknown = [k for k in record if k not in expected]
    if unknown:
        raise ProtocolError(f"{what} has unknown field(s) {show(unknown)}")


def check_number(value: Any, what: str) -> float:
    """`value` as a float; ProtocolError naming `what` unless it is a JSON number."""
    if type(value) not in (int, float):
        raise ProtocolError(f"{what} is not a number")
    try:
        return float(value)
    except OverflowError:  # an integer too large for a float
        raise ProtocolError(f"{what} is out of range") from None


def check_int(value: Any, what: str) -> int:
    """`value` as an int; ProtocolError naming `what` unless it is a JSON integer."""
    if type(value) is not int:
        raise ProtocolError(f"{what} is not an integer")
    return value


def integer(value: Any, what: str, *, lo: int = 0, hi: int = MAX_INT) -> int:
    """A JSON integer in [lo, hi] (a bool is not one)."""
    if type(value) is not int or not lo <= value <= hi:  # type(): a bool is not an int here
        fail(what, f"an integer in [{lo}, {hi}]", value)
    return value


def optional_int(value: Any, what: str) -> int | None:
    return None if value is None else integer(value, what)


def finite(value: Any, what: str, *, lo: float = -math.inf, hi: float = math.inf) -> float:
    """A finite JSON number in [lo, hi], as a float."""
    if type(value) in (int, float):
        try:
            x = float(value)
        except OverflowError:
            x = math.nan
        if math.isfinite(x) and lo <= x <= hi:
            return x
    bounds = "" if lo == -math.inf and hi == math.inf else f" in [{lo:g}, {hi:g}]"
    fail(what, f"a finite number{bounds}", value)


def any_float(value: Any, what: str) -> float:
    """A JSON number, NaN included (a latency percentile before the first frame)."""
    if type(value) not in (int, float):
        fail(what, "a number", value)
    return check_number(value, what)


def boolean(value: Any, what: str) -> bool:
    if type(value) is not bool:
        fail(what, "true or false", value)
    return value


def text(value: Any, what: str, *, max_len: int | None = None) -> str:
    """A string of valid Unicode (no lone surrogates: it is written to files and logs)."""
    if isinstance(value, str) and (max_len is None or len(value) <= max_len):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            pass
        else:
            return value
    fail(what, "a string" + (f" of at most {max_len} characters" if max_len else ""), value)


def check_name(value: Any, what: str) -> str:
    """`value` if it is a valid stream, stage or counter name; else ProtocolError naming `what`.

    1-256 printable characters, no / or \\, not . or ..: a name becomes a ZeroMQ topic, a log
    word and part of a file name. (Sources can check user-given stream ids with it up front.)
    """
    if (
        not isinstance(value, str)
        or not 0 < len(value) <= MAX_NAME
        or not value.isprintable()  # also refuses lone surrogates
        or "/" in value
        or "\\" in value
        or value in (".", "..")
    ):
        fail(what, f"1-{MAX_NAME} printable characters without / or \\", value)
    return value


def side(value: Any, what: str) -> int:
    """A frame width or height, pixels."""
    return integer(value, what, lo=1, hi=MAX_SIDE)
