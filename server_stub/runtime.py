"""What one server process holds while it runs: settings, storage, key cache, metrics."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from server_stub.auth import KeyCache
from server_stub.observability import Metrics
from server_stub.settings import Settings
from server_stub.storage.database import Database


@dataclass
class Runtime:
    settings: Settings
    database: Database
    key_cache: KeyCache
    metrics: Metrics


def runtime_of(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime
