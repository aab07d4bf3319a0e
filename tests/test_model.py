"""A model-based test of the Streamer and the stores: random histories of producers, readers, trims and store faults,
checked against a reference model of every stream's log and of what every reader may honestly be told.

**Why a RuleBasedStateMachine with a private event loop per example.** Hypothesis's stateful testing is synchronous;
each example (one machine) makes its own event loop, store and Streamer and drives every step with
``loop.run_until_complete``. Live readers are tasks on that loop, so they run concurrently with every step that
awaits anything (the store's round trips, the waits below), and stand still between steps, which makes the model's
bookkeeping exact: the model changes only inside a step, and each step ends by waiting (with a deadline, never a
fixed sleep) until every live reader has caught up with the store. Rule-based machines also shrink a failure to a
short readable program of steps, which a single ``@given`` over an operation list would do less well. Per-example
loops keep examples independent (nothing survives a failing example but the shared Redis servers, and each example
has its own key prefix).

**State.** For each of two stream ids, the model holds whether the store has the stream, its epoch, status, first
retained sequence number and its whole log (event type and data per sequence number, data unique per write), the
producer's token, the snapshots taken, and the history of every state the stream went through. Every entry ever
written is recorded with the data of the entry it followed (its predecessor in that branch of the log).

**Operations.** A producer driven directly through ``store.claim``/``store.append`` with its token (as
``tests/test_discontinuities.py::produced`` does): claim, append 1-8 events, finish (a final append), a retried
append (idempotent), an append by a stale producer (fenced); ``streamer.cancel``; producer death (its lease is
shortened to 10 ms by a renewal and not renewed: the Streamer's auditor ends the stream ``lost`` when a reader
follows it, else a store audit as another process's would); store faults: lose the stream, restore one of the
latest states of the stream (a snapshot is taken after every step that changed it: a rewind, possibly to another
epoch or branch, or resurrecting a lost stream), recreate (lose, then claim again); readers:
``streamer.subscribe`` at no position, at an id some reader received, at any sequence number of the current epoch
(trimmed, the terminal, beyond the end), at an id of an earlier epoch or of an epoch that never existed; live readers
iterate their subscription in a task, lagging readers take one batch when a step says so. Stores keep 5 to 12 events
per stream and the Streamer's window is 4 events, so trims overtake readers.

**Invariants.** After every step the store's state of each stream equals the model's. ``subscribe`` answers what the
model's own judgement says (``StreamNotFound``; or the cursor and the reset, reason and first id). Every reader's
delivered sequence is checked item by item: entries are exactly once and in order (same epoch, sequence number one
more than the last, a chain of the log: each entry follows the one delivered before it, unless the store rewound
under the reader meanwhile), each is an entry that was written; nothing follows a terminal entry or ``Gone``; a
``Reset`` is honest: some state the stream was in since the reader reached its position gives exactly that reason
(``epoch``: another epoch; ``position``: the reader is beyond the last event; ``trimmed``: the reader's next event
is no longer retained) and that ``first_id`` (the first retained event), and the entries after it start there;
``Gone`` only when the stream was absent from the store at some moment since. Live readers never stall: after each
step each has caught up with the store (the same epoch and last event, or ended) within a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import itertools
import time
from collections.abc import AsyncGenerator, Awaitable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from resumable_sse import Entry, EventLog, MemoryStore, Reset, Streamer, StreamNotFound
from resumable_sse._readers import terminal_data
from resumable_sse._subscription import Gone, Subscription
from resumable_sse.exceptions import StreamFenced

from .conftest import StoreFactory
from .test_discontinuities import finish, lose, produced, snapshot

T = TypeVar("T")

STREAMS = ("s0", "s1")
LONG_LEASE = 120.0  # the test's producers never renew: they end only when a step kills them
LOST = terminal_data("lost", "the producer stopped responding")  # what the Streamer's auditor writes
CANCELLED = terminal_data("cancelled", "cancelled")
NEVER_EPOCH = "feedfacecafebeef"  # an epoch no store made
MAX_READERS = 6
SNAPSHOTS = 6  # the latest states of each stream kept for restores
DEADLINE = 10.0  # seconds a live reader may take to catch up after a step (audits come every 50 ms)
FACTOR = {"memory": 1.0, "redis": 0.5, "redis-cluster": 0.25}
RESTORE = """
for i, key in ipairs(KEYS) do
    if ARGV[i] == "" then redis.call("DEL", key) else redis.call("RESTORE", key, 0, ARGV[i], "REPLACE") end
end
"""


async def rewind(store: EventLog, stream_id: str, saved: Any) -> None:
    """Restore a snapshot (``test_discontinuities.snapshot``) as a store's restart would: atomically, and the same
    snapshot any number of times. On memory the stream is also put back in (or taken out of) the expiry order of
    finished streams, which ``test_discontinuities.restore`` leaves as it was."""
    if isinstance(store, MemoryStore):
        stream = copy.copy(saved)  # the saved copy stays as it was: it may be restored again
        stream.types, stream.texts = list(saved.types), list(saved.texts)
        store._streams[stream_id] = stream
        store._finished.pop(stream_id, None)
        if stream.status != "running":
            store._finished[stream_id] = None
        return
    client: Any = store.client  # type: ignore[attr-defined]
    # both keys at once (they share a hash slot) in one script: the cluster pipelines of older redis-py (5.1, the
    # lowest tested) refuse transaction=True (a DUMP payload is never empty: "" means delete)
    keys = [key for key, _ in saved]
    await client.eval(RESTORE, len(keys), *keys, *(b"" if dumped is None else dumped for _, dumped in saved))


@dataclass(frozen=True)
class View:
    """One state of a stream as the model holds it."""

    present: bool
    epoch: str = ""
    status: str = "running"
    first_seq: int = 1
    log: tuple[tuple[str | None, str], ...] = ()  # (event type, data) of sequence numbers 1..last_seq

    @property
    def last_seq(self) -> int:
        return len(self.log)

    @property
    def first_id(self) -> str | None:
        return f"{self.epoch}-{self.first_seq}" if self.first_seq <= self.last_seq else None

    def judge(self, epoch: str, cursor: int) -> str | None:
        """The model's own judgement of a position (not the library's ``judge``)."""
        if epoch != self.epoch:
            return "epoch"
        if cursor > self.last_seq:
            return "position"
        if cursor < self.first_seq - 1:
            return "trimmed"
        return None


ABSENT = View(present=False)


@dataclass
class Stream:
    """The model of one stream id."""

    view: View = ABSENT
    token: str | None = None
    stale_tokens: list[str] = field(default_factory=list)
    history: list[View] = field(default_factory=lambda: [ABSENT])
    snapshots: list[tuple[Any, View, str | None]] = field(default_factory=list)
    epochs: list[str] = field(default_factory=list)
    last_append: tuple[str, int, tuple[tuple[str | None, str], ...], str | None] | None = None

    def set(self, view: View) -> None:
        self.view = view
        self.history.append(view)
        self.last_append = None


@dataclass
class Reader:
    """One subscription and the model's view of what it was sent."""

    name: str
    stream_id: str
    live: bool
    subscription: Subscription
    epoch: str
    cursor: int
    since: int  # index in the stream's history from which the reader holds ``cursor`` (a lower bound)
    mark: int  # index in the stream's history at the last check: what the reader was sent later came after it
    initial_reset: Reset | None
    maybe: set[str] = field(default_factory=set)  # the epochs the reader may hold (more than one only after a reset
    # with no first id: a new life with no event yet, which the reset does not name)
    items: list[Entry | Reset | Gone] = field(default_factory=list)
    checked: int = 0
    last_data: str | None = None
    ended: bool = False
    task: asyncio.Task[None] | None = None
    batches: AsyncGenerator[Sequence[Entry | Reset | Gone], None] | None = None
    exhausted: bool = False  # the iteration returned


class StoreModel(RuleBasedStateMachine):
    """The machine; a subclass per kind of store sets ``kind``."""

    kind = "memory"

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.streams = {stream_id: Stream() for stream_id in STREAMS}
        self.readers: list[Reader] = []
        self.written: dict[tuple[str, int, str], set[str | None]] = {}  # (epoch, seq, data) -> predecessors' data
        self.counter = itertools.count(1)
        self.tokens = itertools.count(1)
        self.max_events = 0
        self.store: EventLog | None = None
        self.streamer: Streamer | None = None

    # -- plumbing ------------------------------------------------------------------------------------------------------

    def run(self, coroutine: Awaitable[T]) -> T:
        return self.loop.run_until_complete(coroutine)

    @property
    def s(self) -> Streamer:
        assert self.streamer is not None
        return self.streamer

    @property
    def db(self) -> EventLog:
        assert self.store is not None
        return self.store

    async def _make(self, max_events: int) -> None:
        if self.kind == "memory":
            self.store = MemoryStore(max_events=max_events)
        else:
            from resumable_sse.stores.redis import RedisStore

            from .redis_servers import shared_cluster, shared_server, unique_prefix

            if self.kind == "redis":
                url, options = shared_server().url, {}
            else:
                url, options = shared_cluster().url, {"cluster": True, "decode_responses": True}
            self.store = RedisStore.from_url(url, key_prefix=unique_prefix(), max_events=max_events, **options)
        # lease 0.1: the auditor asks the store about quiet streams every 50 ms (the test's producers have leases
        # of their own); a window of 4 events, so that a reader can fall behind the window and meet a trim.
        self.streamer = Streamer(self.store, lease=0.1, batch_size=4, window=4)

    def teardown(self) -> None:
        try:
            if self.streamer is not None:
                self.run(self._close())
        finally:
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()

    async def _close(self) -> None:
        for reader in self.readers:
            reader.subscription.close()  # an iteration waiting for events ends at once
        tasks = [reader.task for reader in self.readers if reader.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=DEADLINE)
        for task in tasks:
            if not task.done():
                task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for reader in self.readers:
            if reader.batches is not None:
                await reader.batches.aclose()
        await self.s.close()  # closes the store too

    def data(self, stream_id: str) -> str:
        return f"{stream_id}:{next(self.counter)}"

    def wrote(self, view: View, before: View) -> None:
        """Record the entries ``view`` has beyond ``before`` (same epoch), with their predecessors."""
        start = before.last_seq if before.present and before.epoch == view.epoch else 0
        for index in range(start, view.last_seq):
            previous = view.log[index - 1][1] if index else None
            self.written.setdefault((view.epoch, index + 1, view.log[index][1]), set()).add(previous)

    def trimmed(self, view: View) -> View:
        return replace(view, first_seq=max(1, view.last_seq - self.max_events + 1))

    # -- setup ---------------------------------------------------------------------------------------------------------

    @initialize(max_events=st.integers(5, 12))
    def make_store(self, max_events: int) -> None:
        self.max_events = max_events
        self.run(self._make(max_events))
        self.run(self._claim(STREAMS[0]))

    def ready(self) -> bool:
        return self.store is not None

    def some(self, test: Any) -> bool:
        return self.store is not None and any(test(model) for model in self.streams.values())

    def running(self) -> bool:
        return self.some(lambda m: m.view.present and m.view.status == "running")

    def present(self) -> bool:
        return self.some(lambda m: m.view.present)

    # -- the producer --------------------------------------------------------------------------------------------------

    async def _claim(self, stream_id: str) -> None:
        model = self.streams[stream_id]
        token = f"token{next(self.tokens)}"
        claim = await self.db.claim(stream_id, token, LONG_LEASE)
        if model.view.present:
            view = model.view
            assert not claim.acquired, "a second claim of an existing stream was granted"
            got = claim.state
            assert (got.epoch, got.status, got.first_seq, got.last_seq) == (
                view.epoch,
                view.status,
                view.first_seq,
                view.last_seq,
            )
            return
        assert claim.acquired, "the claim of an absent stream was refused"
        epoch = claim.state.epoch
        assert epoch not in model.epochs, "a new life of the stream reused an epoch"
        assert (claim.state.status, claim.state.first_seq, claim.state.last_seq) == ("running", 1, 0)
        if model.token is not None:
            model.stale_tokens.append(model.token)
        model.token = token
        model.epochs.append(epoch)
        model.set(View(True, epoch))

    @rule(stream_id=st.sampled_from(STREAMS))
    @precondition(ready)
    def claim(self, stream_id: str) -> None:
        self.run(self._claim(stream_id))

    async def _append(
        self, stream_id: str, token: str, events: tuple[tuple[str | None, str], ...], after: int, final: Any
    ) -> None:
        model = self.streams[stream_id]
        before = model.view
        expect_ok = before.present and before.status == "running" and token == model.token and after == before.last_seq
        try:
            got = await self.db.append(stream_id, token, list(events), after=after, final=final)
        except StreamNotFound:
            assert not before.present, "append: StreamNotFound for a stream the store has"
            return
        except StreamFenced:
            assert not expect_ok, "a rightful append was fenced"
            return
        assert expect_ok, f"an append that should be refused was accepted ({before}, token {token}, after {after})"
        view = self.trimmed(replace(before, log=before.log + events, status=final or "running"))
        assert got == view.last_seq
        model.set(view)
        model.last_append = (token, after, events, final)
        self.wrote(view, before)

    @rule(stream_id=st.sampled_from(STREAMS), count=st.integers(1, 8), typed=st.booleans())
    @precondition(running)
    def append(self, stream_id: str, count: int, typed: bool) -> None:
        model = self.streams[stream_id]
        if model.token is None:
            return
        events = tuple(("usage" if typed and i % 2 else None, self.data(stream_id)) for i in range(count))
        self.run(self._append(stream_id, model.token, events, model.view.last_seq, None))

    @rule(stream_id=st.sampled_from(STREAMS), count=st.integers(4, 8))
    @precondition(running)
    def append_burst(self, stream_id: str, count: int) -> None:
        """Enough events at once to run past the Streamer's window (4) and often past the store's trim."""
        self.append(stream_id, count, typed=False)

    @rule(stream_id=st.sampled_from(STREAMS), count=st.integers(0, 3))
    @precondition(running)
    def finish(self, stream_id: str, count: int) -> None:
        model = self.streams[stream_id]
        if model.token is None:
            return
        events = tuple((None, self.data(stream_id)) for _ in range(count))
        events += (("done", f'{{"state":"done","n":"{self.data(stream_id)}"}}'),)
        self.run(self._append(stream_id, model.token, events, model.view.last_seq, "done"))

    @rule(stream_id=st.sampled_from(STREAMS))
    @precondition(lambda self: self.some(lambda m: m.last_append is not None))
    def retry_last_append(self, stream_id: str) -> None:
        """The reply of the last append was lost and the producer sends it again: nothing is written twice."""
        model = self.streams[stream_id]
        if model.last_append is None:
            return
        token, after, events, final = model.last_append
        before = model.view

        async def retry() -> None:
            got = await self.db.append(stream_id, token, list(events), after=after, final=final)
            assert got == before.last_seq, "a retried append was not recognised"

        self.run(retry())
        assert model.view == before

    @rule(stream_id=st.sampled_from(STREAMS), data=st.data())
    @precondition(lambda self: self.some(lambda m: m.stale_tokens))
    def stale_producer_appends(self, stream_id: str, data: st.DataObject) -> None:
        model = self.streams[stream_id]
        if not model.stale_tokens:
            return
        token = data.draw(st.sampled_from(model.stale_tokens))
        self.run(self._append(stream_id, token, ((None, self.data(stream_id)),), model.view.last_seq, None))

    @rule(stream_id=st.sampled_from(STREAMS))
    @precondition(present)
    def cancel(self, stream_id: str) -> None:
        model = self.streams[stream_id]
        before = model.view
        ended = self.run(self.s.cancel(stream_id))
        running = before.present and before.status == "running"
        assert ended == running, f"cancel returned {ended} for {before}"
        if running:
            view = self.trimmed(replace(before, status="cancelled", log=(*before.log, ("cancelled", CANCELLED))))
            model.set(view)
            self.wrote(view, before)

    @rule(stream_id=st.sampled_from(STREAMS))
    @precondition(running)
    def producer_dies(self, stream_id: str) -> None:
        """The producer's process stops renewing: its lease runs out and an audit ends the stream ``lost``."""
        model = self.streams[stream_id]
        before = model.view
        if not before.present or before.status != "running" or model.token is None:
            return
        token = model.token

        async def die() -> None:
            assert (await self.db.renew([(stream_id, token)], 0.01))[0] == before.last_seq
            deadline = time.monotonic() + DEADLINE
            while True:
                tail = self.s.hub.tails.get(stream_id)
                followed = tail is not None and tail.state is not None and tail.state.epoch == before.epoch
                if not followed or tail.state.finished:  # type: ignore[union-attr]
                    # No reader here follows it (or the hub believes it ended): another process's audit ends it.
                    await self.db.audit([stream_id], LOST)
                state = await self.db.state(stream_id)
                assert state is not None
                if state.finished:
                    assert (state.status, state.last_seq) == ("lost", before.last_seq + 1)
                    return
                assert time.monotonic() < deadline, "a producer whose lease ran out was never declared lost"
                await asyncio.sleep(0.01)

        self.run(die())
        view = self.trimmed(replace(before, status="lost", log=(*before.log, ("lost", LOST))))
        model.set(view)
        self.wrote(view, before)

    # -- store faults --------------------------------------------------------------------------------------------------

    async def _lose(self, stream_id: str) -> None:
        model = self.streams[stream_id]
        if model.view.present:
            await lose(self.db, stream_id)
            model.set(ABSENT)

    @rule(stream_id=st.sampled_from(STREAMS))
    @precondition(present)
    def lose_stream(self, stream_id: str) -> None:
        self.run(self._lose(stream_id))

    @rule(stream_id=st.sampled_from(STREAMS))
    @precondition(ready)
    def recreate(self, stream_id: str) -> None:
        async def recreate() -> None:
            await self._lose(stream_id)
            await self._claim(stream_id)

        self.run(recreate())

    async def _snapshots(self) -> None:
        """After every step, a snapshot of each stream that changed: the states a restore may go back to."""
        for stream_id, model in self.streams.items():
            view = model.view
            if view.present and not any(taken == view for _, taken, _ in model.snapshots):
                saved = await snapshot(self.db, stream_id)
                model.snapshots = [*model.snapshots[-(SNAPSHOTS - 1) :], (saved, view, model.token)]

    async def _restore(self, stream_id: str, saved: Any) -> None:
        await rewind(self.db, stream_id, saved)

    @rule(stream_id=st.sampled_from(STREAMS), data=st.data())
    @precondition(lambda self: self.some(lambda m: any(view != m.view for _, view, _ in m.snapshots)))
    def restore_snapshot(self, stream_id: str, data: st.DataObject) -> None:
        """The store goes back to an earlier state of the stream, silently: a rewind, an older epoch, a return."""
        model = self.streams[stream_id]
        older = [taken for taken in model.snapshots if taken[1] != model.view]
        if not older:
            return
        saved, view, token = data.draw(st.sampled_from(older))
        self.run(self._restore(stream_id, saved))
        # The producer that wrote the store's later history cannot continue the restored one: the library's own
        # producer is fenced there and ends the stream as a new epoch. Appending on in the same epoch would fork
        # the log into branches that share ids, which no reader (nor a reconnect) could tell apart.
        # (It stays the owner in the store, so its token is not one the store must refuse: it is just never used.)
        if model.token is not None and model.token != token and model.token not in model.stale_tokens:
            model.stale_tokens.append(model.token)
        if token in model.stale_tokens:
            model.stale_tokens.remove(token)  # the store's owner again: not a token the store must refuse
        model.token = None
        model.last_append = None
        model.set(view)

    # -- readers -------------------------------------------------------------------------------------------------------

    @rule(stream_id=st.sampled_from(STREAMS), live=st.booleans(), data=st.data())
    @precondition(lambda self: self.ready() and len(self.readers) < MAX_READERS)
    def subscribe(self, stream_id: str, live: bool, data: st.DataObject) -> None:
        model = self.streams[stream_id]
        view = model.view
        # Ids live readers received (they have caught up at every step's end: the same on every replay; what lagging
        # readers got depends on timing, and Hypothesis must replay the same choices the same way).
        received = sorted(
            {
                item.id
                for r in self.readers
                if r.stream_id == stream_id and r.live
                for item in r.items
                if isinstance(item, Entry)
            }
        )
        choices: list[st.SearchStrategy[str | None]] = [st.none(), st.just(f"{NEVER_EPOCH}-1")]
        if received:
            choices.append(st.sampled_from(received))
        if model.epochs:
            choices.append(st.builds(lambda e, n: f"{e}-{n}", st.sampled_from(model.epochs), st.integers(1, 40)))
        if view.present:
            choices.append(st.integers(1, view.last_seq + 3).map(lambda n: f"{view.epoch}-{n}"))
        position = data.draw(st.one_of(*choices))

        async def subscribe() -> Subscription | None:
            try:
                return await self.s.subscribe(stream_id, position)
            except StreamNotFound:
                return None

        subscription = self.run(subscribe())
        if not view.present:
            assert subscription is None, "subscribed to a stream the store does not have"
            return
        assert subscription is not None, "StreamNotFound for a stream the store has"
        if position is None:
            reason, cursor = None, view.first_seq - 1
        else:
            epoch, _, seq = position.rpartition("-")
            reason = view.judge(epoch, int(seq))
            cursor = int(seq) if reason is None else view.first_seq - 1
        expected_reset = None if reason is None else (reason, view.first_id)
        got_reset = None if subscription.reset is None else (subscription.reset.reason, subscription.reset.first_id)
        assert got_reset == expected_reset, f"subscribe at {position} in {view}: reset {got_reset}"
        assert subscription.cursor == cursor
        assert subscription.at_end == (view.status != "running" and reason is None and cursor == view.last_seq)
        reader = Reader(
            name=f"r{len(self.readers)}",
            stream_id=stream_id,
            live=live,
            subscription=subscription,
            epoch=view.epoch,
            cursor=cursor,
            since=len(model.history) - 1,
            mark=len(model.history) - 1,
            initial_reset=subscription.reset,
            maybe={view.epoch},
        )
        self.readers.append(reader)
        if live:

            async def collect() -> None:
                async for batch in subscription.batches():
                    reader.items.extend(batch)
                reader.exhausted = True

            reader.task = self.loop.create_task(collect())
        else:
            reader.batches = subscription.batches()

    @rule(stream_id=st.sampled_from(STREAMS), data=st.data())
    @precondition(lambda self: self.present() and len(self.readers) < MAX_READERS)
    def subscribe_live(self, stream_id: str, data: st.DataObject) -> None:
        """A live reader of a stream the store has (the first present one when ``stream_id`` is not)."""
        if not self.streams[stream_id].view.present:
            stream_id = next(s for s in STREAMS if self.streams[s].view.present)
        self.subscribe(stream_id, True, data)

    @rule(data=st.data())
    @precondition(lambda self: any(not r.live for r in self.readers))
    def lagging_reader_reads(self, data: st.DataObject) -> None:
        """A lagging reader takes one batch (if one comes soon; else its read goes on in the background).

        What may be drawn depends only on what earlier rules did, never on how far readers got meanwhile (that
        depends on timing, and Hypothesis must replay the same choices the same way): an exhausted reader does
        nothing."""
        reader = data.draw(st.sampled_from([r for r in self.readers if not r.live]))
        if reader.exhausted:
            return
        if reader.task is None:
            batches = reader.batches
            assert batches is not None

            async def one() -> None:
                try:
                    reader.items.extend(await anext(batches))
                except StopAsyncIteration:
                    reader.exhausted = True

            reader.task = self.loop.create_task(one())
        task = reader.task
        self.run(asyncio.wait([task], timeout=0.05))
        if task.done():
            task.result()
            reader.task = None

    # -- checks --------------------------------------------------------------------------------------------------------

    def check(self, reader: Reader) -> None:
        """Judge the items ``reader`` was sent since the last check against the model's history."""
        model = self.streams[reader.stream_id]
        history = model.history
        lower, reader.mark = reader.mark, len(history) - 1
        while reader.checked < len(reader.items):
            index = reader.checked
            item = reader.items[index]
            reader.checked += 1
            where = f"{reader.name} on {reader.stream_id}, item {index} {item!r}, items {reader.items!r}"
            assert not reader.ended, f"something after the end: {where}"
            if index == 0 and reader.initial_reset is not None:
                assert item is reader.initial_reset, f"the subscription's reset did not come first: {where}"
                continue
            seen = history[reader.since :]
            if isinstance(item, Entry):
                if item.epoch in reader.maybe:
                    reader.epoch, reader.maybe = item.epoch, {item.epoch}
                assert (item.epoch, item.seq) == (reader.epoch, reader.cursor + 1), (
                    f"a gap, a duplicate or another epoch without a reset (expected {reader.epoch}-"
                    f"{reader.cursor + 1}): {where}"
                )
                predecessors = self.written.get((item.epoch, item.seq, item.data))
                assert predecessors is not None, f"an entry that was never written: {where}"
                if reader.last_data is not None and reader.last_data not in predecessors:
                    rewound = any(
                        not v.present
                        or v.epoch != reader.epoch
                        or v.last_seq < reader.cursor
                        or v.log[reader.cursor - 1][1] != reader.last_data
                        for v in seen
                    )
                    assert rewound, f"an entry that does not follow the one before in any log: {where}"
                reader.cursor, reader.last_data = item.seq, item.data
                reader.since = lower
                reader.ended = item.terminal
            elif isinstance(item, Reset):
                honest = [
                    (i, v)
                    for i, v in enumerate(seen, reader.since)
                    if v.present
                    and v.first_id == item.first_id
                    and any(v.judge(epoch, reader.cursor) == item.reason for epoch in reader.maybe)
                ]
                assert honest, f"a reset no state of the stream since the reader's position explains: {where}"
                # Which state the reader was judged against: one of these (the first id names its epoch, unless no
                # event is retained, which only a new life with no event yet can be: its epoch is then unknown).
                reader.since, v = honest[0]
                reader.epoch, reader.cursor, reader.last_data = v.epoch, v.first_seq - 1, None
                reader.maybe = {v.epoch for _, v in honest}
            else:
                assert isinstance(item, Gone), where
                assert any(not v.present for v in seen), f"Gone, but the store always had the stream: {where}"
                reader.ended = True
        task = reader.task
        if task is not None and task.done():
            task.result()  # a reader that failed fails the test
            if not reader.live:
                reader.task = None
                self.check(reader)
        if reader.exhausted and not (reader.ended or reader.subscription.at_end or self.s.readers_ended):
            # Honest only when the reader's position is the last entry of a finished log: the store was rewound to
            # a branch whose terminal has the reader's sequence number (a reconnect there gets 204 as well).
            assert any(
                v.present and v.epoch == reader.epoch and v.status != "running" and v.last_seq == reader.cursor
                for v in history[reader.since :]
            ), f"{reader.name}'s iteration ended without a terminal: {reader.items!r}"
            reader.ended = True

    def caught_up(self, reader: Reader) -> bool:
        self.check(reader)
        if reader.ended or reader.subscription.at_end:
            return True
        view = self.streams[reader.stream_id].view
        return view.present and view.epoch in reader.maybe and reader.cursor == view.last_seq

    async def _settle(self) -> None:
        deadline = time.monotonic() + DEADLINE
        while True:
            behind = [r for r in self.readers if r.live and not self.caught_up(r)]
            if not behind:
                break
            assert time.monotonic() < deadline, "live readers did not catch up: " + "; ".join(
                f"{r.name} at {r.epoch}-{r.cursor} of {self.streams[r.stream_id].view} got {r.items!r}" for r in behind
            )
            await asyncio.sleep(0.005)
        for stream_id, model in self.streams.items():
            state = await self.db.state(stream_id)
            view = model.view
            if not view.present:
                assert state is None, f"{stream_id}: the store has {state}, the model nothing"
                continue
            assert state is not None, f"{stream_id}: the store lost {view}"
            got = (state.epoch, state.status, state.first_seq, state.last_seq)
            assert got == (view.epoch, view.status, view.first_seq, view.last_seq), f"store {got}, model {view}"

    @invariant()
    def readers_caught_up_and_honest(self) -> None:
        if self.store is None:
            return
        self.run(self._settle())
        for reader in self.readers:
            self.check(reader)
        self.run(self._snapshots())


def machine(kind: str) -> type[StoreModel]:
    return type(f"StoreModel_{kind.replace('-', '_')}", (StoreModel,), {"kind": kind})


@pytest.mark.slow
@pytest.mark.model
@pytest.mark.timeout(3600)
@pytest.mark.parametrize(
    "kind",
    [
        "memory",
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("redis-cluster", marks=pytest.mark.redis),
    ],
)
def test_model(kind: str) -> None:
    current = settings.default
    examples = max(1, round(current.max_examples * FACTOR[kind]))
    run_state_machine_as_test(machine(kind), settings=settings(current, max_examples=examples))


def collecting(subscription: Subscription) -> tuple[list[Entry | Reset | Gone], asyncio.Task[None]]:
    """Iterate ``subscription`` in the background: the list it fills, and the task (done when iteration ends)."""
    items: list[Entry | Reset | Gone] = []

    async def read() -> None:
        async for item in subscription:
            items.append(item)

    return items, asyncio.ensure_future(read())


async def test_a_live_reader_whose_first_read_follows_a_recreation_hears_of_the_next_loss() -> None:
    """Found by the model (memory store only): a subscription made while the stream was finished, iterated only
    after the stream was created again, seeded the hub's tail with the finished state; a finished tail is never
    audited and the memory watch asks for no re-read when it starts following, so when the store then lost the new
    life, the reader waited forever instead of getting ``Gone`` within half a lease. (A subscription now reads its
    first page when it is made, and one made while the stream was finished serves that life to its end; here it is
    made while life 1 runs, at its newest event: its first page is empty and its tail is seeded with life 1.)"""
    store = MemoryStore()
    streamer = Streamer(store, lease=0.2)
    epoch = (await store.claim("s", "t1", LONG_LEASE)).state.epoch
    await store.append("s", "t1", [(None, "a")], after=0)
    subscription = await streamer.subscribe("s", f"{epoch}-1")
    await streamer.cancel("s")  # life 1 is finished
    await lose(store, "s")
    await store.claim("s", "t2", LONG_LEASE)  # life 2, before the reader's first read
    items, task = collecting(subscription)
    deadline = time.monotonic() + 5
    while not items:
        assert time.monotonic() < deadline, "the reader was not told of the new life"
        await asyncio.sleep(0.01)
    assert [(type(item), getattr(item, "reason", None)) for item in items] == [(Reset, "epoch")]
    await lose(store, "s")
    try:
        done, _ = await asyncio.wait([task], timeout=5)  # half a lease is 0.1 s
        assert done, f"the loss of life 2 was never noticed: {items} (the hub's tail: {streamer.hub.tails['s'].state})"
        assert isinstance(items[-1], Gone)
    finally:
        subscription.close()
        await asyncio.wait([task], timeout=5)
        await streamer.close()


async def test_a_finished_stream_rewound_to_running_is_followed_again(make_store: StoreFactory) -> None:
    """Found by the model: the hub never audits a stream it believes finished, and ignores pushes that do not go
    beyond the last sequence number it holds. After the store rewinds a finished stream to a running state (an older
    snapshot restored, a lagging replica promoted), a live reader that shares the tail waits forever for an event the
    producer has written (fails on memory; passes on Redis in this form). The model also saw the other face of it: a
    reader whose position is the stale tail's last sequence number ends its iteration without a terminal."""
    store = await make_store()
    streamer = Streamer(store, lease=0.2, batch_size=1, window=1)
    epoch = await produced(store, "s", "t", ["a", "b"])
    saved = await snapshot(store, "s")
    await finish(store, "s", "t", 2)  # done at 3
    lagging = await streamer.subscribe("s")
    batches = lagging.batches()
    assert [item.seq for item in await anext(batches) if isinstance(item, Entry)] == [1]  # it follows the stream
    await rewind(store, "s", saved)  # running again, at 2
    live = await streamer.subscribe("s")
    items, task = collecting(live)
    try:
        deadline = time.monotonic() + 5
        while len(items) < 2:
            assert time.monotonic() < deadline, f"the live reader did not get the retained events: {items}"
            await asyncio.sleep(0.01)
        await store.append("s", "t", [(None, "c")], after=2)  # the producer goes on
        while len(items) < 3:
            assert time.monotonic() < deadline, (
                f"the live reader never got event 3: {items} (the hub's tail: {streamer.hub.tails['s'].state})"
            )
            await asyncio.sleep(0.01)
        assert [(item.id, item.data) for item in items if isinstance(item, Entry)] == [
            (f"{epoch}-1", "a"),
            (f"{epoch}-2", "b"),
            (f"{epoch}-3", "c"),
        ]
    finally:
        live.close()
        lagging.close()
        await asyncio.wait([task], timeout=5)
        await batches.aclose()
        await streamer.close()


async def test_a_reader_that_meets_a_change_the_audits_missed_is_not_left_waiting(make_store: StoreFactory) -> None:
    """Found by the soak (memory store): the store goes back to an older state and returns before any audit asked
    (a rewind, then the later snapshot restored), while a lagging reader keeps the hub's tail alive. A reader
    subscribed in between reads the older state from the store, but the tail never heard of it: the store's return
    to what the tail believes was no change, so the reader waited forever for the terminal entry the store has."""
    store = await make_store()
    streamer = Streamer(store, lease=1.0)  # audits every 0.5 s: both restores come between two of them
    epoch = await produced(store, "s", "t", ["a", "b"])
    running = await snapshot(store, "s")
    await finish(store, "s", "t", 2)
    done = await snapshot(store, "s")
    lagging = await streamer.subscribe("s")
    batches = lagging.batches()
    assert [item.seq for item in await anext(batches) if isinstance(item, Entry)] == [1, 2, 3]  # it holds the tail
    await asyncio.sleep(0.1)  # the store's answer to following the stream anew (done, at 3) has come
    await rewind(store, "s", running)
    live = await streamer.subscribe("s", f"{epoch}-2")
    items, task = collecting(live)
    try:
        await asyncio.sleep(0.05)  # the live reader has read the store (running, at 2) and waits
        assert items == []
        await rewind(store, "s", done)
        done_, _ = await asyncio.wait([task], timeout=5)
        assert done_, f"the live reader never got the terminal entry (the hub's tail: {streamer.hub.tails['s'].state})"
        assert [(item.id, item.event) for item in items if isinstance(item, Entry)] == [(f"{epoch}-3", "done")]
        assert len(items) == 1
    finally:
        live.close()
        lagging.close()
        await asyncio.wait([task], timeout=5)
        await batches.aclose()
        await streamer.close()


