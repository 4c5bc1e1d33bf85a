"""One declaration per operation, driven by both clients.

An operation is written once, as a generator method decorated with `@operation`: it builds its
`Call`s and yields each step it needs done — send this call, do this disk work, wait for the
courier — and receives the step's result (or has its exception thrown in). It never does I/O
itself. `Client` drives the generator with blocking I/O, `AsyncClient` with `await`, so both
get the same method from the same code: same name, parameters and docstring, and behaviour
that cannot drift apart (the sans-I/O split of h11, and of httpx's auth flows).

Bad input found while the operation builds its request (a pydantic model refusing a field, a
`ValueError` of a rule in `omnisdk.core`) is raised as `omnisdk.InvalidRequestError`, so
`except omnisdk.ValidationError` catches every refusal, the SDK's and the server's alike.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Awaitable, Callable, Coroutine, Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Concatenate, Generic, ParamSpec, TypeVar, overload

import pydantic

from omnisdk._base import Call
from omnisdk.core.problems import ProblemType
from omnisdk.errors import InvalidRequestError, OmnisdkError

if TYPE_CHECKING:
    from omnisdk._async import AsyncClient
    from omnisdk._sync import Client
    from omnisdk.outbox import Outbox
    from omnisdk.resources._resource import Resource

P = ParamSpec("P")
T = TypeVar("T")


@dataclass(frozen=True)
class Blocking(Generic[T]):
    """Local work that may wait (the disk, a lock): `Client` runs it as it is, `AsyncClient`
    in a worker thread, so the event loop never stalls."""

    run: Callable[[], T]


@dataclass(frozen=True)
class Append:
    """Put an item in the outbox: `AsyncClient` first tries the push that never waits, and
    only waits (for room, or the disk) in a worker thread."""

    outbox: Outbox
    kind: str
    key: str
    payload: Any


@dataclass(frozen=True)
class OnClient(Generic[T]):
    """Something each client does its own way (waiting for its courier): `run` gets the client
    and returns the result, or, on `AsyncClient`, an awaitable of it."""

    run: Callable[[Any], T | Awaitable[T]]


Step = Call[Any] | Blocking[Any] | Append | OnClient[Any]
Flow = Generator[Step, Any, T]
"""What an operation method returns: the steps it needs, then (as the generator's return
value) the operation's result."""


def send(call: Call[T]) -> Flow[T]:
    """The steps of sending one call: `return (yield from send(call))` keeps its type."""
    result: T = yield call
    return result


def local(run: Callable[[], T]) -> Flow[T]:
    """The steps of local work that may wait (see `Blocking`), keeping its type."""
    result: T = yield Blocking(run)
    return result


def refusal(error: Exception) -> InvalidRequestError:
    """The SDK's typed error for input refused while a request was being built."""
    if isinstance(error, pydantic.ValidationError):
        where = "; ".join(
            f"{'.'.join(str(part) for part in item['loc']) or 'value'}: {item['msg']}"
            for item in error.errors(include_url=False)
        )
        refused = InvalidRequestError(ProblemType.VALIDATION_ERROR, f"invalid input: {where}")
    else:
        refused = InvalidRequestError(ProblemType.VALIDATION_ERROR, str(error))
    refused.__cause__ = error
    return refused


def run_sync(client: Client, flow: Flow[T]) -> T:
    """Drive an operation with blocking I/O."""
    client.raise_if_closed()
    try:
        step = next(flow)
        while True:
            try:
                result = _perform(client, step)
            except Exception as error:  # handed to the operation, which may handle it
                step = flow.throw(error)
            else:
                step = flow.send(result)
    except StopIteration as done:
        value: T = done.value
        return value
    except (ValueError, TypeError) as error:  # pydantic's ValidationError is a ValueError
        if isinstance(error, OmnisdkError):
            raise
        raise refusal(error) from error


async def run_async(client: AsyncClient, flow: Flow[T]) -> T:
    """Drive an operation with asyncio."""
    client.raise_if_closed()
    try:
        step = next(flow)
        while True:
            try:
                result = await _perform_async(client, step)
            except Exception as error:
                step = flow.throw(error)
            else:
                step = flow.send(result)
    except StopIteration as done:
        value: T = done.value
        return value
    except (ValueError, TypeError) as error:
        if isinstance(error, OmnisdkError):
            raise
        raise refusal(error) from error


def _perform(client: Client, step: Step) -> Any:
    if isinstance(step, Call):
        return client.execute(step)
    if isinstance(step, Blocking):
        return step.run()
    if isinstance(step, Append):
        return step.outbox.append(step.kind, step.key, step.payload)
    return step.run(client)


