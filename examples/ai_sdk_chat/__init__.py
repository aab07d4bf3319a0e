"""A React page with the AI SDK's ``useChat({ resume: true })`` in front of an aiohttp back end (resumable-sse)."""
