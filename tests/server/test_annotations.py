"""Annotations as department knowledge: who may see, edit and delete a note, its revisions,
and that notes follow merges and splits (issue 19)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update

from omnisdk.core.problems import ProblemType
from server_stub.services import staff
from server_stub.services.staff import Role
from server_stub.storage.tables import annotations_table, audit_log, changes
from tests.server.conftest import Harness, ShopForTest


class Staffer:
    def __init__(self, shop: ShopForTest, secret: str) -> None:
        self.shop = shop
        self.headers = {"Authorization": f"Bearer {secret}"}

    async def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return await self.shop.http.request(method, path, headers=self.headers, **kwargs)


async def staffer(
    server: Harness, shop: ShopForTest, name: str, department: str, role: Role
) -> Staffer:
    async with server.database.transaction(write=True) as conn:
        _, secret = await staff.create(conn, shop.id, name, department, role)
    return Staffer(shop, secret)


async def customer(shop: ShopForTest, device: str = "amy-phone") -> str:
    response = await shop.request(
        "POST", "/v1/identity/identify", "web", json={"anonymous_id": device}
    )
    return str(response.json()["customer_id"])


async def note(who: Staffer, customer_id: str, **body: Any) -> dict[str, Any]:
    body = {"department": "ignored", "author": "ignored", "text": "a note", **body}
    response = await who.request("POST", f"/v1/customers/{customer_id}/annotations", json=body)
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


@pytest.fixture
async def people(server: Harness, shop: ShopForTest) -> dict[str, Staffer]:
    return {
        "kim": await staffer(server, shop, "Kim", "service", Role.AGENT),
        "lou": await staffer(server, shop, "Lou", "service", Role.AGENT),
        "lea": await staffer(server, shop, "Lea", "service", Role.LEAD),
        "sam": await staffer(server, shop, "Sam", "stores", Role.AGENT),
        "ada": await staffer(server, shop, "Ada", "it", Role.ADMIN),
    }


async def test_a_staff_note_carries_her_name_and_department_whatever_the_body_says(
    shop: ShopForTest, people: dict[str, Staffer]
) -> None:
    amy = await customer(shop)
    written = await note(people["kim"], amy, kind="promise", text="refund by Friday", pinned=True)
    assert (written["author"], written["department"]) == ("Kim", "service")
    assert (written["kind"], written["pinned"], written["revision"]) == ("promise", True, 1)


async def test_a_department_only_note_is_hidden_from_other_departments_and_backends(
    shop: ShopForTest, people: dict[str, Staffer]
) -> None:
    amy = await customer(shop)
    await note(people["kim"], amy, text="service only", visibility="department")
    await note(people["kim"], amy, text="for everyone")
    seen_by = {}
    for who in ("lou", "sam", "ada"):
        listed = await people[who].request("GET", f"/v1/customers/{amy}/annotations")
        seen_by[who] = {n["text"] for n in listed.json()["items"]}
    backend = await shop.request("GET", f"/v1/customers/{amy}/profile", "web")
    assert seen_by["lou"] == seen_by["ada"] == {"service only", "for everyone"}
    assert seen_by["sam"] == {"for everyone"}
    assert {n["text"] for n in backend.json()["annotations"]} == {"for everyone"}


async def test_a_backend_key_naming_a_department_does_not_read_its_notes(
    server: Harness, shop: ShopForTest, people: dict[str, Staffer]
) -> None:
    """A shop backend's key names the department of a note it writes, never one it reads:
    `?department=finance` gave a web key finance's private notes and their revisions, and the
    customer's change feed (any key of the shop) announced each one."""
    amy = await customer(shop)
    secret = await note(people["kim"], amy, text="service only", visibility="department")
    await note(people["kim"], amy, text="for everyone")
    listed = await shop.request("GET", f"/v1/customers/{amy}/annotations?department=service", "web")
    assert {n["text"] for n in listed.json()["items"]} == {"for everyone"}
    revisions = await shop.request(
        "GET", f"/v1/annotations/{secret['annotation_id']}/revisions?department=service", "web"
    )
    assert revisions.status_code == 404 or revisions.json()["items"] == [], revisions.text
    async with server.database.transaction(write=False) as conn:
        announced = [
            row.payload["visibility"]
            for row in await conn.execute(
                select(changes.c.payload).where(
                    changes.c.tenant_id == shop.id, changes.c.kind == "annotation"
                )
            )
        ]
    assert announced == ["staff"]
    # Her own department still reads it, as does an admin.
    for who in ("lou", "ada"):
        seen = await people[who].request("GET", f"/v1/customers/{amy}/annotations")
        assert "service only" in {n["text"] for n in seen.json()["items"]}


