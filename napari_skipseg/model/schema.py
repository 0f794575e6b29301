"""Typed validation of the JSON files the project reads (model configs and cards, training
recipes, the active-model file), one small vocabulary for all of them.

Every JSON file is read with :func:`read_json`: bounded in size, strict UTF-8, parsed with
Python's limits turned into one error naming the file (an integer of thousands of digits,
nesting deeper than :data:`MAX_DEPTH`). The parsed value is then checked against a *spec*
built from :class:`Int`, :class:`Num`, :class:`Bool`, :class:`Str`, :class:`Nullable`,
:class:`List`, :class:`Obj`, :class:`OneOf` and :class:`AnyJSON`: ``True`` is not an
integer, ``2.0`` is not an integer, numbers are finite and in range, strings and lists are
bounded. :func:`check` raises the caller's error class with a message naming the field
(``postprocess.seed must be a number from 0 to 1, got 'x'``); the caller adds the file.
"""

from __future__ import annotations

import json
import math
import numbers
import re
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

#: Largest JSON file read (bytes); a model config with its card is a few kB.
MAX_JSON_BYTES = 4 * 1024 * 1024
#: Deepest nesting of lists/objects accepted anywhere.
MAX_DEPTH = 32
#: Longest string accepted where a spec does not say otherwise.
MAX_STR = 100_000
#: Longest list/object accepted where a spec does not say otherwise.
MAX_ITEMS = 10_000


class Invalid(ValueError):
    """A value does not fit its spec (converted to the caller's error class by :func:`check`)."""


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _where(path: str) -> str:
    return path or "the value"


class Spec:
    """Base of the specs: ``validate(value, path)`` raises :class:`Invalid` or returns None."""

    def validate(self, value: Any, path: str) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def describe(self) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    def fail(self, value: Any, path: str) -> Invalid:
        return Invalid(f"{_where(path)} must be {self.describe()}, got {_short(value)}")


class Int(Spec):
    """An integer (not a bool, not a float such as ``2.0``; numpy integers are fine) from
    ``lo`` to ``hi``."""

    def __init__(self, lo: int | None = None, hi: int | None = None) -> None:
        self.lo, self.hi = lo, hi

    def describe(self) -> str:
        if self.lo is not None and self.hi is not None:
            return f"an integer from {self.lo} to {self.hi}"
        if self.lo is not None:
            return f"an integer >= {self.lo}"
        return "an integer"

    def validate(self, value: Any, path: str) -> None:
        if not isinstance(value, numbers.Integral) or isinstance(value, bool):
            raise self.fail(value, path)
        if (self.lo is not None and value < self.lo) or (self.hi is not None and value > self.hi):
            raise self.fail(value, path)


class Num(Spec):
    """A finite real number (int or float, not a bool) in ``[lo, hi]`` (``lo_open``: ``lo`` excluded)."""

    def __init__(self, lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
                 finite: bool = True) -> None:
        self.lo, self.hi, self.lo_open, self.finite = lo, hi, lo_open, finite

    def describe(self) -> str:
        if self.lo is not None and self.hi is not None:
            low = f"above {self.lo:g}" if self.lo_open else f"from {self.lo:g}"
            return f"a number {low} to {self.hi:g}"
        if self.lo is not None:
            return f"a number {'>' if self.lo_open else '>='} {self.lo:g}"
        return "a finite number" if self.finite else "a number"

    def validate(self, value: Any, path: str) -> None:
        if not isinstance(value, numbers.Real) or isinstance(value, bool):
            raise self.fail(value, path)
        if isinstance(value, numbers.Integral):
            value = float(value) if abs(value) < 2**1000 else math.copysign(math.inf, value)
        value = float(value)
        if math.isnan(value):
            if self.finite or self.lo is not None or self.hi is not None:
                raise self.fail(value, path)
            return
        if self.finite and not math.isfinite(value):
            raise self.fail(value, path)
        if self.lo is not None and (value < self.lo or (self.lo_open and value == self.lo)):
            raise self.fail(value, path)
        if self.hi is not None and value > self.hi:
            raise self.fail(value, path)


