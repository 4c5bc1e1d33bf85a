"""Tenant-defined junk identifier patterns, run in linear time with RE2.

A shop's admin writes these patterns, and every identify of every tenant waits for them on
the event loop: with Python's backtracking `re`, `(a+)+$` against 27 a's held every tenant for
4.8 s, doubling with each character. RE2 (google-re2) matches in time linear in the input and
refuses what needs backtracking (back-references, look-around); patterns are also bounded in
length and RE2's memory, and refused when the settings are saved.
"""

from __future__ import annotations

import logging

import re2

from omnisdk.core.identifiers import JunkMatcher as JunkPattern

MAX_PATTERN_LENGTH = 200
MAX_PATTERNS = 50
_MAX_PROGRAM_BYTES = 1 << 20  # RE2's memory budget per pattern: a{1000}{1000} is refused

log = logging.getLogger("omnisdk.server")


def _options() -> re2.Options:
    options = re2.Options()
    options.case_sensitive = False
    options.log_errors = False  # a refused pattern is answered, not printed to stderr
    options.max_mem = _MAX_PROGRAM_BYTES
    return options


def compile_pattern(pattern: str) -> JunkPattern:
    """One pattern for linear-time matching; ValueError says what to change."""
    if not pattern or len(pattern) > MAX_PATTERN_LENGTH:
        raise ValueError(f"junk patterns are 1-{MAX_PATTERN_LENGTH} characters")
    try:
        compiled: JunkPattern = re2.compile(pattern, _options())
    except re2.error as exc:
        reason = exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else exc
        raise ValueError(
            f"junk pattern {pattern!r} is not a pattern RE2 can run in linear time ({reason}); "
            "back-references and look-around are not supported"
        ) from None
    return compiled


def compile_patterns(patterns: list[str]) -> tuple[JunkPattern, ...]:
    """Every pattern compiled; raises ValueError naming the first bad one (saving settings)."""
    return tuple(compile_pattern(pattern) for pattern in patterns)


def compile_stored(tenant_id: str, patterns: list[str]) -> tuple[JunkPattern, ...]:
    """The patterns of stored settings, leaving out those RE2 refuses: settings saved before
    patterns were checked this way must not fail every request of their tenant."""
    compiled = []
    for index, pattern in enumerate(patterns):
        try:
            compiled.append(compile_pattern(pattern))
        except ValueError:
            log.warning(
                "a stored junk pattern is ignored: save the settings again to fix it",
                extra={"tenant_id": tenant_id, "pattern_index": index},
            )
    return tuple(compiled)
