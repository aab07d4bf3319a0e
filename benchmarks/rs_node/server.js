// benchmarks/fleet.py's rs-node row: resumable-stream 2.x (Node, on the npm package's default `redis` client) serving
// the fleet's paced token workload, with the same wire data and control routes as fleet.py's own server process.
//
//   node server.js STREAMS TOKENS RATE STAGGER IDLE(0|1)      (REDIS_URL in the environment, as the package reads it)
//
// GET /s/{prefix}-{index}  resumableStream(id, makeStream): "data: ready", then after /control/go one
//                          "data: tok <epoch ns at the yield>" every 1/RATE s on an absolute schedule (the stream's
//                          offset STAGGER * index / STREAMS in), TOKENS of them, then "event: done"; with IDLE one token
//                          and nothing more until the server ends
// POST /control/go          starts every producer; answers {"start_ns"} (when the first token is due)
// GET /control/stats        producers' lag and the garbage collector's pauses, in fleet.py's keys
// Prints "PORT <n>" when listening; ends when stdin closes.
"use strict";

const http = require("node:http");
const { performance, PerformanceObserver, constants } = require("node:perf_hooks");
const { createResumableStreamContext } = require("resumable-stream");

const [streams, tokens, rate, stagger] = process.argv.slice(2, 6).map(Number);
const idle = process.argv[6] === "1";
const LEAD_MS = 100; // the driver tells the readers the deadline before the first token is due

// Epoch nanoseconds from the high-resolution clock (Date.now() has only milliseconds): the reader, on the same
// machine, subtracts them from its own time.time_ns().
const epochNs = () => BigInt(Math.round((performance.timeOrigin + performance.now()) * 1e6));

let goResolve;
const go = new Promise((resolve) => (goResolve = resolve));
let stopResolve;
const stop = new Promise((resolve) => (stopResolve = resolve));
let stopped = false;
let startMs = 0; // performance.now() of the first stream's first token
const lags = []; // ms each token was yielded after its scheduled time
const gcPauses = []; // [major?, ms]
let trackingGc = false;
new PerformanceObserver((list) => {
  if (!trackingGc) return;
  for (const entry of list.getEntries()) {
    gcPauses.push([entry.detail && entry.detail.kind === constants.NODE_PERFORMANCE_GC_MAJOR, entry.duration]);
  }
}).observe({ entryTypes: ["gc"] });

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// The producer: one SSE event per chunk, each chunk a string, as resumable-stream's makeStream returns them.
function makeStream(index) {
  async function* events() {
    yield "data: ready\n\n";
    await go;
    if (idle) {
      yield `data: tok ${epochNs()}\n\n`;
      await stop;
      return;
    }
    const start = startMs + (stagger * 1000 * index) / streams;
    for (let i = 0; i < tokens; i++) {
      const due = start + (i * 1000) / rate;
      const delay = due - performance.now();
      if (delay > 0) await sleep(delay);
      if (stopped) return;
      lags.push(performance.now() - due);
      yield `data: tok ${epochNs()}\n\n`;
    }
    yield "event: done\ndata: {}\n\n";
  }
  const iterator = events();
  return new ReadableStream({
    async pull(controller) {
      const { value, done } = await iterator.next();
      if (done) controller.close();
      else controller.enqueue(value);
    },
  });
}

const context = createResumableStreamContext({ keyPrefix: "fleet", waitUntil: null });

async function serveStream(request, response, streamId) {
  const index = Number(streamId.slice(streamId.lastIndexOf("-") + 1));
  const stream = await context.resumableStream(streamId, () => makeStream(index));
  if (!stream) {
    response.writeHead(422).end("the stream is already done\n");
    return;
  }
  response.writeHead(200, { "Content-Type": "text/event-stream", "Cache-Control": "no-cache" });
  const reader = stream.getReader();
  request.on("close", () => reader.cancel().catch(() => {}));
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    if (!response.write(value)) await new Promise((resolve) => response.once("drain", resolve));
  }
  response.end();
}

function stats() {
  const sorted = lags.slice().sort((a, b) => a - b);
  const at = (fraction) => (sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor(fraction * sorted.length))] : 0);
  return {
    lag_max_ms: sorted.length ? sorted[sorted.length - 1] : 0,
    lag_p99_ms: at(0.99),
    late_tokens: sorted.filter((lag) => lag > 1000 / rate).length,
    yielded: sorted.length,
    gc_collections: gcPauses.length,
    gc_full: gcPauses.filter(([major]) => major).length,
    gc_max_ms: gcPauses.reduce((most, [, ms]) => Math.max(most, ms), 0),
    gc_total_ms: gcPauses.reduce((sum, [, ms]) => sum + ms, 0),
  };
}

const server = http.createServer({ noDelay: true }, (request, response) => {
  const path = request.url.split("?")[0];
  if (request.method === "GET" && path.startsWith("/s/")) {
    serveStream(request, response, decodeURIComponent(path.slice(3))).catch((error) => {
      if (!response.headersSent) response.writeHead(500);
      response.end();
      console.error(error);
    });
  } else if (request.method === "POST" && path === "/control/go") {
    startMs = performance.now() + LEAD_MS;
    trackingGc = true;
    goResolve();
    const startNs = epochNs() + BigInt(LEAD_MS * 1e6);
    response.writeHead(200, { "Content-Type": "application/json" }).end(`{"start_ns": ${startNs}}`);
  } else if (request.method === "GET" && path === "/control/stats") {
    response.writeHead(200, { "Content-Type": "application/json" }).end(JSON.stringify(stats()));
  } else {
    response.writeHead(404).end();
  }
});

server.listen({ host: "127.0.0.1", port: 0, backlog: 4096 }, () => {
  process.stdout.write(`PORT ${server.address().port}\n`);
});

// Any line or the end of stdin ends the server (the driver closes it).
process.stdin.on("data", () => process.exit(0));
process.stdin.on("end", () => {
  stopped = true;
  stopResolve();
  goResolve();
  process.exit(0);
});