async def _perform_async(client: AsyncClient, step: Step) -> Any:
    if isinstance(step, Call):
        return await client.execute(step)
    if isinstance(step, Blocking):
        return await asyncio.to_thread(step.run)
    if isinstance(step, Append):
        if not step.outbox.try_append(step.kind, step.key, step.payload):
            await asyncio.to_thread(step.outbox.append, step.kind, step.key, step.payload)
        return None
    result = step.run(client)
    return await result if inspect.isawaitable(result) else result


class Operation(Generic[P, T]):
    """An operation declared once; read from a resource of `Client` it is a plain method,
    from a resource of `AsyncClient` a coroutine method, with the same signature and
    docstring."""

    def __init__(self, flow: Callable[Concatenate[Any, P], Flow[T]]) -> None:
        self.flow_of = flow
        self.name = flow.__name__
        functools.update_wrapper(self, flow)  # type: ignore[arg-type]
        self._signature: inspect.Signature | None = None
        self._from_memory: Callable[..., Any] | None = None

    def from_memory(self, answer: Callable[..., Any]) -> Callable[..., Any]:
        """Register the operation's answer from memory: called first with the same arguments,
        it returns the result, or `MISS` to run the operation. For operations cheap enough
        for every request (`consent.check`), whose usual answer needs no generator, no
        driver and no step."""
        self._from_memory = answer
        return answer

    def __set_name__(self, owner: type[Any], name: str) -> None:
        self.name = name

    def flow(self, resource: Any, *args: P.args, **kwargs: P.kwargs) -> Flow[T]:
        """The operation's steps, for another operation to `yield from`."""
        return self.flow_of(resource, *args, **kwargs)

    @overload
    def __get__(self, resource: None, owner: type[Any]) -> Operation[P, T]: ...

    @overload
    def __get__(
        self, resource: Resource[AsyncClient], owner: type[Any]
    ) -> Callable[P, Coroutine[Any, Any, T]]: ...

    @overload
    def __get__(self, resource: Resource[Client], owner: type[Any]) -> Callable[P, T]: ...

    def __get__(self, resource: Any, owner: type[Any]) -> Any:
        if resource is None:
            return self
        method = self._bind(resource)
        resource.__dict__[self.name] = method  # found directly from now on: no binding cost
        return method

    def _bind(self, resource: Any) -> Callable[..., Any]:
        client = resource._client
        flow_of = self.flow_of
        remembered = self._from_memory
        method: Callable[..., Any]
        if remembered is not None and client.is_async:

            async def method(*args: Any, **kwargs: Any) -> Any:
                answer = remembered(resource, *args, **kwargs)
                if answer is not MISS:
                    return answer
                return await run_async(client, flow_of(resource, *args, **kwargs))

        elif remembered is not None:

            def method(*args: Any, **kwargs: Any) -> Any:
                answer = remembered(resource, *args, **kwargs)
                if answer is not MISS:
                    return answer
                return run_sync(client, flow_of(resource, *args, **kwargs))

        elif client.is_async:

            async def method(*args: Any, **kwargs: Any) -> Any:
                return await run_async(client, flow_of(resource, *args, **kwargs))

        else:

            def method(*args: Any, **kwargs: Any) -> Any:
                return run_sync(client, flow_of(resource, *args, **kwargs))

        method.__name__ = self.name
        method.__qualname__ = f"{type(resource).__name__}.{self.name}"
        method.__doc__ = self.flow_of.__doc__
        setattr(method, "__signature__", self.signature())  # noqa: B010 (read by inspect)
        return method

    def signature(self) -> inspect.Signature:
        """The method's signature as a caller sees it: no `self`, returning the result."""
        if self._signature is None:
            full = inspect.signature(self.flow_of)
            returns = full.return_annotation
            if isinstance(returns, str) and returns.startswith("Flow[") and returns[-1] == "]":
                returns = returns[len("Flow[") : -1]
            self._signature = full.replace(
                parameters=list(full.parameters.values())[1:], return_annotation=returns
            )
        return self._signature


MISS: Any = object()  # what an answer from memory returns when memory does not know


def operation(flow: Callable[Concatenate[Any, P], Flow[T]]) -> Operation[P, T]:
    """Declare an operation once for both clients (see the module's docstring)."""
    return Operation(flow)


__all__ = [
    "MISS",
    "Append",
    "Blocking",
    "Flow",
    "OnClient",
    "Operation",
    "local",
    "operation",
    "send",
]
