"""mkdocs hooks: add the server's own OpenAPI document to the site as `openapi.json`
(docs/http-api.md renders it), so the HTTP reference is always the one the code serves."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files


def openapi_document() -> dict[str, Any]:
    from server_stub.app import create_app
    from server_stub.settings import Settings

    with tempfile.TemporaryDirectory() as directory:
        # Building the document touches no database; the URL only has to be well-formed.
        settings = Settings(
            database_url=f"sqlite+aiosqlite:///{Path(directory) / 'unused.sqlite3'}",
            secret_key="ZG9jcy1zaXRlLWJ1aWxkLW9ubHktbm90LWEtcmVhbC1rZXk=",
        )
        document: dict[str, Any] = create_app(settings).openapi()
    return document


def on_files(files: Files, config: Any, **_: Any) -> Files:
    content = json.dumps(openapi_document(), indent=2)
    files.append(File.generated(config, "openapi.json", content=content))
    return files
