"""A deterministic fake language model: a long answer derived from the prompt, streamed token by token.

Two faces of the same model, because real SDKs come in both:

* :func:`stream_answer` is an async generator (like an asyncio SDK client), run on the event loop;
* :class:`BlockingClient` is a blocking, SDK-style client whose ``stream()`` is a plain generator that sleeps
  between tokens (like a synchronous HTTP SDK). resumable-sse runs it in a worker thread, so it never blocks the
  event loop.

The answer is a pure function of the prompt (:func:`answer_tokens`), so tests can compare what a browser shows
with what the model said, token for token.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import time
from collections.abc import AsyncIterator, Iterator

__all__ = ["DEFAULT_TOKENS_PER_SECOND", "BlockingClient", "answer_text", "answer_tokens", "stream_answer"]

DEFAULT_TOKENS_PER_SECOND = 30.0
"""How fast the fake model "types"; the ``CHAT_TOKENS_PER_SECOND`` environment variable overrides it."""

_OPENERS = (
    "Good question.",
    "Let me walk through it.",
    "Here is how I would think about it.",
    "Short version first, then the details.",
)
_SUBJECTS = (
    "the event log",
    "a reconnecting browser",
    "the producer",
    "every reader",
    "the last event id",
    "a stream",
    "the server",
    "the network",
    "each token",
    "a refresh",
)
_VERBS = (
    "keeps",
    "replays",
    "remembers",
    "resumes",
    "records",
    "forwards",
    "survives",
    "orders",
    "continues",
    "delivers",
)
_OBJECTS = (
    "what was already said",
    "the answer from where it stopped",
    "every event exactly once",
    "the position of the reader",
    "tokens in the order they were written",
    "the tail of the conversation",
    "a dropped connection",
    "the rest of the paragraph",
    "the state of the stream",
    "what the client missed",
)
_TAILS = (
    "without starting over",
    "while the model keeps typing",
    "even after a page reload",
    "with no repeated words",
    "and nothing is generated twice",
    "as if nothing had happened",
    "for every open tab",
    "in a single write",
)


def answer_tokens(prompt: str) -> list[str]:
    """The model's whole answer to ``prompt`` as tokens (words with their leading space, and paragraph breaks).

    Deterministic: the same prompt always gives the same tokens. Between about 220 and 340 tokens.
    """
    seed = int.from_bytes(hashlib.sha256(prompt.strip().encode("utf-8")).digest()[:8], "big")
    rng = random.Random(seed)
    topic = " ".join(prompt.split())[:80] or "nothing in particular"
    words: list[str] = [*f"You asked: “{topic}”".split(" "), *rng.choice(_OPENERS).split(" ")]
    target = rng.randint(220, 340)
    sentences_in_paragraph = 0
    while len(words) < target:
        sentence = f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)}"
        if rng.random() < 0.6:
            sentence += f" {rng.choice(_TAILS)}"
        sentence = sentence[0].upper() + sentence[1:] + "."
        words.extend(sentence.split(" "))
        sentences_in_paragraph += 1
        if sentences_in_paragraph >= rng.randint(3, 5):
            words.append("\n\n")
            sentences_in_paragraph = 0
    words.extend(["That", "is", "the", "whole", "answer."])
    tokens: list[str] = []
    for word in words:
        if word == "\n\n" or not tokens or tokens[-1] == "\n\n":
            tokens.append(word)
        else:
            tokens.append(" " + word)
    return tokens


def answer_text(prompt: str) -> str:
    """The model's whole answer to ``prompt`` as one string (what a client shows when the answer is complete)."""
    return "".join(answer_tokens(prompt))


def tokens_per_second() -> float:
    """The configured speed: ``CHAT_TOKENS_PER_SECOND`` (0 means as fast as possible), else the default."""
    value = os.environ.get("CHAT_TOKENS_PER_SECOND")
    return float(value) if value else DEFAULT_TOKENS_PER_SECOND


async def stream_answer(prompt: str, speed: float) -> AsyncIterator[str]:
    """Stream the answer to ``prompt`` at ``speed`` tokens per second (0: no delay), on the event loop."""
    delay = 1.0 / speed if speed > 0 else 0.0
    for token in answer_tokens(prompt):
        await asyncio.sleep(delay)
        yield token


class BlockingClient:
    """A blocking, SDK-style client of the same fake model (think ``client.chat.stream(...)`` of a sync SDK)."""

    def __init__(self, speed: float) -> None:
        self.delay = 1.0 / speed if speed > 0 else 0.0

    def stream(self, prompt: str) -> Iterator[str]:
        """A plain generator of the answer's tokens; each ``next()`` blocks for one token's time."""
        for token in answer_tokens(prompt):
            if self.delay:
                time.sleep(self.delay)
            yield token
