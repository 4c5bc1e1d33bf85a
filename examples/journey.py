"""The customer journey of DESIGN.md, as far as omnisdk builds it today.

Each shop backend — the web shop on Amy's laptop, the app backend behind her phone, the till
in the store — uses the SDK with its own channel's key. Run it with `make demo`, or against
your own server with OMNISDK_URL and OMNISDK_{WEB,APP,POS,ADMIN}_KEY set. The stock alert step
receives its webhook in this process, on 127.0.0.1: that server must then run with
OMNISDK_WEBHOOK_ALLOW_PRIVATE_NETWORKS=true (docs/notifications.md, "Where webhooks may go"),
as `make demo`'s does; without it the endpoint is refused when the step adds it.
"""

from __future__ import annotations

import logging
import os
import queue
import tempfile
import threading
import time
import uuid
from pathlib import Path

import httpx
from journey_alerts import back_in_stock

import omnisdk
import omnisdk.models
import omnisdk.resources.changes


def step(text: str) -> None:
    print(f"-- {text}")


def generic_title(client: omnisdk.Client) -> str:
    return str(client.content.decide(anonymous_id="someone-else")["landing.hero"].content["title"])


def main() -> None:
    # Name each warning's source and level (omnisdk itself leaves logging to the application).
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
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
    step("Amy scans the billboard's QR code with her phone: the landing page matches the poster")
    billboard = app.content.decide(
        anonymous_id=phone, qr="billboard-berlin-7", device="mobile", locale="de-DE"
    )
    hero = billboard["landing.hero"]
    print(f"   hero: {hero.content['title']!r}  <- {hero.explanation}")
    print(f"   the generic page would say: {generic_title(app)!r}")

    step("The app asks for consent at first launch: she allows analytics, nothing else yet")
    visitor = app.identity.identify(anonymous_id=phone).customer_id
    app.consent.grant(visitor, "analytics", source="app_settings", method="toggle")
    app.events.track(
        "campaign_scanned",
        anonymous_id=phone,
        properties={"campaign": "billboard-berlin-7", "utm_source": "billboard"},
    )
    for sku in ("TR2", "TR3"):
        app.events.track(
            "product_viewed", anonymous_id=phone, properties={"sku": sku, "category": "running"}
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
    visitor = web.identity.identify(anonymous_id=laptop).customer_id
    web.consent.grant(visitor, "analytics", source="web_banner", method="click")
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

    step("Known but not consenting to personalisation: the page stays generic, no profile read")
    page = web.content.decide(linked.customer_id, device="desktop")
    print(f"   hero: {page['landing.hero'].content['title']!r} (personalised: {page.personalised})")

    step("She accepts personalisation in the laptop's banner: the page fits her interests")
    web.consent.grant(linked.customer_id, "personalisation", source="web_banner", method="click")
    page = web.content.decide(linked.customer_id, device="desktop")
    for slot in ("landing.hero", "landing.cta"):
        decided = page[slot]
        shown = decided.content.get("title") or decided.content["cta"]["label"]
        print(f"   {slot}: {shown!r}  <- {decided.explanation}")
    signals = web.consent.consent_mode(linked.customer_id)
    print(f"   gtag('consent', 'update', {signals})")

    step("On the phone she filled half the questionnaire; the laptop continues where she stopped")
    app.sessions.set(linked.customer_id, {"questionnaire": {"step": 3, "size": 38}})
    form = web.sessions.get(linked.customer_id).entries["questionnaire"]
    print(f"   laptop reads: step {form.value['step']} (written by the {form.channel} channel)")

    step("On the laptop she adds shoes to the cart; her phone's backend sees it live")
    changes: queue.Queue[omnisdk.resources.changes.Change] = queue.Queue()
    watcher = omnisdk.Client(url, os.environ["OMNISDK_APP_KEY"], channel="app")
    feed = watcher.changes.watch(linked.customer_id, timeout=60)

    def phone_backend_watches() -> None:
        for change in feed:
            changes.put(change)

    threading.Thread(target=phone_backend_watches, daemon=True).start()
    feed.connected.wait(10)  # the phone's backend listens: nothing the laptop does is missed
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
    feed.close()
    watcher.close()
    assert isinstance(live.data, omnisdk.models.CartChange)
    for line in live.data.lines:
        print(
            f"   phone's feed, change {live.id}: {line.quantity} x {line.name} at "
            f"{line.unit_price} {line.currency} (cart version {live.data.version})"
        )
    phone_cart = app.carts.get(stranger or linked.customer_id)  # any of her ids works
    print(f"   phone reads the cart: {sum(x.quantity for x in phone_cart.lines)} units")
    order = f"A{uuid.uuid4().hex[:6].upper()}"
    ordered = web.carts.mark_ordered(linked.customer_id, order, laptop_cart.version)
    print(
        f"   checkout with version {laptop_cart.version}: the cart is now empty "
        f"({len(ordered.lines)} lines)"
    )

    step("Other shoppers bought the Trail 2 with socks and insoles: recommendations rebuilt")
    for n, skus in enumerate([["TR2", "SOCK-M", "INSOLE"], ["TR2", "SOCK-M"], ["TR2", "CAP"]]):
        web.events.track(
            "order_completed",
            anonymous_id=f"shopper-{uuid.uuid4().hex[:6]}",
            properties={"order_id": f"other-{n}", "skus": skus},
        )
    web.events.flush(10)
    admin.content.rebuild_recommendations()
    web.content.refresh()
    web.carts.add(linked.customer_id, "TR2", 1, name="Trail 2")
    picks = web.content.decide(linked.customer_id).items["landing.recommendations"]
    listed = ", ".join(f"{p['sku']} ({p['why']})" for p in picks)
    print(f"   with the Trail 2 in her cart: {listed}")

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

    step("In a store she buys a rain jacket; the till scans the customer code in her app")
    code = app.orders.customer_code(linked.customer_id)  # her app shows it as a QR code
    seen = pos.orders.verify_code(code.code)  # offline, with the keys the till caches
    print(f"   code {code.code[:24]}… (no personal data): {seen.status.value} - {seen.message}")
    sale = pos.orders.record(
        f"BERLIN-1-{uuid.uuid4().hex[:6]}",
        [{"sku": "JACKET-RAIN-M", "quantity": 1, "unit_price": 149.0}],
        currency="EUR",
        store_id="berlin-1",
        customer_code=code.code,
    )
    print(
        f"   sale {sale.order.reference} linked to {sale.order.customer_id} by "
        f"{sale.order.link_method} (confidence {sale.order.link_confidence})"
    )
    bought = admin.identity.get_profile(linked.customer_id)
    online = admin.orders.get(order)
    print(
        f"   her orders: {bought.purchases.by_channel}; the shoes order is worth {online.net} "
        f"EUR net of the {online.refunded} EUR returned; all together {bought.purchases.net_value}"
        " EUR"
    )

    step("The ROPO report counts her store sale; a lifetime value fit scores her profile")
    for client in (web, app):
        client.events.flush(10)  # her online touchpoints are on record first
    analytics = httpx.Client(
        base_url=url, headers={"Authorization": f"Bearer {os.environ['OMNISDK_ADMIN_KEY']}"}
    )
    ropo = analytics.get("/v1/analytics/ropo", params={"lookback_days": 30}, timeout=60)
    if ropo.status_code == 501:  # a server installed without its analytics extra
        print(f"   {ropo.json()['detail']}")
    else:
        store = ropo.json()["store"]
        by_code = store["links"].get("customer_code", {}).get("revenue", 0.0)
        print(
            f"   store revenue researched online (ROPO): {store['researched_online_revenue']} "
            f"of {store['revenue']} EUR; linked by customer code: {by_code} EUR"
        )
        key = {"Idempotency-Key": uuid.uuid4().hex}
        fit = analytics.post("/v1/analytics/ltv", json={}, headers=key, timeout=120).json()
        scored = admin.identity.get_profile(linked.customer_id)
        value = f"CLV {scored.ltv.clv:.2f} EUR" if scored.ltv else "CLV after 30 repeat buyers"
        print(f"   fit {fit['model']}: her RFM score {scored.rfm and scored.rfm.score}; {value}")
    analytics.close()

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

    step("She subscribes to the newsletter: pending until she clicks the confirmation e-mail")
    pending = web.consent.grant(linked.customer_id, "marketing:email", source="checkout")
    token = pending.confirmations[0].token
    print(
        f"   status {pending.state.purposes['marketing:email'].status.value}; may e-mail her: "
        f"{web.consent.can_contact(linked.customer_id, 'email')}"
    )
    web.consent.confirm(token)  # the shop's confirmation link handler
    allowed = web.consent.can_contact(linked.customer_id, "email")
    print(f"   after the click: may e-mail her: {allowed}")

    back_in_stock(step, linked.customer_id, app, pos, admin)  # issue 20: examples/journey_alerts.py

    step("On her phone she withdraws personalisation; the laptop's next page is generic")
    started = time.monotonic()
    app.consent.withdraw(linked.customer_id, "personalisation", source="app_settings")
    while web.consent_cache.get(linked.customer_id, None) is not None:
        time.sleep(0.005)  # the laptop's backend hears of it over the change feed
    heard = (time.monotonic() - started) * 1000
    page = web.content.decide(linked.customer_id, device="desktop")
    print(
        f"   laptop heard in {heard:.0f} ms; hero: {page['landing.hero'].content['title']!r} "
        f"(personalised: {page.personalised})"
    )

    step("Amy asks what the shop holds about her, then to be forgotten")
    for client in (web, app):
        client.events.flush(10)  # everything her devices sent is on record first
    export = admin.privacy.export(linked.customer_id)
    print(
        f"   export: {len(export.customer_ids)} customer ids, "
        f"{len(export.identifiers)} identifiers, "
        f"{len(export.events)} events, {len(export.consent)} consent decisions, "
        f"{len(export.returns)} return records"
    )
    receipt = admin.privacy.erase(linked.customer_id)
    kept = receipt.kept_anonymised
    print(f"   erased {receipt.customers} customer records; kept anonymised: {kept}")
    print(f"   her e-mail now resolves to: {web.identity.resolve('email', 'amy@example.com')}")

    for client in (web, app, pos, admin):
        client.close()
    step("Journey complete")


if __name__ == "__main__":
    main()
