// The AI SDK's own clients against a Python server: `node clients.mjs <scenario> <base url> <helper path>`.
// Prints one JSON line of what the clients built; tests/test_ai_sdk_node.py compares it with what the model said.
import { createRequire } from "node:module";
import { DefaultChatTransport, readUIMessageStream } from "ai";

const [scenario, base, helperPath] = process.argv.slice(2);
const ResumableSSE = createRequire(import.meta.url)(helperPath);
const api = base + "/api/chat";

function expected(prompt, count) {
  let text = "";
  for (let i = 0; i < count; i++) text += `${prompt}-${i} `;
  return text;
}

function userMessage(text) {
  return { id: "u-" + text, role: "user", parts: [{ type: "text", text }] };
}

// A fetch that counts the bytes of every response body it hands on, per request method.
function countingFetch() {
  const counted = { GET: 0, POST: 0 };
  const fetchAndCount = async (url, init) => {
    const response = await fetch(url, init);
    if (!response.body) return response;
    const method = (init && init.method) || "GET";
    const body = response.body.pipeThrough(
      new TransformStream({
        transform(chunk, controller) {
          counted[method] += chunk.byteLength;
          controller.enqueue(chunk);
        },
      }),
    );
    return new Response(body, { status: response.status, headers: response.headers });
  };
  return { fetch: fetchAndCount, counted };
}

// Send one user message of a chat; the server's answer has `tokens` tokens.
function send(transport, chatId, prompt, tokens, abortSignal) {
  return transport.sendMessages({
    trigger: "submit-message",
    chatId,
    messageId: undefined,
    messages: [userMessage(prompt)],
    abortSignal,
    body: { tokens },
  });
}

// Send, read chunks until `enough` text deltas arrived, then cut the connection (what a reload or a dropped
// network does to the client).
async function sendAndCut(transport, chatId, prompt, count, enough) {
  const abort = new AbortController();
  const stream = await send(transport, chatId, prompt, count, abort.signal);
  const reader = stream.getReader();
  let deltas = 0;
  let text = "";
  while (deltas < enough) {
    const { value, done } = await reader.read();
    if (done) throw new Error("the answer ended before the cut");
    if (value.type === "text-delta") {
      deltas += 1;
      text += value.delta;
    }
  }
  abort.abort();
  await reader.cancel().catch(() => {});
  return text;
}

async function messagesOf(stream) {
  const messages = [];
  for await (const message of readUIMessageStream({ stream, terminateOnError: true })) messages.push(message);
  const ids = [...new Set(messages.map((m) => m.id))];
  const last = messages[messages.length - 1];
  return {
    ids,
    role: last && last.role,
    text: last ? last.parts.filter((p) => p.type === "text").map((p) => p.text).join("") : null,
  };
}

async function main() {
  const count = 300;
  if (scenario === "default") {
    // DefaultChatTransport: cut mid-answer, reconnectToStream (a replay), then 204 after the end.
    const transport = new DefaultChatTransport({ api });
    const before = await sendAndCut(transport, "d1", "alpha", count, 30);
    const resumed = await messagesOf(await transport.reconnectToStream({ chatId: "d1" }));
    const afterEnd = await transport.reconnectToStream({ chatId: "d1" });
    const whole = await messagesOf(await send(transport, "d2", "beta", 50));
    return {
      before,
      resumed,
      afterEndIsNull: afterEnd === null,
      whole,
      expected: expected("alpha", count),
      expectedWhole: expected("beta", 50),
    };
  }
  if (scenario === "two-clients") {
    // Two tabs send the same turn of one chat at once: one answer, both get all of it.
    const tab = () => send(new DefaultChatTransport({ api }), "t1", "gamma", 80);
    const [a, b] = await Promise.all([tab(), tab()]);
    const [ma, mb] = await Promise.all([messagesOf(a), messagesOf(b)]);
    return { a: ma, b: mb, expected: expected("gamma", 80) };
  }
  if (scenario === "helper") {
    // The helper's transport: cut at 90%, resume with Last-Event-ID; a DefaultChatTransport replay beside it.
    const mine = countingFetch();
    const theirs = countingFetch();
    const transport = ResumableSSE.chatTransport({ DefaultChatTransport, api, fetch: mine.fetch, storage: null });
    const replaying = new DefaultChatTransport({ api, fetch: theirs.fetch });
    const before = await sendAndCut(transport, "h1", "delta", count, Math.floor(count * 0.9));
    const remembered = transport.remembered("h1");
    const [resumed, replayed] = await Promise.all([
      transport.reconnectToStream({ chatId: "h1" }).then(messagesOf),
      replaying.reconnectToStream({ chatId: "h1" }).then(messagesOf),
    ]);
    const afterEnd = await transport.reconnectToStream({ chatId: "h1" });
    return {
      before,
      lastEventId: remembered && remembered.lastEventId,
      resumed,
      replayed,
      resumeBytes: mine.counted.GET,
      replayBytes: theirs.counted.GET,
      afterEndIsNull: afterEnd === null,
      resumeStreamIsReplay: transport.resumeStreamIsReplay,
      expected: expected("delta", count),
    };
  }
  if (scenario === "drop") {
    // The connection drops mid-answer (the test's proxy cuts it when told "CUT"): the helper's transport asks for
    // the rest by itself, and the AI SDK sees one unbroken answer.
    const transport = ResumableSSE.chatTransport({ DefaultChatTransport, api, storage: null });
    const stream = await send(transport, "x1", "omega", count);
    const [watched, read] = stream.tee();
    const watching = (async () => {
      const reader = watched.getReader();
      let deltas = 0;
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return deltas;
        if (value.type === "text-delta" && ++deltas === 50) process.stdout.write("CUT\n");
      }
    })();
    const [message, deltas] = await Promise.all([messagesOf(read), watching]);
    return { message, deltas, expected: expected("omega", count) };
  }
  throw new Error("unknown scenario " + scenario);
}

main().then(
  (result) => {
    process.stdout.write(JSON.stringify(result) + "\n");
  },
  (error) => {
    process.stderr.write(String((error && error.stack) || error) + "\n");
    process.exit(1);
  },
);
