"""What may travel: text that UTF-8 can encode, finite numbers, values JSON can carry.

Everything a task produces (its result, its exception, its progress, its log lines) is
checked here on its way into an event, and so is every param a client sends. Text is made
safe by the one encoder (:func:`jobcast.events.encode_json`), with :func:`safe_text`: a lone
surrogate (what ``os.listdir`` gives for a file name that is not valid UTF-8, through
``surrogateescape``) becomes U+FFFD, the replacement character, as a UTF-8 decoder shows
such a byte. Numbers that JSON cannot carry are refused where a value is a result or a
param, and dropped where it is a progress reading.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

__all__ = [
    "MAX_INT_BITS",
    "REPLACEMENT",
    "SURROGATE",
    "NotJson",
    "check_json",
    "clean",
    "describe",
    "finite",
    "safe_text",
    "shown_errors",
    "travel_problem",
]

#: A lone surrogate: a code point UTF-8 cannot encode.
SURROGATE = re.compile("[\ud800-\udfff]")
REPLACEMENT = "\ufffd"
#: Integers past about 4,200 digits are refused: Python will not print them as JSON
#: (``sys.get_int_max_str_digits``) and no JSON reader would take them as numbers anyway.
MAX_INT_BITS = 14_000
#: How deep a result may nest: deeper would exhaust the encoder's recursion.
MAX_DEPTH = 100


def safe_text(text: str) -> str:
    """``text`` with every lone surrogate replaced by U+FFFD, so that UTF-8 can encode it."""
    if text.isascii():
        return text
    try:
        text.encode()
    except UnicodeEncodeError:
        return SURROGATE.sub(REPLACEMENT, text)
    return text


def describe(value: object, limit: int | None = None) -> str:
    """``str(value)``, cut to ``limit`` characters (saying so); never raises, even for an
    object whose ``__str__`` does."""
    try:
        text = value if isinstance(value, str) else str(value)
        if not isinstance(text, str):  # a __str__ that returned something else
            raise TypeError(f"__str__ returned {type(text).__name__}")
    except Exception as exc:
        text = f"<{_type_name(value)} object: its str() raised {_type_name(exc)}>"
    if limit is not None and len(text) > limit:
        marker = f" [… cut: {len(text):,} characters in all]"
        text = text[: max(limit - len(marker), 0)] + marker
    return text


def finite(value: object) -> float | None:
    """``value`` as a finite number, or None when it is none (NaN, infinite, not a number)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        try:
            number = float(value)
        except OverflowError:
            return None
        return value if abs(value) < 2**53 else number
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    try:
        number = float(value)  # type: ignore[arg-type]  # numpy scalars, Decimal, Fraction
    except (TypeError, ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


class NotJson(ValueError):
    """Raised by :func:`check_json` for a value JSON cannot carry; says where and why."""

    def __init__(self, where: str, reason: str) -> None:
        self.where = where
        self.reason = reason
        super().__init__(f"{where} {reason}")


def check_json(value: Any, *, name: str = "the value") -> None:
    """Check that JSON can carry ``value``: what ``json`` takes (dicts with string keys,
    lists, tuples, strings, finite numbers, booleans, None), nested at most 100 deep.

    Raises :class:`NotJson` naming the first place, from ``name``, that holds anything
    else: bytes, NaN or an infinity, an integer too long to print, a cycle, a nesting too
    deep, or an object of another type. Text is not checked: the encoder makes it safe.
    """
    _check(value, name, 0, set())


def _check(value: Any, where: str, depth: int, seen: set[int]) -> None:
    if value is None or isinstance(value, bool | str):
        return
    if isinstance(value, int):
        if value.bit_length() > MAX_INT_BITS:
            raise NotJson(where, "is an integer too long for JSON; return it as a string")
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise NotJson(where, f"is {value!r}, which JSON cannot carry; return None instead")
        return
    if not isinstance(value, dict | list | tuple):
        kind = _type_name(value)
        raise NotJson(where, f"is {kind}, which JSON cannot carry; {_instead(value)}")
    if depth >= MAX_DEPTH:
        raise NotJson(where, f"nests deeper than {MAX_DEPTH} levels; flatten it")
    if id(value) in seen:
        raise NotJson(where, "contains itself (a cycle); return a tree, not a graph")
    seen.add(id(value))
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise NotJson(where, f"has a key of type {_type_name(key)}; JSON keys are strings")
            _check(item, f"{where}[{describe(key, 40)!r}]", depth + 1, seen)
    else:
        for i, item in enumerate(value):
            _check(item, f"{where}[{i}]", depth + 1, seen)
    seen.discard(id(value))


def clean(value: Any, depth: int = 0) -> Any:
    """A copy of ``value`` that JSON can always carry, at the cost of fidelity: what it
    cannot carry becomes None (numbers) or its description (anything else). For the
    encoder's last resort only; values are checked where they enter."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return value if value.bit_length() <= MAX_INT_BITS else describe(value, 80)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if depth < MAX_DEPTH and isinstance(value, dict):
        return {describe(key, 200): clean(item, depth + 1) for key, item in value.items()}
    if depth < MAX_DEPTH and isinstance(value, list | tuple):
        return [clean(item, depth + 1) for item in value]
    return describe(value, 200)


def _type_name(value: object) -> str:
    try:
        return type(value).__name__
    except Exception:  # a type may lie about its name, but it cannot refuse to have one
        return "an object"


def _instead(value: object) -> str:
    if isinstance(value, bytes | bytearray | memoryview):
        return "decode it to text first"
    if isinstance(value, set | frozenset):
        return "return a list instead"
    return "return dicts, lists, strings, numbers, booleans or None"


def travel_problem(value: object) -> tuple[str, str] | None:
    """Why one JSON scalar cannot travel, as ``(kind, message)``, or None when it can.

    For params as a client sent them: text with a lone surrogate, and numbers that are not
    finite, are refused (a param is the client's to fix, not ours to change).
    """
    if isinstance(value, str):
        if value.isascii() or safe_text(value) is value:
            return None
        return (
            "string_unicode",
            "this text holds a lone surrogate (such as \\ud800), which is not text UTF-8 "
            "can carry; send valid Unicode",
        )
    if isinstance(value, float) and not math.isfinite(value):
        return (
            "finite_number",
            f"this number is {value!r}: NaN, Infinity and numbers too large (such as 1e999) "
            "are not numbers JSON can carry; send a finite number",
        )
    if isinstance(value, int) and not isinstance(value, bool):
        if value.bit_length() > MAX_INT_BITS:
            return ("int_too_long", "this integer is too long to handle; send a smaller one")
    return None


#: Characters of a client's string, and items of its list or object, echoed in a 422.
_ECHO_TEXT = 200
_ECHO_ITEMS = 20


def shown_errors(errors: Sequence[Any]) -> list[dict[str, Any]]:
    """Validation errors as a 422 shows them (FastAPI's ``detail`` items), with each
    error's ``input`` echoed only as far as it is short, and numbers JSON cannot carry
    written as text: a 45 MB param is not sent back, and ``NaN`` is not a 500."""
    shown_all: list[dict[str, Any]] = []
    for error in errors:
        if not isinstance(error, dict):
            shown_all.append({"msg": describe(error, 1000)})
            continue
        shown = {key: value for key, value in error.items() if key not in ("input", "ctx")}
        if "input" in error:
            shown["input"] = _echo(error["input"], 0)
        if isinstance(error.get("ctx"), dict):
            shown["ctx"] = {str(key): _echo(value, 0) for key, value in error["ctx"].items()}
        shown_all.append(shown)
    return shown_all


def _echo(value: Any, depth: int) -> Any:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return describe(value, _ECHO_TEXT)
    if isinstance(value, int):
        return value if value.bit_length() <= 64 else describe(value, 40)
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, dict | list | tuple):
        if depth >= 3 or len(value) > _ECHO_ITEMS:
            kind = "object" if isinstance(value, dict) else "list"
            return f"<an {kind} of {len(value)} items, not echoed>"
        if isinstance(value, dict):
            return {
                describe(key, _ECHO_TEXT): _echo(item, depth + 1) for key, item in value.items()
            }
        return [_echo(item, depth + 1) for item in value]
    return describe(value, _ECHO_TEXT)