async def test_readers_that_keep_coming_do_not_postpone_the_judgement_of_a_dead_producer(
    make_store: StoreFactory,
) -> None:
    """Found in review: a reader's read of the store counted as hearing from the stream, so readers arriving at
    least once per audit period (page reloads, each reading the store) kept a stream whose producer had died from
    ever being audited, and its readers waited forever instead of getting ``lost``."""
    store = await make_store()
    streamer = Streamer(store, lease=1.0)  # audits every 0.5 s
    await store.claim("s", "dead", 1.0)  # another process's producer: it never renews
    await store.append("s", "dead", [(None, "a")], after=0)
    waiting = await streamer.subscribe("s")
    items, task = collecting(waiting)
    stop = asyncio.Event()

    async def reloads() -> None:
        while not stop.is_set():
            fresh = await streamer.subscribe("s")
            batches = fresh.batches()
            with contextlib.suppress(StopAsyncIteration):
                await anext(batches)  # a new reader with no position reads the store
            await batches.aclose()
            await asyncio.sleep(0.2)

    churn = asyncio.ensure_future(reloads())
    try:
        done, _ = await asyncio.wait([task], timeout=6)  # lease 1 s: lost after about 1.5 s
        assert done, f"the reader never heard its producer died: {items}"
        assert isinstance(items[-1], Entry)
        assert (items[-1].event, items[-1].data) == ("lost", LOST)
    finally:
        stop.set()
        waiting.close()
        await asyncio.wait([task, churn], timeout=5)
        await streamer.close()
