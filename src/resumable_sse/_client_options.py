"""The client's options, defined, defaulted and checked once (:class:`ClientOptions`).

:func:`~resumable_sse.client.connect`, :func:`~resumable_sse.client.iter_events` and
:class:`~resumable_sse.client.EventStream` take them as keywords (typed by :class:`ClientOptionsDict`) or as a
prepared :class:`ClientOptions`, and turn them into one with :func:`merge_options`: no entry point repeats a default
or a check. Re-exported by :mod:`resumable_sse.client`, where users find them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping
from types import MappingProxyType
from typing import Final, TypedDict

from ._event import TERMINAL_EVENTS

__all__ = ["DEFAULT_RAISE_ON", "ClientOptions", "ClientOptionsDict", "merge_options"]

DEFAULT_RAISE_ON: Final[frozenset[str]] = frozenset({"error", "lost"})
"""Terminal event types that raise :class:`~resumable_sse.exceptions.StreamEnded` by default."""


def _check_header_value(name: str, value: str) -> str:
    """``value`` if it can go into a request header, else ``ValueError`` (CR or LF would split the request)."""
    if "\r" in value or "\n" in value or "\0" in value:
        raise ValueError(f"{name} must not contain CR, LF or NUL: {value!r}")
    return value


@dataclasses.dataclass(frozen=True)
class ClientOptions:
    """How the client follows a stream: every option of :func:`~resumable_sse.client.connect` and
    :func:`~resumable_sse.client.iter_events` but the session.

    A bad value raises ``ValueError`` when the options are made, so at the call, not at the first request. Build
    one to share a configuration between streams and pass it as ``options=``; keywords given next to it override
    its fields (:func:`dataclasses.replace`).

    :param last_event_id: resume after this event (a saved
        :attr:`~resumable_sse.client.EventStream.last_event_id`), sent as ``Last-Event-ID``.
    :param headers: extra request headers (e.g. ``Authorization``).
    :param raise_on: terminal event types that raise :class:`~resumable_sse.exceptions.StreamEnded` instead of
        being yielded; the others are yielded, then iteration ends. Default: ``error`` and ``lost``.
    :param reconnect_delay: seconds to wait before reconnecting until the server sends ``retry:``.
    :param max_delay: the cap on the exponential backoff, in seconds.
    :param jitter: the largest fraction (0..1) randomly taken off each wait.
    :param max_retries: attempts in a row that may fail (no event, no heartbeat) before
        :class:`~resumable_sse.exceptions.RetriesExhausted`; None retries forever, as EventSource does.
    :param connect_timeout: seconds to connect and get the response headers.
    :param read_timeout: seconds without a byte from the server before the connection counts as dead and is
        replaced; keep it above the server's heartbeat interval. None: wait forever.
    """

    last_event_id: str | None = None
    headers: Mapping[str, str] = dataclasses.field(default_factory=lambda: MappingProxyType({}))
    raise_on: Collection[str] = DEFAULT_RAISE_ON
    reconnect_delay: float = 1.0
    max_delay: float = 30.0
    jitter: float = 0.5
    max_retries: int | None = None
    connect_timeout: float | None = 30.0
    read_timeout: float | None = 60.0

    def __post_init__(self) -> None:
        if self.reconnect_delay < 0 or self.max_delay < 0:
            raise ValueError("reconnect_delay and max_delay must not be negative")
        if not 0.0 <= self.jitter <= 1.0:
            raise ValueError("jitter must be between 0 and 1")
        if self.max_retries is not None and self.max_retries < 0:
            raise ValueError("max_retries must not be negative (None: retry forever)")
        unknown = set(self.raise_on) - TERMINAL_EVENTS
        if unknown:
            allowed = ", ".join(sorted(TERMINAL_EVENTS))
            raise ValueError(f"raise_on takes terminal event types ({allowed}), not {sorted(unknown)}")
        _check_header_value("last_event_id", self.last_event_id or "")
        headers = {key: _check_header_value(key, value) for key, value in self.headers.items()}
        # Frozen means frozen: the caller's mutable arguments are copied into read-only ones.
        object.__setattr__(self, "headers", MappingProxyType(headers))
        object.__setattr__(self, "raise_on", frozenset(self.raise_on))


class ClientOptionsDict(TypedDict, total=False):
    """The fields of :class:`ClientOptions` as keyword arguments (for type checkers: ``**options``)."""

    last_event_id: str | None
    headers: Mapping[str, str]
    raise_on: Collection[str]
    reconnect_delay: float
    max_delay: float
    jitter: float
    max_retries: int | None
    connect_timeout: float | None
    read_timeout: float | None


def merge_options(options: ClientOptions | None, overrides: ClientOptionsDict) -> ClientOptions:
    """``options`` (default: the defaults) with the keyword ``overrides`` applied, checked once."""
    if options is None:
        return ClientOptions(**overrides)
    return dataclasses.replace(options, **overrides) if overrides else options
