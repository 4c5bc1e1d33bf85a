"""The change feed's wire format, with no I/O: Server-Sent Events parsed into typed changes.
Used by `changes.watch` and by the caches that follow the tenant's feed."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict

from omnisdk.models import CartChange, ConsentChange, ContentChange, ResyncChange, SessionChange

RESYNC = "resync"  # the kind of the change that says: changes were missed, reload


class OtherChange(BaseModel):
    """A change of a kind this SDK version does not know (its fields as sent)."""

    model_config = ConfigDict(frozen=True, extra="allow")


ChangeData = CartChange | SessionChange | ConsentChange | ContentChange | ResyncChange | OtherChange
_MODELS: dict[str, type[BaseModel]] = {
    "cart": CartChange,
    "session": SessionChange,
    "consent": ConsentChange,
    "content": ContentChange,
    RESYNC: ResyncChange,
}


@dataclass(frozen=True)
class Change:
    """One change: its position in the shop's feed, its kind ("cart", "session", "consent",
    "content" or "resync") and what changed (`data`, a typed model; `raw`, the JSON)."""

    id: int
    kind: str
    raw: dict[str, Any]

    @functools.cached_property
    def data(self) -> ChangeData:
        """What changed, as the model of its kind (`CartChange` for "cart", and so on)."""
        parsed = _MODELS.get(self.kind, OtherChange).model_validate(self.raw)
        assert isinstance(parsed, ChangeData)
        return parsed


class SseParser:
    """Server-Sent Events, line by line (the WHATWG event-stream format, what we send)."""

    def __init__(self) -> None:
        self._id: str | None = None
        self._event = "message"
        self._data: list[str] = []
        # Where the stream stands: the last id received, even on a block without data (the
        # server states the starting position so), as EventSource's last event ID does.
        self.position: int | None = None

    def feed(self, line: str) -> Change | None:
        if not line:
            change = None
            if self._id is not None and self._id.isascii() and self._id.isdigit():
                self.position = int(self._id)
            if self._data and self.position is not None:
                change = Change(self.position, self._event, json.loads("\n".join(self._data)))
            self._event, self._data = "message", []
            return change
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "id":
            self._id = value
        elif name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        return None