async def test_a_note_narrowed_to_its_department_is_announced_once_then_no_more(
    server: Harness, shop: ShopForTest, people: dict[str, Staffer]
) -> None:
    """Feed readers saw the note created for all staff: they learn it was narrowed (else they
    keep showing it), and nothing of its later edits while it is the department's only."""
    amy = await customer(shop)
    written = await note(people["kim"], amy, text="for everyone")
    path = f"/v1/annotations/{written['annotation_id']}"
    narrowing = {"visibility": "department", "kind": "warning"}
    for change in (narrowing, {"text": "service only now"}):
        edited = await people["kim"].request("PATCH", path, json=change)
        assert edited.status_code == 200, edited.text
    widened = await people["kim"].request("PATCH", path, json={"visibility": "staff"})
    assert widened.status_code == 200, widened.text
    async with server.database.transaction(write=False) as conn:
        announced = [
            (
                row.payload["action"],
                row.payload["visibility"],
                row.payload["revision"],
                row.payload.get("kind"),
            )
            for row in await conn.execute(
                select(changes.c.payload)
                .where(changes.c.tenant_id == shop.id, changes.c.kind == "annotation")
                .order_by(changes.c.position)
            )
        ]
    # The narrowing says what they knew (not that it became a warning): its kind is the
    # department's until the note is widened again.
    assert announced == [
        ("created", "staff", 1, "note"),
        ("edited", "department", 2, None),
        ("edited", "staff", 4, "warning"),
    ]


async def test_the_author_edits_her_note_and_every_revision_is_kept(
    server: Harness, shop: ShopForTest, people: dict[str, Staffer]
) -> None:
    amy = await customer(shop)
    written = await note(people["kim"], amy, text="call after 6 pm")
    path = f"/v1/annotations/{written['annotation_id']}"
    edited = await people["kim"].request("PATCH", path, json={"text": "call after 7 pm"})
    assert edited.status_code == 200, edited.text
    assert (edited.json()["text"], edited.json()["revision"]) == ("call after 7 pm", 2)
    same = await people["kim"].request("PATCH", path, json={"text": "call after 7 pm"})
    assert same.json()["revision"] == 2  # a repeated edit adds no revision
    revisions = (await people["kim"].request("GET", f"{path}/revisions")).json()["items"]
    assert [(r["revision"], r["action"], r["text"]) for r in revisions] == [
        (1, "created", "call after 6 pm"),
        (2, "edited", "call after 7 pm"),
    ]
    async with server.database.transaction(write=False) as conn:
        actions = [
            row.action
            for row in await conn.execute(
                select(audit_log.c.action)
                .where(audit_log.c.tenant_id == shop.id)
                .order_by(audit_log.c.id)
            )
        ]
        kinds = [
            row.payload["action"]
            for row in await conn.execute(
                select(changes.c.payload).where(
                    changes.c.tenant_id == shop.id, changes.c.kind == "annotation"
                )
            )
        ]
    assert actions == ["annotation.created", "annotation.edited"]
    assert kinds == ["created", "edited"]


