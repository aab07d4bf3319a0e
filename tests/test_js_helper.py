"""resumable-sse.js under Node with a scripted EventSource: what it writes to storage, and what a reload resumes from.

The browser tests drive the helper in Chromium end to end; these check what a browser hides: how much it serializes
over a long answer (a write per token made a 20,000-token answer cost over a gigabyte of JSON), that what it saved is
always a consistent pair of state and id, and that a failed body read still ends in ``failed``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

HELPER = Path(__file__).resolve().parent.parent / "src" / "resumable_sse" / "static" / "resumable-sse.js"

HARNESS = r"""
const helperPath = process.argv[2];
class FakeMessageEvent { constructor(type, init) { this.type = type; Object.assign(this, init); } }
global.MessageEvent = FakeMessageEvent;
const sources = [];
class FakeEventSource {
  constructor(url) { this.url = url; this.readyState = 0; this.listeners = {}; sources.push(this); }
  addEventListener(type, fn) { (this.listeners[type] = this.listeners[type] || []).push(fn); }
  close() { this.readyState = 2; }
  emit(type, data, id) {
    const event = new FakeMessageEvent(type, { data: data, lastEventId: id || "" });
    if (type === "message" && this.onmessage) this.onmessage(event);
    (this.listeners[type] || []).forEach((fn) => fn(event));
  }
}
FakeEventSource.CONNECTING = 0;
global.EventSource = FakeEventSource;
function makeStorage() {
  const items = {};
  return {
    written: 0, writes: 0,
    getItem(k) { return k in items ? items[k] : null; },
    setItem(k, v) { this.written += v.length; this.writes += 1; items[k] = v; },
    removeItem(k) { delete items[k]; },
  };
}
const ResumableSSE = require(helperPath);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const scenario = process.argv[3];

async function longAnswer() {
  const storage = makeStorage();
  const handle = ResumableSSE.open("/stream/a", { key: "k", storage: storage, saveEvery: 50 });
  const es = sources[0];
  for (let i = 1; i <= 20000; i++) {
    es.emit("message", "tok ", "e-" + i);
    if (i % 2000 === 0) await sleep(60); // let the save timer fire now and then, as time passes in a browser
  }
  es.emit("done", '{"state":"done"}', "e-20001");
  const saved = JSON.parse(storage.getItem("k"));
  const again = ResumableSSE.open("/stream/a", { key: "k", storage: storage });
  return { written: storage.written, writes: storage.writes, status: saved.status, id: saved.lastEventId,
           length: saved.state.length, handleStatus: handle.status, reopened: again.status,
           connections: sources.length, restored: again.state.length };
}

async function reloadMidway() {
  const storage = makeStorage();
  ResumableSSE.open("/stream/b", { key: "k", storage: storage, saveEvery: 20 });
  const es = sources[0];
  for (let i = 1; i <= 500; i++) {
    es.emit("message", "t" + i + ",", "e-" + i);
    if (i % 37 === 0) await sleep(25);
  }
  // The tab is closed without warning: whatever storage holds must be a consistent pair of state and id.
  const saved = JSON.parse(storage.getItem("k"));
  ResumableSSE.open("/stream/b", { key: "k", storage: storage, saveEvery: 20 });
  return { state: saved.state, id: saved.lastEventId, url: sources[1].url };
}

async function unreadableBody() {
  global.fetch = () => Promise.resolve({
    status: 403, headers: { get: () => "text/plain" }, text: () => Promise.reject(new Error("connection reset")),
  });
  const statuses = [];
  ResumableSSE.open("/stream/c", { onStatus: (s, m) => statuses.push([s, m]) });
  const es = sources[0];
  es.readyState = 2;
  es.onerror(new (class {})());
  await sleep(20);
  return { statuses: statuses };
}

async function refusedTogether() {
  // 30 clients refused at once (503: a server restarting): the waits before their retries.
  global.fetch = () => Promise.resolve({ status: 503, headers: { get: () => "text/plain" } });
  const delays = [];
  const realSetTimeout = global.setTimeout;
  global.setTimeout = (fn, ms) => {
    if (ms >= 400) delays.push(ms); // a retry's wait (the helper's save timer and this harness's sleeps are shorter)
    return realSetTimeout(fn, ms);
  };
  const handles = [];
  for (let i = 0; i < 30; i++) {
    handles.push(ResumableSSE.open("/stream/r" + i, {}));
    const es = sources[sources.length - 1];
    es.readyState = 2;
    es.onerror(new (class {})());
  }
  await sleep(50);
  handles.forEach((handle) => handle.close());
  return { delays: delays };
}

({ long: longAnswer, reload: reloadMidway, body: unreadableBody, refused: refusedTogether })[scenario]().then(
  (result) => { console.log(JSON.stringify(result)); },
  (error) => { console.error(error); process.exit(1); }
);
"""


def _node() -> str:
    node = shutil.which("node") or shutil.which("nodejs")
    if node is None:
        if os.environ.get("CI"):
            pytest.fail("node is needed for the resumable-sse.js tests in CI (apt-get install nodejs)")
        pytest.skip("node is not installed")
    return node


def _run(scenario: str, tmp_path: Path) -> dict[str, object]:
    script = tmp_path / "harness.js"
    script.write_text(HARNESS)
    done = subprocess.run(
        [_node(), str(script), str(HELPER), scenario], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout)
    return result


def test_a_long_answer_is_not_serialized_again_at_every_token(tmp_path: Path) -> None:
    result = _run("long", tmp_path)
    final_size = 20000 * len("tok ")
    # One write per event would be 20,000 writes and about 20000 * final_size / 2 = 800 MB of JSON.
    assert result["writes"] < 100
    assert isinstance(result["written"], int) and result["written"] < 30 * final_size
    assert (result["status"], result["id"], result["length"]) == ("done", "e-20001", final_size)
    assert result["handleStatus"] == "done"
    # Reopened after the end: the saved answer is shown, nothing is requested again.
    assert (result["reopened"], result["connections"], result["restored"]) == ("done", 1, final_size)


def test_what_is_saved_is_always_a_state_and_the_id_it_was_folded_to(tmp_path: Path) -> None:
    result = _run("reload", tmp_path)
    state, last_id, url = result["state"], result["id"], result["url"]
    assert isinstance(state, str) and isinstance(last_id, str) and isinstance(url, str)
    count = int(last_id.removeprefix("e-"))
    assert 0 < count < 500
    assert state == "".join(f"t{i}," for i in range(1, count + 1))
    assert url == f"/stream/b?last_event_id=e-{count}"  # the reload resumes right after what it shows


def test_a_refusal_whose_body_cannot_be_read_still_fails_cleanly(tmp_path: Path) -> None:
    result = _run("body", tmp_path)
    assert result["statuses"] == [["connecting", ""], ["failed", "HTTP 403"]]


def test_clients_refused_together_retry_after_different_waits(tmp_path: Path) -> None:
    delays = _run("refused", tmp_path)["delays"]
    assert isinstance(delays, list) and len(delays) == 30
    # The first retry waits 1 s less a random part of up to half: spread over 0.5-1 s, not 30 times the same.
    assert all(500 <= delay <= 1000 for delay in delays), delays
    assert len(set(delays)) > 20, delays
