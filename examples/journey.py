"""The customer journey of DESIGN.md, as far as omnisdk builds it today.

Each shop backend — the web shop on Amy's laptop, the app backend behind her phone, the till
in the store — uses the SDK with its own channel's key. Run it with `make demo`, or against
your own server with OMNISDK_URL and OMNISDK_{WEB,APP,POS,ADMIN}_KEY set.
"""

from __future__ import annotations

import os
import queue
import tempfile
import threading
import time
import uuid
from pathlib import Path

import omnisdk
import omnisdk.resources.changes


def step(text: str) -> None:
    print(f"-- {text}")


def main() -> None:
    url = os.environ["OMNISDK_URL"]
    web = omnisdk.Client(url, os.environ["OMNISDK_WEB_KEY"], channel="web")
    app = omnisdk.Client(url, os.environ["OMNISDK_APP_KEY"], channel="app")
    pos = omnisdk.Client(url, os.environ["OMNISDK_POS_KEY"], channel="pos")
    admin = omnisdk.Client(url, os.environ["OMNISDK_ADMIN_KEY"], channel="admin")

    step("Each of the shop's backends connects with its own channel's key")
    for name, client in (("web shop", web), ("app backend", app), ("store till", pos)):
        me = client.system.whoami()
        print(f"   {name:12} -> tenant {me.tenant_id}, channel {me.channel.value}")

    phone, laptop = f"phone-{uuid.uuid4().hex[:8]}", f"laptop-{uuid.uuid4().hex[:8]}"
    step("Amy scans the billboard's QR code with her phone: an anonymous visitor")
    app.events.track(
        "campaign_scanned",
        anonymous_id=phone,
        properties={"campaign": "billboard-berlin-7", "utm_source": "billboard"},
    )
    app.events.track("chat_started", anonymous_id=phone, properties={"thread_id": "chat-1"})
    app.events.flush(10)
    print(f"   phone {phone} is customer {app.identity.resolve('anonymous', phone)}")

    step("In the site chat she leaves her e-mail: the phone becomes a known customer")
    amy = app.identity.identify(
        anonymous_id=phone, email="amy@example.com", traits={"first_name": "Amy"}
    )
    print(
        f"   customer {amy.customer_id} (created: {amy.created}); "
        "the e-mail is stored only as a keyed hash"
    )

    step("At home her laptop is a stranger, until she clicks the link in the e-mail")
    web.events.track("email_clicked", anonymous_id=laptop, properties={"campaign": "welcome"})
    web.events.flush(10)
    stranger = web.identity.resolve("anonymous", laptop)
    linked = web.identity.identify(anonymous_id=laptop, email="amy@example.com")
    print(
        f"   laptop was customer {stranger}; now merged into {linked.customer_id} "
        f"(merged: {linked.merged}, merge {linked.merge_ids[0]})"
    )

    step("One customer, both devices, one timeline across channels")
    profile = web.identity.get_profile(stranger or linked.customer_id)
    devices = sorted(i.value for i in profile.identifiers if i.type == "anonymous")
    print(
        f"   devices: {', '.join(devices)}; e-mail shown as "
        f"{next(i.value for i in profile.identifiers if i.type == 'email')}"
    )
    for event in reversed(web.identity.timeline(linked.customer_id).items):
        print(f"   {event.occurred_at:%H:%M:%S}  {event.channel.value:4} {event.name}")
    print(f"   lifecycle {profile.lifecycle.value}, previous ids {profile.previous_ids}")

    step("On the phone she filled half the questionnaire; the laptop continues where she stopped")
    app.sessions.set(linked.customer_id, {"questionnaire": {"step": 3, "size": 38}})
    form = web.sessions.get(linked.customer_id).entries["questionnaire"]
    print(f"   laptop reads: step {form.value['step']} (written by the {form.channel} channel)")

    step("On the laptop she adds shoes to the cart; her phone's backend sees it live")
    changes: queue.Queue[omnisdk.resources.changes.Change] = queue.Queue()

    def phone_backend_watches() -> None:
        with omnisdk.Client(url, os.environ["OMNISDK_APP_KEY"], channel="app") as watcher:
            for change in watcher.changes.watch(linked.customer_id):
                changes.put(change)

    threading.Thread(target=phone_backend_watches, daemon=True).start()
    time.sleep(0.5)  # a demo's pause: let the phone's backend connect before the laptop adds
    laptop_cart = web.carts.add(
        linked.customer_id,
        "TR2",
        2,
        {"size": "38"},
        name="Trail runner, size 38",
        unit_price=89.0,
        currency="EUR",
    )
    live = changes.get(timeout=10)
    for line in live.data["lines"]:
        print(
            f"   phone's feed, change {live.id}: {line['quantity']} x {line['name']} at "
            f"{line['unit_price']} {line['currency']} (cart version {live.data['version']})"
        )
    phone_cart = app.carts.get(stranger or linked.customer_id)  # any of her ids works
    print(f"   phone reads the cart: {sum(x.quantity for x in phone_cart.lines)} units")
    order = f"A{uuid.uuid4().hex[:6].upper()}"
    ordered = web.carts.mark_ordered(linked.customer_id, order, laptop_cart.version)
    print(
        f"   checkout with version {laptop_cart.version}: the cart is now empty "
        f"({len(ordered.lines)} lines)"
    )

    step("Amy buys two pairs of shoes; the web shop issues her return QR code")
    web.events.track(
        "order_completed",
        customer_id=linked.customer_id,
        properties={"order_id": order, "value": 178.0, "currency": "EUR"},
    )
    issued = web.returns.issue(
        order,
        [
            {
                "line_id": "1",
                "sku": "TR2-38",
                "quantity": 2,
                "unit_price": 89.0,
                "name": "Trail runner, size 38",
            }
        ],
        refund_methods=["card", "voucher"],
        customer_id=linked.customer_id,
        currency="EUR",
    )
    png = web.returns.qr_png(issued.token_id)
    print(
        f"   {issued.token[:36]}… ({len(issued.token)} characters, QR PNG {len(png)} bytes, "
        f"valid until {issued.expires_at:%d %b %Y})"
    )

    step("Two weeks later a clerk scans it at a till in Berlin: checked offline, then redeemed")
    pos.returns.keys()  # the till caches the shop's public keys
    check = pos.returns.verify(issued.token + "\n")  # as a keyboard-wedge scanner types it
    print(f"   offline check: {check.status.value} - {check.message}")
    done = pos.returns.redeem(
        issued.token, {"1": 1}, f"berlin-1:{uuid.uuid4().hex[:6]}", "berlin-1", "card"
    )
    print(
        f"   returned {done.lines[0].quantity} x {done.lines[0].sku}, refund {done.value} EUR "
        f"by {done.refund_method}"
    )
    try:
        pos.returns.redeem(
            issued.token, {"1": 2}, f"hamburg-2:{uuid.uuid4().hex[:6]}", "hamburg-2", "card"
        )
    except omnisdk.ConflictError as refused:
        print(f"   the same code for both pairs again: refused - {refused.detail}")
    status = pos.returns.status(issued.token)
    print(f"   still returnable: {status.lines[0].remaining} of {status.lines[0].quantity}")

    step("A till in Hamburg loses its network in the middle of a return, and catches up")
    till_dir = Path(tempfile.mkdtemp(prefix="till-"))
    offline = omnisdk.Client(
        "http://127.0.0.1:9",
        os.environ["OMNISDK_POS_KEY"],
        channel="pos",
        data_dir=till_dir,
        retry_policy=omnisdk.RetryPolicy(max_retries=0),
        close_timeout=0.1,
    )
    offline.returns.till.remember_keys(pos.returns.keys())  # keys it cached while online
    offline.events.track(
        "store_visit", customer_id=linked.customer_id, properties={"store_id": "hamburg-2"}
    )
    pending = offline.returns.redeem(
        issued.token,
        {"1": 1},
        f"hamburg-2:{uuid.uuid4().hex[:6]}",
        "hamburg-2",
        "card",
        queue_if_offline=True,
        value=89.0,
    )
    print(
        f"   network down: return {pending.status}, outbox holds {offline.outbox.status().depth} "
        "writes, safe on disk"
    )
    offline.close()
    back = omnisdk.Client(url, os.environ["OMNISDK_POS_KEY"], channel="pos", data_dir=till_dir)
    caught_up = back.returns.sync_pending()
    left = back.events.flush(10)
    remaining = back.returns.status(issued.token).lines[0].remaining
    print(
        f"   network back: {len(caught_up['confirmed'])} return confirmed, "
        f"{len(caught_up['refused'])} refused, {left} writes left; "
        f"pairs still returnable: {remaining}"
    )
    back.close()

    step("Only the till may take goods back; the web shop's key may not manage keys")
    print(
        f"   till can redeem returns: {omnisdk.Scope.RETURNS_REDEEM in pos.system.whoami().scopes}"
    )
    print(
        f"   web can redeem returns:  {omnisdk.Scope.RETURNS_REDEEM in web.system.whoami().scopes}"
    )
    try:
        web.keys.list()
    except omnisdk.PermissionDeniedError as error:
        print(f"   web key listing keys -> {type(error).__name__}: {error.detail}")

    for client in (web, app, pos, admin):
        client.close()
    step("Journey complete")


if __name__ == "__main__":
    main()
