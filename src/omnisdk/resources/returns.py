"""Returns: issue signed return codes, verify them offline at a till, redeem them online.

A till verifies from the shop's published keys, cached by the client (and on disk, when the
client has a `data_dir`, so a till that restarts offline still verifies). When the network is
gone, `redeem(..., queue_if_offline=True)` takes the return after an offline check and queues
the redemption on disk, up to the till's value cap (`offline_cap`): the one place where
omnisdk trades safety for service. Queued redemptions are sent by `sync_pending()`; one that
the server refuses then (the same units were returned elsewhere meanwhile) becomes a dead
letter to settle by hand.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import threading
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from omnisdk.core import tokens
from omnisdk.errors import APIConnectionError, APIError, OfflineLimitReached, ReturnRefused
from omnisdk.models import (
    IssuedReturn,
    IssueReturnRequest,
    OrderLineIn,
    PublishedKeys,
    RedeemLine,
    RedeemRequest,
    Redemption,
    RefundMethod,
    ReturnedLine,
    ReturnStatus,
)
from omnisdk.outbox import DeadLetter, Outbox
from omnisdk.resources._resource import (
    Blocking,
    C,
    Call,
    Flow,
    Resource,
    local,
    model,
    operation,
    send,
)

try:
    import fcntl
except ImportError:  # Windows: one process per till, a thread lock
    fcntl = None  # type: ignore[assignment]

REDEMPTION = "redemption"


def issue_request(
    order_ref: str,
    lines: Sequence[OrderLineIn | Mapping[str, Any]],
    return_window_days: int,
    refund_methods: list[RefundMethod] | None,
    customer_id: str | None,
    currency: str | None,
) -> IssueReturnRequest:
    return IssueReturnRequest.model_validate(
        {
            "order_ref": order_ref,
            "lines": list(lines),
            "return_window_days": return_window_days,
            "refund_methods": refund_methods or ["original_payment"],
            "customer_id": customer_id,
            "currency": currency,
        }
    )


def issue_call(request: IssueReturnRequest, idempotency_key: str | None) -> Call[IssuedReturn]:
    return Call(
        "POST",
        "/v1/returns",
        model(IssuedReturn),
        json=request.model_dump(mode="json", exclude_none=True),
        idempotency_key=idempotency_key,
    )


def keys_call() -> Call[PublishedKeys]:
    return Call("GET", "/v1/returns/keys", model(PublishedKeys))


def status_call(token: str) -> Call[ReturnStatus]:
    return Call("POST", "/v1/returns/status", model(ReturnStatus), json={"token": token})


def redeem_call(request: RedeemRequest) -> Call[Redemption]:
    return Call(
        "POST",
        "/v1/returns/redeem",
        model(Redemption),
        json=request.model_dump(mode="json"),
        idempotency_key=f"redeem-{request.till_transaction_id}",
    )


def image_call(token_id: str, kind: str, medium: str) -> Call[bytes]:
    return Call(
        "GET",
        f"/v1/returns/{token_id}/qr.{kind}",
        lambda data: data,
        params={"medium": medium},
        binary=True,
    )


def revoke_call(token_id: str) -> Call[dict[str, str]]:
    return Call("POST", f"/v1/returns/{token_id}/revoke", lambda data: data)


def revoke_order_call(order_ref: str) -> Call[dict[str, str]]:
    return Call("POST", f"/v1/returns/orders/{order_ref}/revoke", lambda data: data)


def rotate_call() -> Call[PublishedKeys]:
    return Call("POST", "/v1/returns/keys/rotate", model(PublishedKeys))


def redeem_request(
    token: str,
    lines: Mapping[str, int] | Iterable[RedeemLine | Mapping[str, Any]],
    till_transaction_id: str,
    store_id: str,
    refund_method: RefundMethod,
) -> RedeemRequest:
    items = (
        [RedeemLine(line_id=k, quantity=v) for k, v in lines.items()]
        if isinstance(lines, Mapping)
        else [RedeemLine.model_validate(line) for line in lines]
    )
    return RedeemRequest(
        token=token.strip(),
        lines=items,
        till_transaction_id=till_transaction_id,
        store_id=store_id,
        refund_method=refund_method,
    )


@contextlib.contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `path`: flock excludes other open files of it, so other
    threads of this process and other processes wait alike (a thread lock where there is no
    flock)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if fcntl is None:
        with _THREAD_LOCK:
            yield
        return
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


_THREAD_LOCK = threading.Lock()


class TillState:
    """What a till keeps for offline work: the shop's keys (in its data_dir) and, in the
    client's outbox, the redemptions it took while offline."""

    def __init__(self, data_dir: Path, offline_cap: float, outbox: Callable[[], Outbox]) -> None:
        self.offline_cap = offline_cap
        self._keys_file = data_dir / "return-keys.json"
        self._lock_file = data_dir / "offline-refunds.lock"
        self._outbox = outbox
        self.keys: PublishedKeys | None = None
        if self._keys_file.exists():
            self.keys = PublishedKeys.model_validate_json(self._keys_file.read_text())

    @property
    def outbox(self) -> Outbox:
        return self._outbox()

    def remember_keys(self, keys: PublishedKeys) -> None:
        self.keys = keys
        self._keys_file.parent.mkdir(parents=True, exist_ok=True)
        self._keys_file.write_text(keys.model_dump_json())

    def verify(self, token: str, now: datetime | None = None) -> tokens.Verification:
        if self.keys is None:
            return tokens.Verification(
                tokens.Status.UNKNOWN_KEY, tokens.clerk_message(tokens.Status.UNKNOWN_KEY)
            )
        return tokens.verify(
            token,
            self.keys.verification_keys(),
            issuer=self.keys.issuer,
            now=now or datetime.now(UTC),
        )

    def queue(self, request: RedeemRequest, value: float | None) -> Redemption:
        """Check a redemption offline and queue it durably; raise if it must not be taken.

        The cap is checked and the redemption written under one lock on the till's data_dir
        (threads and processes alike), so simultaneous returns cannot together pass the cap.
        """
        if value is None or not math.isfinite(value) or value <= 0:
            raise OfflineLimitReached(
                "Type the amount to refund (more than 0): the till counts it against the "
                "refunds it may hold while offline."
            )
        with _exclusive(self._lock_file):
            return self._queue(request, value)

    def _queue(self, request: RedeemRequest, value: float) -> Redemption:
        verification = self.verify(request.token)
        if not verification.valid or verification.claims is None:
            raise ReturnRefused(verification.message, verification)
        claims = verification.claims
        if request.refund_method not in claims.refund_methods:
            raise ReturnRefused(
                f"This code allows refunds by {', '.join(claims.refund_methods)} only."
            )
        pending = self.outbox.items(REDEMPTION)
        for item in pending:  # the same till transaction sent twice (a resent confirm): once
            if item.key == request.till_transaction_id:
                return _pending_redemption(request, claims, float(item.payload["value"]))
        on_token = {line.line_id: line for line in claims.lines}
        for wanted in request.lines:
            line = on_token.get(wanted.line_id)
            if line is None:
                raise ReturnRefused(f"Line {wanted.line_id} is not on this return code.")
            queued = sum(
                q["quantity"]
                for item in pending
                if item.payload["token_id"] == claims.token_id_hex
                for q in item.payload["request"]["lines"]
                if q["line_id"] == wanted.line_id
            )
            if queued + wanted.quantity > line.quantity:
                raise ReturnRefused(
                    f"Only {line.quantity - queued} of {line.sku} can still be returned "
                    "with this code (some are already waiting to be sent)."
                )
        total = sum(float(item.payload["value"]) for item in pending) + value
        if total > self.offline_cap:
            raise OfflineLimitReached(
                f"This till may hold at most {self.offline_cap:.2f} of refunds while offline; "
                f"this return would make it {total:.2f}. Wait for the network."
            )
        payload = {
            "request": request.model_dump(mode="json"),
            "value": value,
            "token_id": claims.token_id_hex,
            "order_ref": claims.order_ref,
            "queued_at": datetime.now(UTC).isoformat(),
        }
        self.outbox.append(REDEMPTION, request.till_transaction_id, payload)
        self.outbox.sync()  # money: on disk before the clerk hands anything back
        return _pending_redemption(request, claims, value)

    def pending(self) -> list[dict[str, Any]]:
        return [item.payload for item in self.outbox.items(REDEMPTION)]

    def refused(self) -> list[DeadLetter]:
        return self.outbox.dead_letters(REDEMPTION)

    def settle(self) -> Generator[RedeemRequest, Redemption | Exception, SyncOutcome]:
        """Send each queued redemption (the caller does the sending) and record its fate:
        confirmed ones leave the queue, final refusals become dead letters, and a network
        failure or a server error stops the round with the rest still queued."""
        outcome = SyncOutcome(confirmed=[], refused=[], repriced=[], left=0)
        for item in self.outbox.items(REDEMPTION):
            answer = yield RedeemRequest.model_validate(item.payload["request"])
            if isinstance(answer, Redemption):
                outcome["confirmed"].append(answer)
                repriced = _repriced(answer, float(item.payload["value"]))
                if repriced is not None:
                    outcome["repriced"].append(repriced)
                self.outbox.remove(item.key)
            elif (
                isinstance(answer, APIError)
                and answer.status_code < 500
                and answer.status_code != 429
            ):
                self.outbox.bury(item.key, json.dumps(answer.problem))
                outcome["refused"].append(answer)
            else:
                break
        outcome["left"] = len(self.pending())
        return outcome


