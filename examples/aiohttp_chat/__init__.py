"""The resumable-sse chat example: ``python -m examples.aiohttp_chat`` from the repository root (see app.py)."""

from .app import create_app, main

__all__ = ["create_app", "main"]