async def test_another_agent_may_not_change_her_note_but_her_lead_and_an_admin_may(
    shop: ShopForTest, people: dict[str, Staffer]
) -> None:
    amy = await customer(shop)
    written = await note(people["kim"], amy)
    path = f"/v1/annotations/{written['annotation_id']}"
    for who in ("lou", "sam"):
        refused = await people[who].request("PATCH", path, json={"text": "mine now"})
        assert refused.status_code == 403
        assert refused.json()["type"] == ProblemType.ANNOTATION_FORBIDDEN.value
        deleted = await people[who].request("POST", f"{path}/delete", json={"reason": "wrong"})
        assert deleted.status_code == 403
    assert (await people["lea"].request("PATCH", path, json={"pinned": True})).status_code == 200
    assert (await people["ada"].request("PATCH", path, json={"kind": "warning"})).status_code == 200
    final = (await people["kim"].request("GET", f"/v1/customers/{amy}/annotations")).json()
    assert (final["items"][0]["pinned"], final["items"][0]["kind"]) == (True, "warning")


async def test_a_department_only_note_of_another_department_is_not_even_found(
    shop: ShopForTest, people: dict[str, Staffer]
) -> None:
    amy = await customer(shop)
    written = await note(people["kim"], amy, visibility="department")
    path = f"/v1/annotations/{written['annotation_id']}"
    assert (await people["sam"].request("PATCH", path, json={"text": "x"})).status_code == 404
    assert (await people["sam"].request("GET", f"{path}/revisions")).status_code == 404


async def test_her_own_note_is_hers_to_change_only_within_the_edit_window(
    server: Harness, shop: ShopForTest, people: dict[str, Staffer]
) -> None:
    amy = await customer(shop)
    written = await note(people["kim"], amy)
    async with server.database.transaction(write=True) as conn:
        await conn.execute(
            update(annotations_table)
            .where(annotations_table.c.id == written["annotation_id"])
            .values(created_at=datetime.now(UTC) - timedelta(hours=25))
        )
    path = f"/v1/annotations/{written['annotation_id']}"
    late = await people["kim"].request("PATCH", path, json={"text": "too late"})
    assert late.status_code == 403
    assert "24 hours" in late.json()["detail"]
    assert (await people["lea"].request("PATCH", path, json={"text": "lead"})).status_code == 200


async def test_deletion_is_soft_with_a_reason_and_hides_the_note(
    shop: ShopForTest, people: dict[str, Staffer]
) -> None:
    amy = await customer(shop)
    written = await note(people["kim"], amy, text="wrong customer")
    path = f"/v1/annotations/{written['annotation_id']}"
    short = await people["kim"].request("POST", f"{path}/delete", json={"reason": ""})
    assert short.status_code == 422
    deleted = await people["kim"].request(
        "POST", f"{path}/delete", json={"reason": "written on the wrong customer"}
    )
    assert deleted.status_code == 200
    assert deleted.json()["delete_reason"] == "written on the wrong customer"
    again = await people["kim"].request("POST", f"{path}/delete", json={"reason": "again!"})
    assert again.json()["delete_reason"] == "written on the wrong customer"
    listed = await people["kim"].request("GET", f"/v1/customers/{amy}/annotations")
    assert listed.json()["items"] == []
    history = await people["kim"].request(
        "GET", f"/v1/customers/{amy}/annotations", params={"include_deleted": "true"}
    )
    assert [n["text"] for n in history.json()["items"]] == ["wrong customer"]
    revisions = (await people["kim"].request("GET", f"{path}/revisions")).json()["items"]
    assert revisions[-1]["action"] == "deleted"
    assert revisions[-1]["reason"] == "written on the wrong customer"
    edit = await people["kim"].request("PATCH", path, json={"text": "back"})
    assert edit.status_code == 409


