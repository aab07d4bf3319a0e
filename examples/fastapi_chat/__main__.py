"""``python -m examples.fastapi_chat``: serve the chat example with FastAPI under uvicorn and print the URL."""

from .app import main

main()