class Bool(Spec):
    def describe(self) -> str:
        return "true or false"

    def validate(self, value: Any, path: str) -> None:
        if not isinstance(value, bool):
            raise self.fail(value, path)


class Str(Spec):
    """A string of at most ``max_len`` characters, one of ``choices`` or matching ``pattern``."""

    def __init__(self, max_len: int = MAX_STR, *, choices: tuple[str, ...] | None = None,
                 pattern: str | None = None, what: str | None = None, min_len: int = 0) -> None:
        self.max_len, self.choices, self.min_len = max_len, choices, min_len
        self.pattern = re.compile(pattern) if pattern else None
        self.what = what

    def describe(self) -> str:
        if self.choices:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        if self.what:
            return self.what
        return f"a string of {self.min_len} to {self.max_len} characters"

    def validate(self, value: Any, path: str) -> None:
        if not isinstance(value, str) or not self.min_len <= len(value) <= self.max_len:
            raise self.fail(value, path)
        if self.choices is not None and value not in self.choices:
            raise self.fail(value, path)
        if self.pattern is not None and not self.pattern.fullmatch(value):
            raise self.fail(value, path)


class Nullable(Spec):
    def __init__(self, inner: Spec) -> None:
        self.inner = inner

    def describe(self) -> str:
        return f"null or {self.inner.describe()}"

    def validate(self, value: Any, path: str) -> None:
        if value is not None:
            self.inner.validate(value, path)


class OneOf(Spec):
    def __init__(self, *options: Spec) -> None:
        self.options = options

    def describe(self) -> str:
        return " or ".join(o.describe() for o in self.options)

    def validate(self, value: Any, path: str) -> None:
        for option in self.options:
            try:
                option.validate(value, path)
                return
            except Invalid:
                continue
        raise self.fail(value, path)


class List(Spec):
    """A list (a JSON array) of ``item`` with ``min_len`` to ``max_len`` entries."""

    def __init__(self, item: Spec, min_len: int = 0, max_len: int = MAX_ITEMS) -> None:
        self.item, self.min_len, self.max_len = item, min_len, max_len

    def describe(self) -> str:
        n = (f"{self.min_len}" if self.min_len == self.max_len
             else f"{self.min_len} to {self.max_len}")
        return f"a list of {n} entries, each {self.item.describe()}"

    def validate(self, value: Any, path: str) -> None:
        if not isinstance(value, list | tuple) or not self.min_len <= len(value) <= self.max_len:
            raise self.fail(value, path)
        for i, item in enumerate(value):
            self.item.validate(item, f"{path}[{i}]")


class Obj(Spec):
    """A JSON object with the keys of ``fields`` (each optional unless in ``required``);
    other keys are refused unless ``extra`` gives a spec for their values."""

    def __init__(self, fields: Mapping[str, Spec], *, extra: Spec | None = None,
                 required: tuple[str, ...] = (), max_items: int = MAX_ITEMS) -> None:
        self.fields, self.extra, self.required, self.max_items = dict(fields), extra, required, max_items

    def describe(self) -> str:
        return "an object" + (f" with the keys {', '.join(self.fields)}" if self.fields and self.extra is None else "")

    def validate(self, value: Any, path: str) -> None:
        if not isinstance(value, Mapping) or len(value) > self.max_items:
            raise self.fail(value, path)
        for key in self.required:
            if key not in value:
                raise Invalid(f"{_where(path)} lacks the key {key!r}")
        for key, item in value.items():
            if not isinstance(key, str):
                raise Invalid(f"{_where(path)} has a key that is not a string: {_short(key)}")
            sub = f"{path}.{key}" if path else key
            spec = self.fields.get(key, self.extra)
            if spec is None:
                known = ", ".join(self.fields) or "none"
                raise Invalid(f"{_where(path)} has an unknown key {_short(key, 40)} (known: {known})")
            spec.validate(item, sub)