def verify_flow(
    till: TillState, token: str, now: datetime | None
) -> Generator[Call[PublishedKeys], PublishedKeys | None, tokens.Verification]:
    """Verify `token` from the till's keys; the one rule both clients drive (they send back the
    keys each yielded call fetched, or None when the network is away).

    Keys are fetched when none are cached, and again when the code names a key the cache does
    not know: the shop rotated its key after this till last looked. A key id the shop's fresh
    list does not hold was never the shop's, so such a code is reported as not genuine rather
    than as a till that needs the network.
    """
    fetched = False
    if till.keys is None:
        keys = yield keys_call()
        if keys is not None:
            till.remember_keys(keys)
            fetched = True
    result = till.verify(token, now)
    if result.status is tokens.Status.UNKNOWN_KEY and till.keys is not None and not fetched:
        keys = yield keys_call()
        if keys is not None:
            till.remember_keys(keys)
            fetched = True
            result = till.verify(token, now)
    if result.status is tokens.Status.UNKNOWN_KEY and fetched:
        status = tokens.Status.BAD_SIGNATURE
        return tokens.Verification(status, tokens.clerk_message(status))
    return result


def _resume(flow: Generator[Any, Any, Any], value: Any) -> tuple[bool, Any]:
    """One step of a flow: (finished, the next thing it asks for, or its result). Sending None
    also starts it. StopIteration cannot cross a thread's future, so it becomes a value here."""
    try:
        return False, flow.send(value)
    except StopIteration as finished:
        return True, finished.value