async def test_an_expired_note_is_no_longer_shown(
    shop: ShopForTest, people: dict[str, Staffer]
) -> None:
    amy = await customer(shop)
    soon = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    past = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    await note(people["kim"], amy, text="until tomorrow", expires_at=soon)
    await note(people["kim"], amy, text="until yesterday", expires_at=past)
    listed = await people["kim"].request("GET", f"/v1/customers/{amy}/annotations")
    assert [n["text"] for n in listed.json()["items"]] == ["until tomorrow"]


async def test_a_shop_backend_changes_only_what_its_named_author_wrote_with_its_key(
    shop: ShopForTest,
) -> None:
    amy = await customer(shop)
    body = {"department": "service", "author": "Kim", "text": "from the web shop"}
    written = await shop.request("POST", f"/v1/customers/{amy}/annotations", "web", json=body)
    path = f"/v1/annotations/{written.json()['annotation_id']}"
    other = {"department": "service", "author": "Jo", "text": "mine"}
    assert (await shop.request("PATCH", path, "web", json=other)).status_code == 403
    own = {"department": "service", "author": "Kim", "text": "edited"}
    assert (await shop.request("PATCH", path, "web", json=own)).status_code == 200
    assert (await shop.request("PATCH", path, "app", json=own | {"text": "x"})).status_code == 403


async def test_notes_follow_a_merge_and_go_back_with_a_split(
    shop: ShopForTest, people: dict[str, Staffer]
) -> None:
    phone = await customer(shop, "phone-1")
    laptop = await customer(shop, "laptop-1")
    await note(people["kim"], laptop, text="written on the laptop customer")
    merged = await shop.request(
        "POST",
        "/v1/identity/identify",
        "web",
        json={"anonymous_id": "laptop-1", "customer_ref": "crm-1"},
    )
    joined = await shop.request(
        "POST",
        "/v1/identity/identify",
        "web",
        json={"anonymous_id": "phone-1", "customer_ref": "crm-1"},
    )
    assert merged.is_success and joined.is_success
    survivor = joined.json()["customer_id"]
    texts = (await people["kim"].request("GET", f"/v1/customers/{survivor}/annotations")).json()
    assert [n["text"] for n in texts["items"]] == ["written on the laptop customer"]
    merge_id = joined.json()["merge_ids"][0]
    assert (await shop.request("POST", f"/v1/merges/{merge_id}/split")).status_code == 200
    back = {
        who: [
            n["text"]
            for n in (
                await people["kim"].request("GET", f"/v1/customers/{who}/annotations")
            ).json()["items"]
        ]
        for who in (phone, laptop)
    }
    assert back == {phone: [], laptop: ["written on the laptop customer"]}


async def test_a_staff_key_cannot_sign_return_codes_or_link_identifiers(
    people: dict[str, Staffer], shop: ShopForTest
) -> None:
    """A staff key could issue a signed return code for an order of lines she made up (which
    any till redeems) and identify her own device with a customer's e-mail (a merge). It
    keeps what the console's people do through the API: read, annotate, declare a channel."""
    amy = await customer(shop)
    for who in (people["kim"], people["ada"]):
        issued = await who.request(
            "POST",
            "/v1/returns",
            json={
                "order_ref": "made-up-1",
                "customer_id": amy,
                "lines": [{"sku": "TV-85", "quantity": 5, "unit_price": 2999.0}],
            },
        )
        assert issued.status_code == 403, issued.text
        assert issued.json()["type"].endswith("/insufficient-scope")
        linked = await who.request(
            "POST",
            "/v1/identity/identify",
            json={"anonymous_id": "kims-phone", "email": "amy@example.com"},
        )
        assert linked.status_code == 403, linked.text
    declared = await people["kim"].request(
        "PUT", f"/v1/customers/{amy}/preferred-channel", json={"channel": "sms"}
    )
    assert declared.status_code == 200, declared.text
    assert declared.json()["channel"] == "sms"
    assert (await people["kim"].request("GET", f"/v1/customers/{amy}/profile")).status_code == 200
