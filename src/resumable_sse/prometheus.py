"""Prometheus metrics for resumable-sse: :class:`PrometheusMetrics`, an :class:`~resumable_sse.Observer` to give to
the :class:`~resumable_sse.Streamer`.

::

    from resumable_sse.prometheus import PrometheusMetrics

    setup(app, Streamer(store, observer=PrometheusMetrics()))   # then expose prometheus_client's registry

Needs the ``prometheus`` extra (``pip install "resumable-sse[prometheus]"``, which brings ``prometheus_client``).
Every counter is exact: a stream, request, event or store call is counted once, when it happened; events are
counted per append (one increment for a batch), so metrics cost a few calls per batch, not per event.

The metrics (all prefixed ``resumable_sse_``), for the producers and readers of this process:

- ``streams_started_total``, ``streams_ended_total{status}`` (``done``, ``error``, ``cancelled``, ``lost``) and
  ``streams_running`` (started less ended): the producers this process ran.
- ``events_appended_total``: events those producers wrote to the store (terminal entries not counted).
- ``readers_active``: readers being served now.
- ``requests_total{outcome}``: HTTP requests by how they were answered (``new``, ``resumed``, ``reset``,
  ``no_content``, ``gone``, ``bad_request``, ``forbidden``, ``unavailable``, ``method_not_allowed``, ``error``).
- ``store_seconds{operation}`` (histogram) and ``store_errors_total{operation}``: every store call the engine made
  (``claim``, ``append``, ``renew``, ``end``, ``abandon``, ``audit``, ``state``, ``read``), how long it took as the
  engine waited for it, and those that failed (the store unreachable or full, or an unexpected error).
- ``reader_lag_events`` (histogram): at each batch a reader is served, how many events the stream's head is still
  ahead of it (0 for a reader on the live tail; large for one catching up from far behind).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from ._event import Status
from ._observe import REQUEST_OUTCOMES, STORE_OPERATIONS, Observer, RequestOutcome, StoreOperation

try:
    from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
except ImportError as exc:  # pragma: no cover - exercised in an environment without prometheus_client
    raise ImportError(
        "resumable_sse.prometheus needs prometheus_client: pip install 'resumable-sse[prometheus]'"
    ) from exc

__all__ = ["LAG_BUCKETS", "STORE_BUCKETS", "PrometheusMetrics"]

STORE_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
"""Default buckets of ``resumable_sse_store_seconds``: from a memory store's microseconds to a Redis retry's seconds."""
LAG_BUCKETS: Final = (0.0, 1.0, 2.0, 5.0, 10.0, 50.0, 100.0, 500.0, 1000.0, 5000.0, 10000.0)
"""Default buckets of ``resumable_sse_reader_lag_events``: 0 is a live reader; the default store keeps 10,000."""

_STATUSES: Final[tuple[Status, ...]] = ("done", "error", "cancelled", "lost")


class PrometheusMetrics(Observer):
    """An observer that keeps the library's Prometheus metrics (listed on the "Metrics and logs" page and in
    this module's docstring).

    :param registry: the ``prometheus_client.CollectorRegistry`` to register the metrics in; default: the global
        ``prometheus_client.REGISTRY``, which ``prometheus_client``'s exposition serves by default. A registry holds
        one set of these metrics: make one ``PrometheusMetrics`` per registry and give it to every Streamer whose
        figures it should add up.
    :param store_buckets: histogram buckets of ``resumable_sse_store_seconds`` (seconds).
    :param lag_buckets: histogram buckets of ``resumable_sse_reader_lag_events`` (events).

    Every label value is created at once (at 0), so a scrape shows each series before it first moves and rates
    never start from a missing series.
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        store_buckets: Sequence[float] = STORE_BUCKETS,
        lag_buckets: Sequence[float] = LAG_BUCKETS,
    ) -> None:
        registry = REGISTRY if registry is None else registry
        self.registry: Final = registry
        prefix = "resumable_sse_"
        self.streams_started: Final = Counter(
            prefix + "streams_started", "Producers started in this process (streams claimed here).", registry=registry
        )
        self.streams_ended: Final = Counter(
            prefix + "streams_ended",
            "Producers of this process that ended, by how their stream ended.",
            ["status"],
            registry=registry,
        )
        self.streams_running: Final = Gauge(
            prefix + "streams_running", "Producers running in this process now.", registry=registry
        )
        self.events: Final = Counter(
            prefix + "events_appended",
            "Events the producers of this process wrote to the store (terminal entries not counted).",
            registry=registry,
        )
        self.readers_active: Final = Gauge(
            prefix + "readers_active", "Readers being served by this process now.", registry=registry
        )
        self.requests: Final = Counter(
            prefix + "requests", "HTTP requests for streams, by how they were answered.", ["outcome"], registry=registry
        )
        self.store_seconds: Final = Histogram(
            prefix + "store_seconds",
            "Time each store call took, as the engine waited for it.",
            ["operation"],
            buckets=list(store_buckets),
            registry=registry,
        )
        self.store_errors: Final = Counter(
            prefix + "store_errors",
            "Store calls that failed (unreachable, full, or an unexpected error).",
            ["operation"],
            registry=registry,
        )
        self.reader_lag: Final = Histogram(
            prefix + "reader_lag_events",
            "Events between a reader and the stream's head after each batch it was served.",
            buckets=list(lag_buckets),
            registry=registry,
        )
        # Children bound once: a report is a dict lookup and one increment, never a label resolution.
        self._ended = {status: self.streams_ended.labels(status) for status in _STATUSES}
        self._requests = {outcome: self.requests.labels(outcome) for outcome in REQUEST_OUTCOMES}
        self._seconds = {operation: self.store_seconds.labels(operation) for operation in STORE_OPERATIONS}
        self._errors = {operation: self.store_errors.labels(operation) for operation in STORE_OPERATIONS}

    def __repr__(self) -> str:
        return f"PrometheusMetrics(registry={self.registry!r})"

    def stream_started(self, stream_id: str) -> None:
        self.streams_started.inc()
        self.streams_running.inc()

    def stream_ended(self, stream_id: str, status: Status) -> None:
        self._ended[status].inc()
        self.streams_running.dec()

    def events_appended(self, stream_id: str, count: int) -> None:
        if count:
            self.events.inc(count)

    def reader_opened(self, stream_id: str) -> None:
        self.readers_active.inc()

    def reader_closed(self, stream_id: str) -> None:
        self.readers_active.dec()

    def reader_served(self, stream_id: str, behind: int) -> None:
        self.reader_lag.observe(behind)

    def request(self, stream_id: str | None, outcome: RequestOutcome) -> None:
        self._requests[outcome].inc()

    def store_call(self, operation: StoreOperation, seconds: float, error: BaseException | None) -> None:
        self._seconds[operation].observe(seconds)
        if error is not None:
            self._errors[operation].inc()
