"""The pattern every resource follows: calls built once (pure `Call` builders), operations
declared once (`@operation`), and one resource class serving both clients."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, TypeGuard, TypeVar

from pydantic import BaseModel

from omnisdk._base import Call
from omnisdk.core.events import MAX_CUSTOMER_ID
from omnisdk.core.problems import ProblemType
from omnisdk.errors import InvalidRequestError
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
    from omnisdk.outbox import Outbox

M = TypeVar("M", bound=BaseModel)
C = TypeVar("C", bound="Client | AsyncClient")


def model(cls: type[M]) -> Callable[[Any], M]:
    """A parser that validates an answer's JSON into `cls`."""
    return cls.model_validate


# Text of 1-40 characters without those that would send the request to another path than the
# customer's: a separator, the start of a query or fragment, an escape the server decodes before
# routing, a space.
_CUSTOMER_ID = re.compile(rf"[^\s/?#%\\]{{1,{MAX_CUSTOMER_ID}}}")


def is_customer_id(value: object) -> TypeGuard[str]:
    """Whether `value` can name a customer (as `identify` returns it, `cus_…`)."""
    return (
        isinstance(value, str)
        and bool(_CUSTOMER_ID.fullmatch(value))
        and value.isprintable()
        and value.strip(".") != ""  # "." and ".." would be path segments the URL collapses
    )


def checked_customer_id(customer_id: object) -> str:
    """`customer_id` if it can name a customer, else InvalidRequestError: raised alike by both
    clients, before a lookup or a request."""
    if is_customer_id(customer_id):
        return customer_id
    shown = repr(customer_id)
    raise InvalidRequestError(
        ProblemType.VALIDATION_ERROR,
        f"customer_id must be a customer's id as identify returns it (text of 1-"
        f"{MAX_CUSTOMER_ID} characters, no spaces, '/', '?', '#', '%' or '\\'), "
        f"not {shown if len(shown) <= 60 else shown[:57] + '...'}",
    )


class Resource(Generic[C]):
    """A group of operations on one domain, bound to the client that runs them: a resource of
    `Client` has blocking methods, the same resource of `AsyncClient` coroutine methods."""

    def __init__(self, client: C) -> None:
        self._client = client

    def __repr__(self) -> str:
        return f"<{type(self).__name__} of {self._client!r}>"

    def _open_outbox(self) -> Flow[Outbox]:
        """The client's outbox: opening its file touches the disk, a worker thread's job on
        AsyncClient (once open, no step at all)."""
        client = self._client
        if client._outbox is not None:
            return client._outbox
        opened: Outbox = yield Blocking(lambda: client.outbox)
        return opened


__all__ = [
    "MISS",
    "Append",
    "Blocking",
    "Call",
    "Flow",
    "OnClient",
    "Resource",
    "checked_customer_id",
    "is_customer_id",
    "local",
    "model",
    "operation",
    "send",
]
