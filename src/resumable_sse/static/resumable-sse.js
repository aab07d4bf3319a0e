/*
 * resumable-sse.js: read a resumable-sse stream in a browser so that it survives a reload, a closed tab or a
 * dropped network. No dependencies, no build step: serve this file or copy it into your project (MIT licence).
 *
 *   const stream = ResumableSSE.open("/stream/" + streamId, {
 *     key: "answer:" + streamId,            // where to keep progress (localStorage); omit to keep none
 *     initial: "",                          // the state before the first event
 *     reduce: (text, data) => text + data,  // fold one event's data into the state
 *     onUpdate: (text) => render(text),     // called after every change, and once at open with the saved state
 *     onStatus: (status, message) => showStatus(status, message),
 *   });
 *   stream.close();                         // stop reading (the server keeps producing)
 *
 * What it does:
 * - Keeps the state folded from the events together with the id of the last event folded into it, in one
 *   storage entry, so that after a reload it shows the saved state and reconnects with ?last_event_id=<that id>
 *   (EventSource cannot set the Last-Event-ID header itself): every event arrives once, none is missing. The entry
 *   is written at most every `saveEvery` ms (a long answer is not serialized again at every token) and at once on
 *   a reset, at the end and when the page is hidden; state and id are always saved together, so a reload that
 *   comes before a write simply replays the events after the saved id.
 * - A `reset` event (the server could not continue from that id) clears the state; the replay that follows
 *   redraws it. onReset(info) is told why.
 * - A terminal event (`done`, `error`, `cancelled`, `lost`) is saved and closes the connection; a stream already
 *   finished in storage is shown without connecting at all.
 * - When the server refuses the connection, EventSource stops with no status code; the helper then asks the same
 *   URL with fetch() to learn why: 410 Gone (the server no longer has the stream: it expired, or a server with a
 *   memory store restarted) gives the status `gone` and no further request; 204 means it had already ended;
 *   a 5xx or an unreachable server is retried with backoff (1 s doubling to 15 s, for as long as the page is
 *   open, as EventSource does), its status staying "reconnecting"; any other status ends with `failed` and the
 *   server's message (so does a 200 that is not text/event-stream). `failed` is not saved as the end: a reload
 *   tries again (the server may be back, the stream still running), while the terminal events, `gone` and `ended`
 *   are.
 *
 * Statuses given to onStatus: "connecting", "streaming", "reconnecting" (the network dropped; EventSource
 * retries by itself), then one of "done", "error", "cancelled", "lost" (the terminal events), "gone", "ended"
 * (204: it finished, how is unknown here) or "failed".
 */
