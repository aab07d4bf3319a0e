"""The chat example served by FastAPI: ``python -m examples.fastapi_chat`` from the repository root (see app.py)."""

from .app import create_app, main

__all__ = ["create_app", "main"]
