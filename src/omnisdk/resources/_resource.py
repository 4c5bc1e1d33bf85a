"""The pattern every resource follows: calls built once, executed by a sync or async client."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel

from omnisdk._base import Call

if TYPE_CHECKING:
    from omnisdk._async import AsyncClient
    from omnisdk._sync import Client

M = TypeVar("M", bound=BaseModel)


def model(cls: type[M]) -> Callable[[Any], M]:
    """A parser that validates an answer's JSON into `cls`."""
    return cls.model_validate


class SyncResource:
    def __init__(self, client: Client) -> None:
        self._client = client


class AsyncResource:
    def __init__(self, client: AsyncClient) -> None:
        self._client = client


__all__ = ["AsyncResource", "Call", "SyncResource", "model"]