(function (root) {
  "use strict";

  var TERMINAL = ["done", "error", "cancelled", "lost"];
  var FINAL = TERMINAL.concat(["gone", "ended"]); // saved: a reload shows them without connecting

  function clone(value) {
    return value === undefined ? undefined : JSON.parse(JSON.stringify(value));
  }

  function parseJSON(text) {
    try {
      return JSON.parse(text);
    } catch (e) {
      return null;
    }
  }

  function withPosition(url, lastEventId) {
    if (!lastEventId) return url;
    return url + (url.indexOf("?") === -1 ? "?" : "&") + "last_event_id=" + encodeURIComponent(lastEventId);
  }

  function defaultStorage() {
    try {
      return root.localStorage;
    } catch (e) {
      return null; // storage disabled: the stream still works, it just starts over after a reload
    }
  }

  /**
   * Open a resumable stream at `url`. Options (all optional):
   *   key        storage key for this stream's progress; without it nothing is saved
   *   storage    a Storage (default localStorage; sessionStorage keeps progress per tab)
   *   initial    the state before any event (default "")
   *   reduce     (state, data, type) => new state; default: string concatenation of the data
   *   events     event types folded into the state besides unnamed messages (default [])
   *   onUpdate   (state, info) after every change; info = {lastEventId, restored}
   *   onStatus   (status, message) on every status change (see the list above)
   *   onReset    ({reason, first_id}) before a replay that redraws the state
   *   maxRetries how many refusals in a row (5xx, network down) are retried before `failed` (default: no limit);
   *              each waits 1 s, 2 s, 4 s ... up to 15 s, less a random part of up to half
   *   saveEvery  milliseconds between writes of the progress to storage (default 250)
   * Returns {close(), state, lastEventId, status}.
   */
  function open(url, options) {
    options = options || {};
    var storage = options.key ? (options.storage === undefined ? defaultStorage() : options.storage) : null;
    var initial = options.initial === undefined ? "" : options.initial;
    var reduce =
      options.reduce ||
      function (state, data) {
        return state + data;
      };
    var onUpdate = options.onUpdate || function () {};
    var onStatus = options.onStatus || function () {};
    var onReset = options.onReset || function () {};
    var maxRetries = options.maxRetries === undefined ? Infinity : options.maxRetries;
    var saveEvery = options.saveEvery === undefined ? 250 : options.saveEvery;
    var maxRetries = options.maxRetries === undefined ? 8 : options.maxRetries;
    var saveTimer = null;

    var record = load() || { lastEventId: null, state: clone(initial), status: "running", message: "" };
    var source = null;
    var closed = false;
    var retries = 0;
    var timer = null;

    function load() {
      if (!storage) return null;
      var saved = parseJSON(storage.getItem(options.key));
      return saved && saved.v === 1 ? saved : null;
    }

    function save() {
      if (saveTimer !== null) clearTimeout(saveTimer);
      saveTimer = null;
      if (!storage) return;
      record.v = 1;
      try {
        storage.setItem(options.key, JSON.stringify(record));
      } catch (e) {
        /* quota exceeded: keep streaming, a reload will replay from the start */
      }
    }

    function saveSoon() {
      if (storage && saveTimer === null) saveTimer = setTimeout(save, saveEvery);
    }

    function saveNow() {
      if (saveTimer !== null) save(); // the page is going away: write what is pending
    }

    function setStatus(status, message) {
      handle.status = status;
      onStatus(status, message || "");
    }

    function finish(status, message) {
      if (FINAL.indexOf(status) !== -1) {
        record.status = status;
        record.message = message || "";
        save();
      }
      stop();
      setStatus(status, message);
    }

    function stop() {
      saveNow();
      if (root.removeEventListener) root.removeEventListener("pagehide", saveNow);
      closed = true;
      if (timer !== null) clearTimeout(timer);
      timer = null;
      if (source) source.close();
      source = null;
    }

    function fold(event) {
      record.state = reduce(record.state, event.data, event.type);
      if (event.lastEventId) record.lastEventId = event.lastEventId;
      saveSoon();
      onUpdate(record.state, { lastEventId: record.lastEventId, restored: false });
    }

    function connect() {
      if (closed) return;
      setStatus(retries ? "reconnecting" : "connecting");
      var es = (source = new EventSource(withPosition(url, record.lastEventId)));
      es.onopen = function () {
        retries = 0;
        setStatus("streaming");
      };
      es.onmessage = fold;
      (options.events || []).forEach(function (type) {
        es.addEventListener(type, fold);
      });
      es.addEventListener("reset", function (event) {
        var info = parseJSON(event.data) || {};
        record.state = clone(initial);
        record.lastEventId = null; // what follows replays from the first retained event
        save();
        onReset(info);
        onUpdate(record.state, { lastEventId: null, restored: false });
      });
      TERMINAL.forEach(function (type) {
        es.addEventListener(type, function (event) {
          // EventSource dispatches its own connection errors as "error" too: only a MessageEvent is the server's.
          if (!(event instanceof MessageEvent)) return;
          var info = parseJSON(event.data) || {};
          if (event.lastEventId) record.lastEventId = event.lastEventId;
          finish(type, info.message || "");
        });
      });
      es.onerror = function (event) {
        if (closed || source !== es || event instanceof MessageEvent) return; // a MessageEvent: `event: error`
        if (es.readyState === EventSource.CONNECTING) {
          setStatus("reconnecting"); // a dropped connection: EventSource retries by itself, with Last-Event-ID
          return;
        }
        es.close(); // refused (a status other than 200): find out why, once
        source = null;
        diagnose();
      };
    }

    function retryLater() {
      if (retries >= maxRetries) {
        finish("failed", "the server kept refusing the stream");
        return;
      }
      // 1 s, 2 s, 4 s ... up to 15 s, less a random part of up to half: the clients that a server refused together
      // (a restart, a deploy) must not all come back at the same instant.
      var delay = Math.min(1000 * Math.pow(2, retries), 15000) * (1 - 0.5 * Math.random());
      retries += 1;
      setStatus("reconnecting");
      timer = setTimeout(function () {
        timer = null;
        connect();
      }, delay);
    }

    function diagnose() {
      var controller = typeof AbortController === "function" ? new AbortController() : null;
      fetch(withPosition(url, record.lastEventId), {
        headers: { Accept: "text/event-stream" },
        cache: "no-store",
        signal: controller ? controller.signal : undefined,
      }).then(
        function (response) {
          if (closed) return;
          var status = response.status;
          if (status === 200) {
            var type = (response.headers.get("Content-Type") || "").split(";")[0].trim();
            if (controller) controller.abort();
            if (type === "text/event-stream") {
              retryLater(); // it works again: read it with EventSource
            } else {
              // EventSource refuses any other type (an HTML fallback page, a proxy's login page): no retry helps.
              finish("failed", "the server's answer is not an event stream (" + (type || "no Content-Type") + ")");
            }
          } else if (status === 204) {
            finish("ended", "the stream had already ended");
          } else if (status === 410) {
            finish("gone", "the server no longer has this stream; it will not be sent again");
          } else if (status >= 500) {
            retryLater();
          } else {
            response.text().then(
              function (text) {
                finish("failed", (text || "HTTP " + status).trim());
              },
              function () {
                finish("failed", "HTTP " + status); // the body could not be read (the connection dropped)
              }
            );
          }
        },
        function () {
          if (!closed) retryLater(); // the network is down: try again later
        }
      );
    }

    var handle = {
      status: "connecting",
      close: stop,
      get state() {
        return record.state;
      },
      get lastEventId() {
        return record.lastEventId;
      },
    };

    onUpdate(record.state, { lastEventId: record.lastEventId, restored: true });
    if (root.addEventListener) root.addEventListener("pagehide", saveNow);
    if (FINAL.indexOf(record.status) !== -1) {
      closed = true;
      setStatus(record.status, record.message);
    } else {
      connect();
    }
    return handle;
  }

  /** Forget what was saved for `key` (e.g. when the user deletes a conversation). */
  function forget(key, storage) {
    storage = storage === undefined ? defaultStorage() : storage;
    if (storage) storage.removeItem(key);
  }

  /*
   * chatTransport({ DefaultChatTransport, ...options }): an AI SDK chat transport (for useChat({ transport }))
   * that resumes an answer exactly: it remembers, per chat, the UI message chunks it has read (text deltas merged)
   * and the id of the last event, in memory and in `storage` (default: sessionStorage, so a reload finds them).
   * Its reconnectToStream asks the server for what follows that id (Last-Event-ID), and hands useChat what it
   * remembered followed by what the server sends: a resume at token 900 of 1,000 receives 100 tokens, not 1,000.
   * What useChat gets is the whole answer from its `start` (the transport says resumeStreamIsReplay: true), so it
   * is right whatever useChat kept of the message: after a dropped connection, a stop() or a reload alike.
   * When the server could not continue (its reset: history lost), what was remembered is dropped and the server's
   * replay is used alone. Pass the AI SDK's own DefaultChatTransport class (this file imports nothing); every other
   * option (api, headers, body, fetch, prepareSendMessagesRequest, ...) is the DefaultChatTransport's.
   */
  var CHAT_HEADER = "x-resumable-sse-chat"; // names the chat of a reconnect to this transport's fetch (not sent)
  var STORAGE_PREFIX = "resumable-sse:chat:";

  function chatTransport(options) {
    options = options || {};
    var Base = options.DefaultChatTransport;
    if (typeof Base !== "function") {
      throw new TypeError("chatTransport needs the AI SDK's DefaultChatTransport: chatTransport({ DefaultChatTransport })");
    }
    var storage = options.storage === undefined ? sessionStore() : options.storage;
    var saveEvery = options.saveEvery === undefined ? 250 : options.saveEvery;
    var maxRetries = options.maxRetries === undefined ? 8 : options.maxRetries;
    var userFetch = options.fetch;
    var chats = {}; // chat id -> { lastEventId, chunks, timer }
    var rest = {};
    Object.keys(options).forEach(function (name) {
      if (["DefaultChatTransport", "storage", "saveEvery", "maxRetries", "resumeUrl", "fetch"].indexOf(name) === -1) rest[name] = options[name];
    });
    rest.fetch = resumableFetch;
    rest.resumeStreamIsReplay = true;
    var transport = new Base(rest);

    var reconnect = transport.reconnectToStream.bind(transport);
    transport.reconnectToStream = function (request) {
      var chat = recall(request.chatId);
      var headers = Object.assign({}, request.headers || {});
      headers[CHAT_HEADER] = request.chatId;
      if (chat && chat.lastEventId) headers["Last-Event-ID"] = chat.lastEventId;
      return reconnect(Object.assign({}, request, { headers: headers }));
    };
    transport.remembered = function (chatId) {
      return recall(chatId);
    };
    if (root.addEventListener) {
      root.addEventListener("pagehide", function () {
        Object.keys(chats).forEach(function (id) {
          save(id, true);
        });
      });
    }
    return transport;

    function recall(chatId) {
      if (chats[chatId]) return chats[chatId];
      var saved = storage ? parseJSON(storage.getItem(STORAGE_PREFIX + chatId)) : null;
      if (saved && saved.lastEventId && Array.isArray(saved.chunks)) {
        chats[chatId] = { lastEventId: saved.lastEventId, chunks: saved.chunks, timer: null };
        return chats[chatId];
      }
      return null;
    }

    function save(chatId, now) {
      var chat = chats[chatId];
      if (!storage || !chat) return;
      if (!now) {
        if (!chat.timer) chat.timer = setTimeout(function () { save(chatId, true); }, saveEvery);
        return;
      }
      if (chat.timer) clearTimeout(chat.timer);
      chat.timer = null;
      try {
        storage.setItem(STORAGE_PREFIX + chatId, JSON.stringify({ lastEventId: chat.lastEventId, chunks: chat.chunks }));
      } catch (e) {
        // storage full or disabled: a reload replays the answer instead
      }
    }

    function finish(chatId) {
      var chat = chats[chatId];
      if (chat && chat.timer) clearTimeout(chat.timer);
      delete chats[chatId];
      if (storage) storage.removeItem(STORAGE_PREFIX + chatId);
    }

    function remember(chatId, id, data) {
      // One event read: its chunk joins what is remembered, and its id with it (the two always agree).
      if (data === "[DONE]") return finish(chatId);
      var chunk = parseJSON(data);
      if (!chunk || typeof chunk.type !== "string") return;
      var chat = chats[chatId] || (chats[chatId] = { lastEventId: null, chunks: [], timer: null });
      if (chunk.type === "start" && chunk.resumableSse) chat.chunks = []; // the server's replay starts over
      var last = chat.chunks[chat.chunks.length - 1];
      if (last && (chunk.type === "text-delta" || chunk.type === "reasoning-delta") &&
          last.type === chunk.type && last.id === chunk.id && !chunk.providerMetadata) {
        last.delta += chunk.delta;
      } else {
        chat.chunks.push(chunk);
      }
      if (id) chat.lastEventId = id;
      save(chatId, false);
    }

    function resumableFetch(url, init) {
      var base = userFetch || globalThis.fetch;
      init = init || {};
      var headers = new Headers(init.headers || {});
      var chatId = headers.get(CHAT_HEADER);
      headers.delete(CHAT_HEADER);
      var prefix = null;
      if (chatId === null) {
        try {
          chatId = JSON.parse(init.body).id; // a send: the answer starts over
        } catch (e) {
          chatId = null;
        }
        if (chatId) finish(chatId);
      } else if (headers.has("Last-Event-ID") && chats[chatId]) {
        prefix = JSON.parse(JSON.stringify(chats[chatId].chunks)); // (remember() merges into its own copies)
      }
      init = Object.assign({}, init, { headers: headers });
      return base(url, init).then(function (response) {
        if (chatId && response.status === 204) finish(chatId); // the answer ended: nothing is left to resume
        if (!chatId || !response.ok || response.status === 204 || !response.body) return response;
        var body = observe(response.body, chatId, prefix, init);
        return new Response(body, { status: response.status, statusText: response.statusText, headers: response.headers });
      });
    }

    function observe(stream, chatId, prefix, init) {
      // The response's events go on to the AI SDK whole, as they come (after the remembered chunks, unless the
      // server's first event is a reset), each remembered on the way. When the connection drops before [DONE],
      // the rest is asked for with Last-Event-ID (retried with backoff) and follows as if nothing had happened.
      var reader = stream.getReader();
      var decoder = new TextDecoder();
      var encoder = new TextEncoder();
      var text = "";
      var held = prefix ? [] : null; // events held until the first one says whether to send the prefix
      var ended = false;
      var reconnecting = false; // the first event of a reconnect must not be a reset (the page has the rest)
      var signal = init && init.signal;
      return new ReadableStream({
        pull: function (controller) {
          return reader.read().then(function (result) {
            if (result.done) {
              if (held) release(controller, false);
              if (!ended && !aborted()) return reconnect(controller, new TypeError("network error: the answer was cut"), 0);
              controller.close();
              return;
            }
            take(controller, decoder.decode(result.value, { stream: true }));
          }, function (error) {
            if (ended || aborted()) throw error;
            return reconnect(controller, error, 0);
          });
        },
        cancel: function (reason) {
          return reader.cancel(reason);
        },
      });

      function aborted() {
        return Boolean(signal && signal.aborted);
      }

      function take(controller, decoded) {
        text += decoded.replace(/\r\n?/g, "\n");
        var events = text.split("\n\n");
        text = events.pop(); // an incomplete event waits for the rest of it (or is dropped with a connection)
        var reset = false;
        events.forEach(function (block) {
          var id = null, data = [];
          block.split("\n").forEach(function (line) {
            if (line.indexOf("id:") === 0) id = line.slice(3).replace(/^ /, "");
            else if (line.indexOf("data:") === 0) data.push(line.slice(5).replace(/^ /, ""));
          });
          if (!data.length) return;
          var joined = data.join("\n");
          if (/^\{"type":"start","resumableSse"/.test(joined)) {
            if (reconnecting) throw new Error("the server lost this answer's history; reload to see it again");
            reset = true;
          }
          reconnecting = false;
          if (joined === "[DONE]") ended = true;
          remember(chatId, id, joined);
          var bytes = encoder.encode(block + "\n\n");
          if (held) held.push(bytes);
          else controller.enqueue(bytes);
        });
        if (held && events.length) release(controller, reset);
      }

      function reconnect(controller, error, attempt) {
        var chat = chats[chatId];
        if (!chat || !chat.lastEventId || attempt >= maxRetries) throw error;
        var wait = Math.min(250 * Math.pow(2, attempt), 4000);
        return new Promise(function (resolve) { setTimeout(resolve, wait); }).then(function () {
          if (aborted()) throw error;
          var headers = new Headers((init && init.headers) || {});
          headers.delete("content-type");
          headers.set("Last-Event-ID", chats[chatId] ? chats[chatId].lastEventId : chat.lastEventId);
          return (userFetch || globalThis.fetch)(resumeUrl(chatId), { method: "GET", headers: headers, signal: signal, credentials: init && init.credentials });
        }).then(function (response) {
          if (response.status === 204) {
            finish(chatId);
            ended = true;
            controller.close();
            return;
          }
          if (!response.ok || !response.body) throw error;
          reader = response.body.getReader();
          decoder = new TextDecoder();
          text = "";
          reconnecting = true;
        }, function () {
          return reconnect(controller, error, attempt + 1);
        });
      }

      function release(controller, reset) {
        if (!reset) {
          prefix.forEach(function (chunk) {
            controller.enqueue(encoder.encode("data: " + JSON.stringify(chunk) + "\n\n"));
          });
        }
        held.forEach(function (bytes) {
          controller.enqueue(bytes);
        });
        held = null;
      }
    }

    function resumeUrl(chatId) {
      if (options.resumeUrl) return options.resumeUrl(chatId);
      var api = options.api || "/api/chat";
      var cut = api.search(/[?#]/);
      var path = cut === -1 ? api : api.slice(0, cut);
      return path.replace(/\/$/, "") + "/" + encodeURIComponent(chatId) + "/stream" + (cut === -1 ? "" : api.slice(cut));
    }
  }

  function sessionStore() {
    try {
      return root.sessionStorage || null;
    } catch (e) {
      return null;
    }
  }

  var api = { open: open, forget: forget, chatTransport: chatTransport, TERMINAL: TERMINAL.slice() };
  if (typeof module === "object" && module.exports) module.exports = api;
  else root.ResumableSSE = api;
})(typeof self !== "undefined" ? self : this);