class AnyJSON(Spec):
    """Any JSON value (free-form text of a card), bounded in depth, length and size."""

    def __init__(self, max_depth: int = 8, max_str: int = MAX_STR, max_items: int = MAX_ITEMS) -> None:
        self.max_depth, self.max_str, self.max_items = max_depth, max_str, max_items

    def describe(self) -> str:
        return f"plain JSON nested at most {self.max_depth} deep"

    def validate(self, value: Any, path: str, depth: int = 0) -> None:
        if depth > self.max_depth:
            raise Invalid(f"{_where(path)} is nested more than {self.max_depth} levels deep")
        if value is None or isinstance(value, bool | int):
            return
        if isinstance(value, float):
            return
        if isinstance(value, str):
            if len(value) > self.max_str:
                raise Invalid(f"{_where(path)} is a string of {len(value)} characters (at most {self.max_str})")
            return
        if isinstance(value, list | tuple):
            if len(value) > self.max_items:
                raise Invalid(f"{_where(path)} has {len(value)} entries (at most {self.max_items})")
            for i, item in enumerate(value):
                self.validate(item, f"{path}[{i}]", depth + 1)
            return
        if isinstance(value, Mapping):
            if len(value) > self.max_items:
                raise Invalid(f"{_where(path)} has {len(value)} keys (at most {self.max_items})")
            for key, item in value.items():
                if not isinstance(key, str):
                    raise Invalid(f"{_where(path)} has a key that is not a string: {_short(key)}")
                self.validate(item, f"{path}.{key}" if path else key, depth + 1)
            return
        raise Invalid(f"{_where(path)} is a {type(value).__name__}, not plain JSON")


def check(spec: Spec, value: Any, path: str = "", error: Callable[[str], Exception] = ValueError) -> None:
    """Raise ``error(message)`` if ``value`` does not fit ``spec``."""
    try:
        spec.validate(value, path)
    except Invalid as err:
        raise error(str(err)) from None
    except RecursionError:
        raise error(f"{_where(path)} is nested too deeply") from None


def _depth_ok(value: Any, limit: int) -> bool:
    """Whether ``value`` nests lists/objects at most ``limit`` deep (iterative, no recursion)."""
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth >= limit:
            return False
        stack.extend((child, depth + 1) for child in children)
    return True


def read_json(path: str | Path, error: Callable[[str], Exception] = ValueError, *,
              max_bytes: int = MAX_JSON_BYTES, what: str = "JSON file") -> Any:
    """The value of the JSON file ``path``; anything wrong raises ``error`` with one line naming
    the file: unreadable, larger than ``max_bytes``, not UTF-8, not JSON, an integer beyond
    Python's digit limit, nesting deeper than :data:`MAX_DEPTH`."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            raw = fh.read(max_bytes + 1)
    except OSError as err:
        raise error(f"{path}: cannot read the {what} ({err.strerror or err})") from None
    return parse_json(raw, path, error, max_bytes=max_bytes, what=what)


def parse_json(raw: bytes | str, source: str | Path, error: Callable[[str], Exception] = ValueError, *,
               max_bytes: int = MAX_JSON_BYTES, what: str = "JSON file") -> Any:
    """:func:`read_json` for bytes already read (``source`` names them in errors)."""
    if len(raw) > max_bytes:
        raise error(f"{source}: the {what} is larger than {max_bytes // 1024} kB; refused")
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise error(f"{source}: the {what} is not UTF-8 text (bad byte at offset {err.start})") from None
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as err:
        raise error(f"{source}: the {what} is not valid JSON ({err.msg} at line {err.lineno} "
                    f"column {err.colno})") from None
    except RecursionError:
        raise error(f"{source}: the {what} nests lists/objects too deeply (at most {MAX_DEPTH})") from None
    except ValueError as err:  # e.g. an integer beyond sys.get_int_max_str_digits()
        text = str(err).splitlines()[0] if str(err) else type(err).__name__
        if "integer string conversion" in text:
            limit = getattr(sys, "get_int_max_str_digits", lambda: 4300)()
            text = f"an integer of more than {limit} digits"
        raise error(f"{source}: the {what} holds a value Python refuses to parse ({text[:120]})") from None
    if not _depth_ok(value, MAX_DEPTH):
        raise error(f"{source}: the {what} nests lists/objects more than {MAX_DEPTH} deep")
    return value
