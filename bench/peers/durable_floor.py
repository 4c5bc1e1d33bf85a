"""The floor of a durable cart add: a bare FastAPI endpoint doing the least a shared cart
needs, by hand, in one transaction — lock the cart row, read its state, write it back, take
the next feed position and store the change — with the driver itself (sqlite3 or asyncpg), no
authentication, no CRDT, no validation beyond the pydantic body.

It answers "how close to the machine is our cart add". On SQLite nothing that keeps an add
durable and ordered on the feed can be much cheaper. On PostgreSQL it numbers the change the
textbook way, with a statement before COMMIT, so the tenant's counter row stays locked across
client round trips; the server numbers inside COMMIT instead (migration 0011) and beats it —
there the floor shows what the straightforward design costs. Run with uvicorn:
`PEER_DATABASE=/path/file.sqlite3` or `PEER_DATABASE=postgresql://...`.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel

DATABASE = os.environ.get("PEER_DATABASE", "floor.sqlite3")
SCHEMA = (
    "CREATE TABLE IF NOT EXISTS floor_carts (customer TEXT PRIMARY KEY, state TEXT, version INT)",
    "CREATE TABLE IF NOT EXISTS floor_positions (tenant TEXT PRIMARY KEY, position BIGINT)",
    "CREATE TABLE IF NOT EXISTS floor_changes (tenant TEXT, position BIGINT, customer TEXT, "
    "payload TEXT, PRIMARY KEY (tenant, position))",
)


class Line(BaseModel):
    sku: str


class Op(BaseModel):
    op_id: str
    type: str
    line: Line
    delta: int


class Ops(BaseModel):
    ops: list[Op]


def _added(state: dict[str, int], body: Ops) -> dict[str, int]:
    for op in body.ops:
        state[op.line.sku] = state.get(op.line.sku, 0) + op.delta
    return state


app = FastAPI()

if DATABASE.startswith("postgresql"):
    import asyncpg

    pool: Any = None

    @app.on_event("startup")
    async def _connect() -> None:
        global pool
        pool = await asyncpg.create_pool(DATABASE, min_size=4, max_size=20)
        async with pool.acquire() as conn:
            await conn.execute("SELECT pg_advisory_lock(4242)")  # workers start together
            for statement in SCHEMA:
                await conn.execute(statement)
            await conn.execute("SELECT pg_advisory_unlock(4242)")

    @app.post("/v1/carts/{customer}/ops")
    async def add_postgresql(customer: str, body: Ops) -> dict[str, Any]:
        async with pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "SELECT state, version FROM floor_carts WHERE customer = $1 FOR UPDATE", customer
            )
            state = _added(json.loads(row[0]) if row else {}, body)
            version = (row[1] if row else 0) + 1
            await conn.execute(
                "INSERT INTO floor_carts VALUES ($1, $2, $3) ON CONFLICT (customer) "
                "DO UPDATE SET state = excluded.state, version = excluded.version",
                customer,
                json.dumps(state),
                version,
            )
            await conn.execute(
                "WITH p AS (INSERT INTO floor_positions VALUES ('t', 1) ON CONFLICT (tenant) "
                "DO UPDATE SET position = floor_positions.position + 1 RETURNING position) "
                "INSERT INTO floor_changes SELECT 't', p.position, $1, $2 FROM p",
                customer,
                json.dumps(state),
            )
        return {"customer_id": customer, "version": version, "lines": state}

else:
    connection = sqlite3.connect(DATABASE, isolation_level=None, check_same_thread=False)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")
    for statement in SCHEMA:
        connection.execute(statement)
    writer = asyncio.Lock()

    @app.post("/v1/carts/{customer}/ops")
    async def add_sqlite(customer: str, body: Ops) -> dict[str, Any]:
        async with writer:
            connection.execute("BEGIN IMMEDIATE")
            row = connection.execute(
                "SELECT state, version FROM floor_carts WHERE customer = ?", (customer,)
            ).fetchone()
            state = _added(json.loads(row[0]) if row else {}, body)
            version = (row[1] if row else 0) + 1
            connection.execute(
                "INSERT INTO floor_carts VALUES (?, ?, ?) ON CONFLICT (customer) "
                "DO UPDATE SET state = excluded.state, version = excluded.version",
                (customer, json.dumps(state), version),
            )
            position = connection.execute(
                "INSERT INTO floor_positions VALUES ('t', 1) ON CONFLICT (tenant) "
                "DO UPDATE SET position = position + 1 RETURNING position"
            ).fetchone()[0]
            connection.execute(
                "INSERT INTO floor_changes VALUES ('t', ?, ?, ?)",
                (position, customer, json.dumps(state)),
            )
            connection.execute("COMMIT")
        return {"customer_id": customer, "version": version, "lines": state}
