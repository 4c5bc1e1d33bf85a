"""Strict JSON: the one policy for every request body the server takes and the SDK sends.

I-JSON (RFC 7493) plus what both stores need. Refused: NaN and Infinity (not JSON, RFC 8259
§6) and numbers that overflow to them (`1e400`); integers beyond ±(2^53 - 1), which JavaScript
shops and PostgreSQL's JSON numbers-as-doubles would silently round (RFC 7493 §2.2); duplicate
object keys (RFC 7493 §2.3: which one wins is undefined); strings with a lone surrogate (not
Unicode, RFC 7493 §2.1: neither store can encode them, and reading one back failed forever) or
a NUL character (PostgreSQL's text and jsonb cannot hold it); nesting deeper than
`MAX_BODY_DEPTH`.

`loads` parses bytes for the server: `MalformedJson` when the body is not JSON at all (400),
`StrictJsonError` naming each offending field when it is JSON this policy refuses (422).
`violations` checks a Python value for the SDK before it sends. Both use `bad_value`, which
the event rules (`omnisdk.core.events`) use too.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

MAX_SAFE_INTEGER = 2**53 - 1  # RFC 7493 §2.2; Number.MAX_SAFE_INTEGER
MAX_BODY_DEPTH = 64  # a request body; event properties have their own, smaller limit
_MAX_INTEGER_DIGITS = len(str(MAX_SAFE_INTEGER))
MAX_REPORTED = 20  # more offending fields are not listed (a hostile body may hold millions)

Location = tuple[str | int, ...]


@dataclass(frozen=True)
class Violation:
    """One value the policy refuses: where (`loc`, from the body's root), why, and a stable
    machine-readable `type`."""

    loc: Location
    msg: str
    type: str


class MalformedJson(ValueError):
    """The bytes are not JSON (or not UTF-8)."""


class StrictJsonError(ValueError):
    """JSON that the policy refuses; `violations` names each field."""

    def __init__(self, violations: list[Violation], value: Any = None) -> None:
        super().__init__("; ".join(f"{_dotted(v.loc)}: {v.msg}" for v in violations))
        self.violations = violations
        # What was parsed, with a marker where each refused value stood (`bad_value` knows
        # them): a caller that judges items one by one (an events batch) may go on with it.
        self.value = value


def bad_value(value: Any) -> tuple[str, str] | None:
    """(type, message) if `value` (a JSON leaf or key) breaks the policy, else None."""
    kind = type(value)
    if kind is str:
        if "\x00" in value:
            return "string_nul", "a string holds a NUL character, which PostgreSQL cannot store"
        if value.isascii():
            return None
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return "string_surrogate", "a string holds a lone surrogate (not valid Unicode)"
        return None
    if kind is float and not math.isfinite(value):
        return "number_not_finite", "numbers must be finite (NaN, Infinity and 1e400 are not)"
    if kind is int and not -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
        return "integer_too_large", f"integers must lie within ±{MAX_SAFE_INTEGER} (2^53 - 1)"
    if isinstance(value, _Marker):
        return value.type, value.msg
    return None


def violations(value: Any, limit: int = MAX_REPORTED) -> list[Violation]:
    """Every place where `value` breaks the policy (up to `limit`), walking without recursion:
    a hostile body nested a thousand levels deep must not exhaust the stack."""
    found: list[Violation] = []
    for loc, item, is_key in _walk(value):
        if len(loc) > MAX_BODY_DEPTH:
            found.append(
                Violation(loc[:MAX_BODY_DEPTH], f"nested deeper than {MAX_BODY_DEPTH}", "too_deep")
            )
            break
        problem = bad_value(item)
        if problem is not None:
            found.append(Violation(loc, problem[1] + (" (in a key)" if is_key else ""), problem[0]))
            if len(found) >= limit:
                break
    return found


def check(value: Any) -> None:
    """Raise StrictJsonError if `value` breaks the policy."""
    found = violations(value)
    if found:
        raise StrictJsonError(found)


def strict(value: Any) -> Any:
    """`value` if it keeps the policy; else ValueError (a pydantic validator: the SDK's models
    of free-form JSON refuse NaN at once, where serialising would have sent it as null)."""
    found = violations(value)
    if found:
        raise ValueError(str(StrictJsonError(found)))
    return value


def loads(body: bytes) -> Any:
    """Parse a request body under the policy (see the module's docstring)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedJson(f"the body is not UTF-8 (byte {exc.start} is invalid)") from exc
    parser, decoder = _decoder()
    parser.suspicious = False
    try:
        value = decoder.decode(text)
    except json.JSONDecodeError as exc:
        raise MalformedJson(f"the body is not JSON ({exc.msg} at character {exc.pos})") from exc
    except RecursionError as exc:
        raise StrictJsonError(
            [Violation((), f"nested deeper than {MAX_BODY_DEPTH}", "too_deep")]
        ) from exc
    # Only a body that set off a hook, or holds a \u escape (the only way to write a NUL or a
    # lone surrogate in valid UTF-8 JSON), needs the walk: the common body costs nothing more.
    if parser.suspicious or "\\u" in text:
        found = violations(value)
        if found:
            raise StrictJsonError(found, value)
    return value


_local = threading.local()


def _decoder() -> tuple[_Parser, json.JSONDecoder]:
    """This thread's parser and a decoder calling its hooks, made once: json.loads with hooks
    builds a decoder (and its scanner) on every call. Parsing never yields, so one per thread
    serves every request."""
    made: tuple[_Parser, json.JSONDecoder] | None = getattr(_local, "decoder", None)
    if made is None:
        parser = _Parser()
        decoder = json.JSONDecoder(
            parse_constant=parser.constant,
            parse_int=parser.integer,
            parse_float=parser.float,
            object_pairs_hook=parser.obj,
        )
        made = _local.decoder = (parser, decoder)
    return made


class _Marker:
    """Stands in the parsed value where the text held something refused, so the walk finds
    its location."""

    def __init__(self, type: str, msg: str) -> None:
        self.type = type
        self.msg = msg


class _Parser:
    """json.loads hooks that note anything refused; the value keeps a `_Marker` there."""

    def __init__(self) -> None:
        self.suspicious = False

    def constant(self, name: str) -> _Marker:
        self.suspicious = True
        return _Marker("number_not_finite", f"{name} is not a JSON number")

    def integer(self, digits: str) -> int | _Marker:
        # Checked before converting: int() of 100,000 digits costs seconds, or raises.
        if len(digits.lstrip("-")) > _MAX_INTEGER_DIGITS:
            self.suspicious = True
            return _Marker(
                "integer_too_large", f"integers must lie within ±{MAX_SAFE_INTEGER} (2^53 - 1)"
            )
        number = int(digits)
        if not -MAX_SAFE_INTEGER <= number <= MAX_SAFE_INTEGER:
            self.suspicious = True
        return number

    def float(self, text: str) -> float:
        number = float(text)
        if not math.isfinite(number):
            self.suspicious = True
        return number

    def obj(self, pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        result = dict(pairs)
        if len(result) != len(pairs):
            self.suspicious = True
            seen: set[str] = set()
            for key, _ in pairs:
                if key in seen:
                    result[key] = _Marker(
                        "duplicate_key", "this key appears more than once in its object"
                    )
                seen.add(key)
        return result


def _walk(value: Any) -> Iterator[tuple[Location, Any, bool]]:
    """(location, leaf or key, is it a key) for every leaf and key, depth first."""
    stack: list[tuple[Location, Any]] = [((), value)]
    while stack:
        loc, item = stack.pop()
        if len(loc) > MAX_BODY_DEPTH:
            yield loc, None, False
            return
        if isinstance(item, dict):
            for key, child in item.items():
                name = _loc_name(key)
                yield (*loc, name), key, True
                stack.append(((*loc, name), child))
        elif isinstance(item, list | tuple):
            stack.extend(((*loc, index), child) for index, child in enumerate(item))
        else:
            yield loc, item, False


def _loc_name(key: Any) -> str:
    """A key as it can be named in an error: encodable, without NUL, not too long."""
    text = str(key)
    if text.isascii() and "\x00" not in text and len(text) <= 64:
        return text
    safe = text.encode("utf-8", "backslashreplace").decode("ascii", "backslashreplace")
    safe = safe.replace("\x00", "\\x00")
    return safe if len(safe) <= 64 else safe[:61] + "..."


def _dotted(loc: Location) -> str:
    return ".".join(str(part) for part in loc) or "(the body)"
