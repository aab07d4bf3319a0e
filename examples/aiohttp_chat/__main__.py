"""``python -m examples.aiohttp_chat``: serve the chat example and print the URL to open."""

from .app import main

main()
