/*
 * The chat page. The conversation (messages and the stream id of each answer) lives in localStorage under its
 * conversation id, which is also in the URL (?c=...), so a reload, a reopened tab or a second tab shows the same
 * conversation. Each answer is read with ResumableSSE.open (/resumable-sse.js), which keeps the answer's text and
 * last event id, reconnects with ?last_event_id= and reports how the answer ended.
 */
(function () {
  "use strict";

  var STATUS_TEXT = {
    pending: "Sending…",
    connecting: "Connecting…",
    streaming: "Streaming",
    reconnecting: "Reconnecting…",
    done: "Done",
    ended: "Done",
    cancelled: "Stopped",
    error: "Error",
    lost: "Answer lost",
    gone: "Answer lost",
    failed: "Failed",
  };
  var NOTICES = {
    cancelled: "Stopped: the answer was cancelled for every tab.",
    error: "The model failed: ",
    lost: "The answer was lost: the server producing it stopped responding.",
    gone: "The answer was lost: the server no longer has it (it restarted or the answer expired). Ask again.",
    failed: "Could not read the answer: ",
  };
  var RUNNING = ["pending", "connecting", "streaming", "reconnecting"];
  var ID_RE = /^[A-Za-z0-9]{1,40}$/;

  function byId(id) {
    return document.getElementById(id);
  }

  function newId() {
    var bytes = new Uint8Array(9);
    crypto.getRandomValues(bytes);
    return Array.prototype.map
      .call(bytes, function (b) {
        return ("0" + b.toString(16)).slice(-2);
      })
      .join("");
  }

  // --- which conversation ---------------------------------------------------------------------------------------
  var params = new URLSearchParams(location.search);
  var cid = params.get("c");
  if (!cid || !ID_RE.test(cid)) {
    var current = localStorage.getItem("chat:current");
    cid = current && ID_RE.test(current) ? current : newId();
  }
  localStorage.setItem("chat:current", cid);
  if (params.get("c") !== cid) history.replaceState(null, "", "?c=" + cid);
  var convKey = "chat:conversation:" + cid;

  function loadConversation() {
    try {
      var saved = JSON.parse(localStorage.getItem(convKey));
      if (saved && Array.isArray(saved.messages)) return saved;
    } catch (e) {
      /* corrupt entry: start afresh */
    }
    return { messages: [] };
  }

  function saveConversation(conversation) {
    localStorage.setItem(convKey, JSON.stringify(conversation));
  }

  // --- views --------------------------------------------------------------------------------------------------
  var conversationEl = byId("conversation");
  var views = new Map(); // message id -> view

  function element(tag, className, parent) {
    var el = document.createElement(tag);
    if (className) el.className = className;
    if (parent) parent.appendChild(el);
    return el;
  }

  function nearBottom() {
    return window.innerHeight + window.scrollY >= document.body.scrollHeight - 160;
  }

  function createView(message) {
    var turn = element("section", "turn", conversationEl);
    var question = element("div", "question", turn);
    element("div", "bubble", question).textContent = message.prompt;
    var answer = element("article", "answer", turn);
    answer.dataset.messageId = message.id;
    var view = {
      message: message,
      answer: answer,
      text: element("p", "text", answer),
      notice: element("div", "notice", answer),
      handle: null,
      posting: false,
    };
    var meta = element("div", "meta", answer);
    view.status = element("span", "status", meta);
    var details = element("span", "details", meta);
    element("span", "engine", details).textContent =
      message.engine === "blocking" ? "blocking SDK · thread" : "async generator";
    view.lastId = element("span", "last-id", details);
    setStatus(view, "pending", "");
    views.set(message.id, view);
    return view;
  }

  function setStatus(view, status, message) {
    view.answer.dataset.status = status;
    view.status.textContent = STATUS_TEXT[status] || status;
    var notice = NOTICES[status];
    if (notice) {
      view.notice.className = "notice " + (status === "cancelled" ? "reset" : "bad");
      view.notice.textContent = notice.slice(-2) === ": " ? notice + (message || "unknown reason") : notice;
    }
    updateStop();
  }

  function openAnswer(view) {
    var streamId = view.message.streamId;
    view.answer.dataset.streamId = streamId;
    view.handle = ResumableSSE.open("/stream/" + encodeURIComponent(streamId), {
      key: "chat:answer:" + streamId,
      onUpdate: function (text, info) {
        var follow = nearBottom();
        view.text.textContent = text;
        view.lastId.textContent = info.lastEventId ? "id " + info.lastEventId : "";
        if (follow) window.scrollTo(0, document.body.scrollHeight);
      },
      onStatus: function (status, message) {
        setStatus(view, status, message);
      },
      onReset: function (info) {
        view.notice.className = "notice reset";
        view.notice.textContent =
          "The server could not continue from this tab's position (" +
          (info.reason || "unknown") +
          "); the answer was redrawn from its replay.";
      },
    });
  }

  function startAnswer(view) {
    // Idempotent: the stream id is derived from the conversation and message ids, so repeating this (a reload
    // before the first reply, or a second tab) finds the same answer instead of generating another.
    var message = view.message;
    view.posting = true;
    fetch("/api/answers", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ conversation: cid, message: message.id, prompt: message.prompt, engine: message.engine }),
    })
      .then(function (response) {
        return response.json().then(function (body) {
          if (!response.ok) throw new Error(body.error || "HTTP " + response.status);
          return body;
        });
      })
      .then(function (body) {
        var conversation = loadConversation();
        conversation.messages.forEach(function (saved) {
          if (saved.id === message.id) saved.streamId = body.stream_id;
        });
        saveConversation(conversation);
        message.streamId = body.stream_id;
        if (!view.handle) openAnswer(view);
      })
      .catch(function (error) {
        view.posting = false;
        setStatus(view, "failed", error.message);
      });
  }

  function render() {
    var conversation = loadConversation();
    byId("empty").hidden = conversation.messages.length > 0;
    conversation.messages.forEach(function (message) {
      var view = views.get(message.id) || createView(message);
      if (message.streamId && !view.message.streamId) view.message.streamId = message.streamId;
      if (view.message.streamId && !view.handle) openAnswer(view);
      else if (!view.message.streamId && !view.posting) startAnswer(view);
    });
  }

  function updateStop() {
    var running = false;
    views.forEach(function (view) {
      if (RUNNING.indexOf(view.answer.dataset.status) !== -1) running = true;
    });
    byId("stop").disabled = !running;
  }

  // --- controls -----------------------------------------------------------------------------------------------
  var promptEl = byId("prompt");
  var engineEl = byId("engine");
  engineEl.value = localStorage.getItem("chat:engine") === "blocking" ? "blocking" : "async";
  engineEl.addEventListener("change", function () {
    localStorage.setItem("chat:engine", engineEl.value);
  });

  byId("composer").addEventListener("submit", function (event) {
    event.preventDefault();
    var prompt = promptEl.value.trim();
    if (!prompt) return;
    var conversation = loadConversation();
    conversation.messages.push({ id: newId(), prompt: prompt, engine: engineEl.value, streamId: null });
    saveConversation(conversation); // saved before the POST: a reload in between repeats the (idempotent) POST
    promptEl.value = "";
    promptEl.style.height = "";
    render();
    window.scrollTo(0, document.body.scrollHeight);
  });

  promptEl.addEventListener("keydown", function (event) {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      byId("composer").requestSubmit();
    }
  });
  promptEl.addEventListener("input", function () {
    promptEl.style.height = "";
    promptEl.style.height = Math.min(promptEl.scrollHeight, 160) + "px";
  });

  byId("stop").addEventListener("click", function () {
    // A durable cancel on the server: every tab reading the answer gets `cancelled`, not just this one.
    views.forEach(function (view) {
      if (view.message.streamId && RUNNING.indexOf(view.answer.dataset.status) !== -1) {
        fetch("/api/answers/" + encodeURIComponent(view.message.streamId) + "/stop", { method: "POST" });
      }
    });
  });

  byId("new-chat").addEventListener("click", function () {
    var next = newId();
    localStorage.setItem("chat:current", next);
    location.href = "/?c=" + next;
  });

  // Another tab on this conversation sent a message: show it (and its answer) here too.
  window.addEventListener("storage", function (event) {
    if (event.key === convKey) render();
  });

  render();
})();
