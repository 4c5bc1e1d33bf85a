"""The customer journey of DESIGN.md, as far as omnisdk builds it today.

Each shop backend — the web shop on Amy's laptop, the app backend behind her phone, the till
in the store — uses the SDK with its own channel's key. Run it with `make demo`, or against
your own server with OMNISDK_URL and OMNISDK_{WEB,APP,POS,ADMIN}_KEY set.
"""

from __future__ import annotations

import os
import uuid

import omnisdk


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
        print(
            f"   {name:12} -> tenant {me.tenant_id}, channel {me.channel.value}, "
            f"{len(me.scopes)} scopes"
        )

    step("The app backend writes; a retry of the same write is answered, not applied again")
    key = f"journey-{uuid.uuid4()}"
    first = app.system.ping("Amy opened the campaign page", 1, idempotency_key=key)
    again = app.system.ping("Amy opened the campaign page", 1, idempotency_key=key)
    print(
        f"   first answer at {first.received_at:%H:%M:%S.%f}, "
        f"retry answer at {again.received_at:%H:%M:%S.%f} (the same: replayed)"
    )

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

    step("The shop's admin sees its keys (never their secrets)")
    for api_key in admin.keys.list():
        print(f"   {api_key.key_id}  {api_key.channel.value:5}  {api_key.name}")

    for client in (web, app, pos, admin):
        client.close()
    step("Journey complete")


if __name__ == "__main__":
    main()
