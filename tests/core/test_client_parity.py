"""`Client` and `AsyncClient` offer the same operations: same names, same parameters, same
results, the async ones as coroutines (or async iterators and context managers)."""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import omnisdk
from omnisdk import AsyncClient, Client

# Differences that are the point of the two shells, not drift.
SHELL_ONLY = {"delivery"}  # each client's own courier (a thread, or an asyncio task)
ASYNC_ALIASES = {"aclose": "close"}  # the name httpx and asyncio code reach for


def _public(obj: Any) -> dict[str, Any]:
    return {
        name: getattr(obj, name)
        for name in dir(obj)
        if not name.startswith("_") and name not in SHELL_ONLY
    }


def _is_resource(value: Any) -> bool:
    return type(value).__module__.startswith("omnisdk.resources.")


def _surface(client: Client | AsyncClient) -> Iterator[tuple[str, Any]]:
    """Every public callable of the client and of its resources, by dotted name."""
    for name, value in _public(client).items():
        if _is_resource(value):
            for method, member in _public(value).items():
                if callable(member) and not inspect.isclass(member):
                    yield f"{name}.{method}", member
        elif callable(value) and not inspect.isclass(value):
            yield name, value


def _returns_awaitable(member: Any) -> bool:
    return inspect.iscoroutinefunction(member) or inspect.isasyncgenfunction(member)


def differences(sync: Client, asynchronous: AsyncClient) -> list[str]:
    """What one client has and the other lacks, or has with another signature."""
    left, right = dict(_surface(sync)), dict(_surface(asynchronous))
    for alias, name in ASYNC_ALIASES.items():
        if alias in right and name in right:
            del right[alias]
    found = [f"only on Client: {name}" for name in sorted(left.keys() - right.keys())]
    found += [f"only on AsyncClient: {name}" for name in sorted(right.keys() - left.keys())]
    for name in sorted(left.keys() & right.keys()):
        blocking, coroutine = left[name], right[name]
        if _shared(blocking, coroutine):
            continue  # one function (no I/O) serving both: nothing can differ
        if _sync_form(inspect.signature(coroutine)) != inspect.signature(blocking):
            found.append(
                f"{name}: Client{inspect.signature(blocking)} "
                f"but AsyncClient{inspect.signature(coroutine)}"
            )
        if _returns_awaitable(blocking):
            found.append(f"{name}: a coroutine on Client")
        if not _returns_awaitable(coroutine) and not _returns_async_stream(coroutine):
            found.append(f"{name}: blocking on AsyncClient")
        if (blocking.__doc__ or "").strip() != (coroutine.__doc__ or "").strip():
            found.append(f"{name}: the docstrings differ")
        if not (blocking.__doc__ or "").strip():
            found.append(f"{name}: no docstring")
    return found


def _shared(blocking: Any, coroutine: Any) -> bool:
    function = getattr(blocking, "__func__", None)
    return function is not None and function is getattr(coroutine, "__func__", None)


def _sync_form(signature: inspect.Signature) -> inspect.Signature:
    """The signature with `AsyncIterator[X]` read as `Iterator[X]` (and so on)."""
    returns = signature.return_annotation
    if isinstance(returns, str) and returns.startswith("Async"):
        return signature.replace(return_annotation=returns.removeprefix("Async"))
    return signature


def _returns_async_stream(member: Any) -> bool:
    """A plain method whose result is used with `async with` / `async for` (changes.watch)."""
    returns = inspect.signature(member).return_annotation
    return isinstance(returns, str) and returns.startswith("Async")


@pytest.fixture
def clients(tmp_path: Path) -> Iterator[tuple[Client, AsyncClient]]:
    sync = Client("http://shop.test", "osk_test_key", data_dir=tmp_path / "sync")
    asynchronous = AsyncClient("http://shop.test", "osk_test_key", data_dir=tmp_path / "async")
    yield sync, asynchronous
    sync.close()


def test_client_and_async_client_have_no_differences(
    clients: tuple[Client, AsyncClient],
) -> None:
    assert differences(*clients) == []


def test_the_comparison_sees_a_missing_method(clients: tuple[Client, AsyncClient]) -> None:
    sync, asynchronous = clients

    def extra(customer_id: str) -> None:
        """Only here."""

    sync.carts.__dict__["extra"] = extra
    assert differences(sync, asynchronous) == ["only on Client: carts.extra"]


def test_the_comparison_sees_a_different_signature(clients: tuple[Client, AsyncClient]) -> None:
    sync, asynchronous = clients

    async def get(customer_id: str, verbose: bool = False) -> None:
        """The customer's cart as every channel sees it, with its version."""

    asynchronous.carts.__dict__["get"] = get
    [difference] = differences(sync, asynchronous)
    assert difference.startswith("carts.get: Client(customer_id: 'str') -> 'CartView' but")


def test_the_comparison_sees_a_blocking_method_on_the_async_client(
    clients: tuple[Client, AsyncClient],
) -> None:
    sync, asynchronous = clients
    asynchronous.returns.__dict__["pending"] = sync.returns.pending
    assert differences(sync, asynchronous) == ["returns.pending: blocking on AsyncClient"]


def test_both_clients_close_with_close(clients: tuple[Client, AsyncClient]) -> None:
    sync, asynchronous = clients
    assert callable(sync.close)
    assert inspect.iscoroutinefunction(asynchronous.close)
    assert inspect.iscoroutinefunction(asynchronous.aclose)  # the httpx spelling, kept


def test_every_exception_the_sdk_defines_is_exported() -> None:
    defined = {
        name
        for name, value in vars(omnisdk.errors).items()
        if inspect.isclass(value)
        and issubclass(value, omnisdk.OmnisdkError)
        and value.__module__ == "omnisdk.errors"
    }
    assert defined <= set(omnisdk.__all__)
    assert all(getattr(omnisdk, name) is getattr(omnisdk.errors, name) for name in defined)
