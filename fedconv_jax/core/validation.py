"""Self-validating settings: one error type that names the field, the value and what is allowed.

Settings dataclasses check themselves in `__post_init__` with these helpers; the config layer
adds the section path (`within`), so a bad `--config.fedconv.filters.init=zeros` reads
`config.fedconv.filters.init='zeros' is not allowed: one of identity, random`.
"""

import contextlib
import math
from collections.abc import Iterable

MAX_INT = 2**31 - 1  # int32: counts and epochs all end up as device integers


class FieldError(ValueError):
    """A setting that is not allowed; the message is one line: field, value, allowed."""

    def __init__(self, field: str, value, allowed: str):
        super().__init__(f"{field}={value!r} is not allowed: {allowed}")
        self.field, self.value, self.allowed = field, value, allowed


@contextlib.contextmanager
def within(section: str):
    """Prefixes the field of any FieldError raised inside with `section.`."""
    try:
        yield
    except FieldError as error:
        raise FieldError(f"{section}.{error.field}", error.value, error.allowed) from None


def check_choice(field: str, value, allowed: Iterable) -> None:
    allowed = tuple(allowed)
    if isinstance(value, bool) or value not in allowed:
        raise FieldError(field, value, "one of " + ", ".join(map(str, allowed)))


def check_bool(field: str, value) -> None:
    if not isinstance(value, bool):
        raise FieldError(field, value, "true or false")


def check_int(field: str, value, minimum: int = 1, maximum: int = MAX_INT) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        raise FieldError(field, value, f"an integer in [{minimum}, {maximum}]")


def check_number(field: str, value, low: float, high: float, low_open: bool = False, high_open: bool = False) -> None:
    """A finite int or float in the interval [low, high] (either end open on request)."""
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise FieldError(field, value, f"a finite number in {interval}")


__all__ = ["MAX_INT", "FieldError", "check_bool", "check_choice", "check_int", "check_number", "within"]
