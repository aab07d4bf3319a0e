// Reads one event stream with the npm `eventsource` package and prints what the application would see, one JSON
// object a line: {"type", "data", "lastEventId"} per dispatched event, {"type": "connection-error"} for each of
// EventSource's own error events (a dropped connection; it reconnects by itself). It closes on the first terminal
// event, told apart from a connection error as the README's snippet does: ours is a MessageEvent with data.
// Usage: node read.mjs URL
import { EventSource } from "eventsource";

const TYPES = ["message", "usage", "reset", "done", "error", "cancelled", "lost"];
const TERMINAL = new Set(["done", "error", "cancelled", "lost"]);

const source = new EventSource(process.argv[2]);
// eventsource unrefs its reconnect timer: without this the process would exit while it waits to reconnect.
const alive = setInterval(() => {}, 1000);
for (const type of TYPES) {
  source.addEventListener(type, (event) => {
    if (!(event instanceof MessageEvent)) {
      console.log(JSON.stringify({ type: "connection-error", readyState: source.readyState, message: event.message }));
      return;
    }
    console.log(JSON.stringify({ type, data: event.data, lastEventId: event.lastEventId }));
    if (TERMINAL.has(type)) {
      source.close();
      clearInterval(alive);
    }
  });
}
