"""The omnisdk reference sync server: FastAPI over SQLAlchemy 2 (SQLite or PostgreSQL)."""

from server_stub.app import create_app

__all__ = ["create_app"]
