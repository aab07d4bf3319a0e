"""``python -m examples.ai_sdk_chat``: serve the AI SDK chat example and print the URL to open."""

from .app import main

main()
