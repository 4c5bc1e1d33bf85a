"""The pattern every resource follows: calls built once (pure `Call` builders), operations
declared once (`@operation`), and one resource class serving both clients."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from pydantic import BaseModel

from omnisdk._base import Call
from omnisdk.resources._operation import (
    MISS,
    Append,
    Blocking,
    Flow,
    OnClient,
    local,
    operation,
    send,
)

if TYPE_CHECKING:
    from omnisdk._async import AsyncClient
    from omnisdk._sync import Client

M = TypeVar("M", bound=BaseModel)
C = TypeVar("C", bound="Client | AsyncClient")


def model(cls: type[M]) -> Callable[[Any], M]:
    """A parser that validates an answer's JSON into `cls`."""
    return cls.model_validate


class Resource(Generic[C]):
    """A group of operations on one domain, bound to the client that runs them: a resource of
    `Client` has blocking methods, the same resource of `AsyncClient` coroutine methods."""

    def __init__(self, client: C) -> None:
        self._client = client

    def __repr__(self) -> str:
        return f"<{type(self).__name__} of {self._client!r}>"


__all__ = [
    "MISS",
    "Append",
    "Blocking",
    "Call",
    "Flow",
    "OnClient",
    "Resource",
    "local",
    "model",
    "operation",
    "send",
]
