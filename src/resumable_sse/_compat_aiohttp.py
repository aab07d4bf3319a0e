"""The two places where resumable-sse relies on how aiohttp works inside, not on what it documents.

Each is kept for a measured gain, is checked by ``tests/test_compat.py`` (which fails the day the assumption stops
holding), and degrades safely at run time: nothing here can lose an event or make the package fail to import.

1. **aiohttp's write completes in the step that calls it** when the socket's buffer is empty and the data is within
   its high-water mark (``StreamWriter.write`` waits only to drain a buffer over its limit). :func:`write_at_once`
   runs that coroutine to its end in the caller's step, so a reader that keeps up is written to in the step that
   appended its event: no task wakes for it (``benchmarks/fleet.py``, ``benchmarks/single_stream.py``). Should a
   version of aiohttp wait before it hands the data to the transport, that is seen (the writer's public
   ``output_size`` did not grow), logged once as an error, and the fast path is turned off: the caller then writes
   the ordinary, awaited way, so the chunk is never dropped.
2. **aiohttp's writer sets some attributes only when its response starts** (``_LATE_WRITER_ATTRIBUTES``).
   :func:`share_writer_keys` sets them once on a throw-away writer, so that CPython's shared key table of the class
   knows them: 0.4 KB less per open connection after a burst of requests (``benchmarks/idle.py``). If aiohttp's
   writer can no longer be made that way, nothing is done (the cost is that memory, never an error).
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, Final

from aiohttp.abc import AbstractStreamWriter
from aiohttp.http_writer import StreamWriter

from ._logger import logger

__all__ = ["LATE_WRITER_ATTRIBUTES", "fast_path_on", "share_writer_keys", "write_at_once"]


LATE_WRITER_ATTRIBUTES: Final = ("length", "chunked", "buffer_size", "output_size", "_eof", "_compress")
"""The attributes aiohttp's ``StreamWriter`` sets only once its response starts (each has a class default)."""

_fast = True  # turned off for good the first time aiohttp's write is seen to wait before it writes


def write_at_once(write: Coroutine[Any, Any, None], writer: AbstractStreamWriter) -> bool:
    """Run ``write`` (a just-made ``StreamResponse.write(data)`` on ``writer``'s response) to its end now.

    True when the data was handed to the transport; False when nothing was written (the connection closed under
    it, or aiohttp waited before writing), and the caller must write the data the awaited way. The caller has
    checked that the transport's buffer is empty and the data within its high-water mark.
    """
    global _fast
    if not _fast:
        write.close()
        return False
    before = writer.output_size
    try:
        write.send(None)
    except StopIteration:
        return True
    except Exception:  # nothing was written (the connection closed under it): the awaited write reports it
        return False
    write.close()
    if writer.output_size > before:
        return True  # it waited after writing (to drain what it wrote): the data is in the transport
    _fast = False
    logger.error(
        "aiohttp's StreamResponse.write waited before it wrote: resumable-sse's write in one step is off (every "
        "write now awaits; nothing was lost). Please report the aiohttp version.",
        extra={"stream_id": None},  # (every stream of the process)
    )
    return False


def fast_path_on() -> bool:
    """Whether :func:`write_at_once` still runs writes in one step (False once aiohttp was seen to wait first)."""
    return _fast


def share_writer_keys() -> bool:
    """Teach aiohttp's ``StreamWriter`` class the names of all its attributes before any request is served.

    CPython 3.11+ keeps an instance's attributes in a table of names its class shares, as long as each name was
    added while few instances existed. aiohttp's writer gets some attributes only when its response starts, so when
    a score of requests arrive before the first response starts (a burst of reconnects, or handlers that wait for a
    store first) those names never join the table, and every writer of the process then keeps a dict of its own
    (``benchmarks/idle.py``, Redis store: 20.3-20.5 KiB a connection without this, 19.8-20.0 with it). One writer,
    made here and thrown away, sets them first. Returns False when aiohttp's writer cannot be made that way.
    """
    try:
        writer = StreamWriter(None, None)  # type: ignore[arg-type]  # (never written to)
        for name in LATE_WRITER_ATTRIBUTES:
            setattr(writer, name, getattr(writer, name, None))
    except Exception:  # a changed aiohttp: the optimization is lost, never the import
        return False
    return True