class SyncOutcome(dict[str, Any]):
    """confirmed: redemptions the server took; refused: dead letters; repriced: confirmed
    ones whose refund typed offline differs from the shop's price; left: still queued."""


@dataclass(frozen=True)
class Repriced:
    """An offline return the server priced differently from the amount the clerk refunded:
    the money already went back, so the difference is for a manager to settle, never to be
    replaced silently."""

    till_transaction_id: str
    refunded: float
    shop_value: float

    @property
    def difference(self) -> float:
        return round(self.shop_value - self.refunded, 2)


def _repriced(redemption: Redemption, refunded: float) -> Repriced | None:
    if redemption.value is None or abs(redemption.value - refunded) < 0.005:
        return None
    return Repriced(redemption.till_transaction_id, refunded, redemption.value)


class Returns(Resource[C]):
    """Signed return codes: issue them, verify them offline at a till, redeem them online."""

    def __init__(self, client: C, till: TillState) -> None:
        super().__init__(client)
        self.till = till

    @operation
    def issue(
        self,
        order_ref: str,
        lines: Sequence[OrderLineIn | Mapping[str, Any]],
        *,
        return_window_days: int = 30,
        refund_methods: list[RefundMethod] | None = None,
        customer_id: str | None = None,
        currency: str | None = None,
        idempotency_key: str | None = None,
    ) -> Flow[IssuedReturn]:
        """Register an order's returnable lines and get its signed return code. `lines` are
        `OrderLineIn` models or mappings (`{"line_id", "sku", "quantity", "unit_price"}`)."""
        request = issue_request(
            order_ref, lines, return_window_days, refund_methods, customer_id, currency
        )
        return (yield from send(issue_call(request, idempotency_key)))

    @operation
    def qr_png(self, token_id: str, medium: Literal["screen", "print"] = "screen") -> Flow[bytes]:
        """The code as a PNG rendered (once, then cached) by the server; "print" uses a higher
        error correction (Q) for printed receipts, "screen" M."""
        return (yield from send(image_call(token_id, "png", medium)))

    @operation
    def qr_svg(self, token_id: str, medium: Literal["screen", "print"] = "screen") -> Flow[bytes]:
        """The code as an SVG image (see `qr_png`)."""
        return (yield from send(image_call(token_id, "svg", medium)))

    # The till's verify path (keys and verify), moved here as a unit from the former
    # Returns/AsyncReturns pair: both clients now refresh the keys on an unknown key id.
    @operation
    def keys(self, refresh: bool = False) -> Flow[PublishedKeys]:
        """The shop's published verification keys (cached; fetched when asked or missing)."""
        if refresh or self.till.keys is None:
            fetched: PublishedKeys = yield keys_call()
            yield Blocking(functools.partial(self.till.remember_keys, fetched))
        assert self.till.keys is not None
        return self.till.keys

    @operation
    def verify(self, token: str, now: datetime | None = None) -> Flow[tokens.Verification]:
        """Check a scanned code from the cached keys; fetch them when a code names a key the
        cache does not know (the shop rotated its key), and call a key the shop's fresh list
        lacks not genuine (`verify_flow`)."""
        flow = verify_flow(self.till, token, now)
        done, step = yield Blocking(functools.partial(_resume, flow, None))
        while not done:
            try:
                keys: PublishedKeys | None = yield step
            except APIConnectionError:
                keys = None
            # Remembering fetched keys writes to the till's disk: off the loop on AsyncClient.
            done, step = yield Blocking(functools.partial(_resume, flow, keys))
        result: tokens.Verification = step
        return result

    @operation
    def status(self, token: str) -> Flow[ReturnStatus]:
        """What may still be returned with this code, and what was returned where (online)."""
        return (yield from send(status_call(token.strip())))

    @operation
    def redeem(
        self,
        token: str,
        lines: Mapping[str, int] | Sequence[RedeemLine | Mapping[str, Any]],
        till_transaction_id: str,
        store_id: str,
        refund_method: RefundMethod,
        *,
        queue_if_offline: bool = False,
        value: float | None = None,
    ) -> Flow[Redemption]:
        """Take back units of lines (`{line_id: quantity}`); with `queue_if_offline`, check
        the code offline and queue the redemption when the server is away (up to the till's
        `offline_cap`, which needs the refund `value`)."""
        request = redeem_request(token, lines, till_transaction_id, store_id, refund_method)
        try:
            return (yield from send(redeem_call(request)))
        except APIConnectionError:
            if not queue_if_offline:
                raise
        return (yield from local(functools.partial(self.till.queue, request, value)))

    @operation
    def pending(self) -> Flow[list[dict[str, Any]]]:
        """Redemptions queued offline and not yet confirmed by the server."""
        return (yield from local(self.till.pending))

    @operation
    def refused(self) -> Flow[list[DeadLetter]]:
        """Queued redemptions the server refused when they were sent: settle them by hand."""
        return (yield from local(self.till.refused))

    @operation
    def sync_pending(self) -> Flow[SyncOutcome]:
        """Send queued redemptions; stop at the first network failure (they stay queued)."""
        flow = self.till.settle()  # its steps touch the disk: a worker thread's on AsyncClient
        done, step = yield Blocking(functools.partial(_resume, flow, None))
        while not done:
            assert isinstance(step, RedeemRequest)
            try:
                answer: Redemption | Exception = yield redeem_call(step)
            except (APIError, APIConnectionError) as error:
                answer = error
            done, step = yield Blocking(functools.partial(_resume, flow, answer))
        assert isinstance(step, SyncOutcome)
        return step

    @operation
    def revoke(self, token_id: str) -> Flow[dict[str, str]]:
        """Revoke one return code (admin keys): it redeems nothing from now on."""
        return (yield from send(revoke_call(token_id)))

    @operation
    def revoke_order(self, order_ref: str) -> Flow[dict[str, str]]:
        """Revoke every return code of an order (admin keys)."""
        return (yield from send(revoke_order_call(order_ref)))

    @operation
    def rotate_keys(self) -> Flow[PublishedKeys]:
        """Start signing with a new key (admin keys); the old one verifies until its grace ends."""
        keys: PublishedKeys = yield rotate_call()
        yield Blocking(functools.partial(self.till.remember_keys, keys))
        return keys


def _pending_redemption(
    request: RedeemRequest, claims: tokens.ReturnClaims, value: float
) -> Redemption:
    """What a till shows for a redemption it queued: pending until the server confirms it."""
    skus = {line.line_id: line.sku for line in claims.lines}
    return Redemption(
        redemption_id=f"pending-{request.till_transaction_id}",
        token_id=claims.token_id_hex,
        order_ref=claims.order_ref,
        till_transaction_id=request.till_transaction_id,
        store_id=request.store_id,
        refund_method=request.refund_method,
        lines=[
            ReturnedLine(line_id=line.line_id, sku=skus[line.line_id], quantity=line.quantity)
            for line in request.lines
        ],
        value=value,
        created_at=datetime.now(UTC),
        status="pending",
    )
