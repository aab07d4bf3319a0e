// The example's page: React and the AI SDK's useChat({ resume: true }), with resumable-sse.js's chatTransport.
// Built into ../static/app.js by `python -m examples.ai_sdk_chat.build` (esbuild; nothing built is committed).
import React, { useMemo, useState } from "react";
import { createRoot } from "react-dom/client";
import { useChat } from "@ai-sdk/react";
import { DefaultChatTransport } from "ai";
import ResumableSSE from "../../../src/resumable_sse/static/resumable-sse.js";

// One chat per tab: its id survives a reload (sessionStorage), ?chat=<id> opens a given one.
function chatId() {
  const id =
    new URLSearchParams(location.search).get("chat") ||
    sessionStorage.getItem("chat-id") ||
    crypto.randomUUID().replace(/-/g, "").slice(0, 16);
  sessionStorage.setItem("chat-id", id);
  return id;
}

function textOf(message) {
  return message.parts
    .filter((part) => part.type === "text")
    .map((part) => part.text)
    .join("");
}

function Chat({ id, initialMessages }) {
  // Remembers the answer's chunks and its last event id: a reload or a dropped connection resumes exactly.
  const transport = useMemo(() => ResumableSSE.chatTransport({ DefaultChatTransport, api: "/api/chat" }), []);
  const { messages, sendMessage, status, stop, error } = useChat({
    id,
    messages: initialMessages,
    transport,
    resume: true, // on load: GET /api/chat/{id}/stream (204 when no answer is running)
  });
  const [input, setInput] = useState("");
  const busy = status === "submitted" || status === "streaming";
  return (
    <main>
      <h1>useChat + resumable-sse</h1>
      <ol id="messages">
        {messages.map((message) => (
          <li key={message.id} className={message.role} data-role={message.role} data-id={message.id}>
            {textOf(message)}
          </li>
        ))}
      </ol>
      <form
        onSubmit={(event) => {
          event.preventDefault();
          if (!input.trim() || busy) return;
          sendMessage({ text: input });
          setInput("");
        }}
      >
        <input id="prompt" value={input} placeholder="Ask something" onChange={(e) => setInput(e.target.value)} />
        <button id="send" type="submit" disabled={busy}>
          Send
        </button>
        <button
          id="stop"
          type="button"
          disabled={!busy}
          onClick={() => {
            stop(); // closes this page's connection only...
            fetch(`/api/chat/${encodeURIComponent(id)}/stream`, { method: "DELETE" }); // ...this ends the answer
          }}
        >
          Stop
        </button>
      </form>
      <p id="status" data-status={status}>
        {status}
        {error ? `: ${error.message}` : ""}
      </p>
    </main>
  );
}

async function start() {
  const id = chatId();
  // The chat's finished messages, kept by the server: useChat starts from them, and resumes what is running.
  const response = await fetch(`/api/chats/${encodeURIComponent(id)}/messages`);
  const initialMessages = await response.json();
  createRoot(document.getElementById("root")).render(<Chat id={id} initialMessages={initialMessages} />);
}

start();
