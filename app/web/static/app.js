// The trio-enclave chat page: one WebSocket speaking chat.v1 (docs/protocol.md).
// No framework, no build step, nothing from another host. Every server string is
// put on the page with textContent, never parsed as HTML.
"use strict";

(() => {
  const root = document.documentElement;
  const WS_PATH = root.dataset.wsPath || "/ws";
  const DEV = root.dataset.devTokens === "on";
  const KEY = {
    token: "enclave.token",
    connected: "enclave.connected",
    thread: "enclave.thread",
    seq: "enclave.seq",
    epoch: "enclave.epoch",
  };
  const TERMINAL = new Set(["agent_completed", "agent_error", "run_cancelled"]);
  // Run event fields shown by the page itself, not repeated in a generic line.
  const RUN_FIELDS = new Set(["type", "run_id", "thread_id", "seq", "thread_seq"]);
  const MAX_RECONNECTS = 8;
  const MAX_NOTICES = 4;
  const $ = (id) => document.getElementById(id);

  // -- words for the protocol's codes ---------------------------------------------

  function closeSentence(code, reason, opened) {
    const limits = (state.ready && state.ready.limits) || {};
    switch (code) {
      case 1000:
        if (reason === "idle_timeout") {
          const idle = limits.idle_timeout_s ? ` ${limits.idle_timeout_s} s` : "";
          return `The server closed the connection after${idle} without a message from this page (idle timeout). Connect again to go on.`;
        }
        return "The connection was closed.";
      case 1001:
        if (reason === "server_shutdown") return "The server is shutting down or restarting.";
        if (reason === "pong_timeout") {
          return "The server did not hear back from this browser in time (keepalive timeout): the network may be slow or down.";
        }
        return "The server went away.";
      case 1002:
        return `The server closed the connection: a WebSocket protocol error (${reason || "no detail"}).`;
      case 1003:
        return "The server accepts only text messages.";
      case 1006:
        if (!opened) {
          return "The server refused the connection before it opened: the token may be invalid or expired, this page's origin not allowed, or the server full or busy. Check the token and connect again.";
        }
        return "The connection was lost without a close message: the network failed or the server stopped.";
      case 1007:
        return "The server closed the connection: a message was not valid UTF-8.";
      case 1008:
        if (reason === "token_expired") return "Your token expired: get a new one and connect again.";
        if (reason === "subject_mismatch") {
          return "A token for another user was sent on this connection, so the server closed it.";
        }
        if (reason === "rate_limited") {
          return "Too many messages too fast: the server closed the connection. Wait a few seconds before connecting again.";
        }
        if (reason === "slow_consumer") {
          return "This page did not read the server's messages fast enough (slow consumer), so the server closed the connection.";
        }
        return `The server closed the connection: policy violation (${reason || "no detail"}).`;
      case 1009: {
        const max = limits.max_message_bytes ? ` (${limits.max_message_bytes} bytes)` : "";
        return `A message was larger than the server accepts${max}; the server closed the connection.`;
      }
      case 1011:
        return "The server hit an internal error on this connection.";
      default:
        return `The connection closed (code ${code}${reason ? `, ${reason}` : ""}).`;
    }
  }

  function errorSentence(event) {
    const limits = (state.ready && state.ready.limits) || {};
    switch (event.code) {
      case "invalid_json":
        return "The server could not read a message as JSON.";
      case "invalid_message":
        return `The server refused a malformed message${event.field ? ` (field "${event.field}")` : ""}.`;
      case "unknown_type":
        return "The server does not know that kind of message.";
      case "run_not_found":
        return "That run is not running any more (it has ended or was already cancelled).";
      case "too_many_runs":
        return `Too many runs at once on this connection${limits.max_runs ? ` (at most ${limits.max_runs})` : ""}: wait for one to finish.`;
      case "rate_limited":
        return "Slow down: the rate limit dropped that message. Send it again in a moment.";
      case "invalid_token":
        return `The server refused the token: ${event.message}.`;
      case "shutting_down":
        return "The server is shutting down and takes no new messages: try again shortly.";
      default:
        return `The server reported an error (${event.code}): ${event.message}`;
    }
  }

  const AGENT_ERRORS = {
    agent_failed: "The agent failed.",
    run_timeout: "The run took too long and was stopped.",
    invalid_event: "The agent produced an invalid event (a bug in the agent).",
    invalid_result: "The agent produced an invalid result (a bug in the agent).",
  };
  const CANCEL_REASONS = {
    cancelled_by_client: "Cancelled.",
    server_shutdown: "Cancelled: the server is shutting down.",
  };
  const RESUME_FAILURES = {
    unknown_thread: "The server does not know this thread any more; the next message starts a new one.",
    epoch_changed: "The server restarted since this page last saw it: runs in flight then were lost. Showing what the thread kept.",
    retention: "The server no longer keeps some of this thread's events. Showing what is left.",
  };

  // -- state ----------------------------------------------------------------------

  const state = {
    ws: null,
    opened: false,
    wanted: false, // the user asked to be connected: reconnect after an unexpected close
    attempt: 0,
    retryTimer: null,
    keepalive: null,
    ready: null,
    threadsSupported: false,
    thread: load(KEY.thread),
    lastSeq: Number(load(KEY.seq) || 0),
    runs: new Map(), // run_id -> {el, live}
    pending: [], // thread requests awaiting an answer, oldest first: "threads" | "history" | "resume"
    resumeTries: 0,
    clientSeq: 0,
  };

  function load(key) {
    try {
      return sessionStorage.getItem(key);
    } catch {
      return null; // storage disabled: the page works without resume
    }
  }

  function save(key, value) {
    try {
      if (value === null || value === undefined) sessionStorage.removeItem(key);
      else sessionStorage.setItem(key, String(value));
    } catch {
      // storage disabled or full: nothing to keep
    }
  }

  // -- small DOM helpers ----------------------------------------------------------

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function json(value) {
    return JSON.stringify(value === undefined ? null : value);
  }

  function notice(text, kind = "info") {
    const box = $("notices");
    const item = el("p", `notice ${kind}`, text);
    box.append(item);
    while (box.children.length > MAX_NOTICES) box.firstElementChild.remove();
  }

  function setStatus(text, connected = false) {
    const status = $("status");
    status.textContent = text;
    status.classList.toggle("connected", connected);
  }

  function scrollDown() {
    const log = $("log");
    if (log.lastElementChild) log.lastElementChild.scrollIntoView({ block: "end" });
  }

  function setConnected(connected) {
    $("message").disabled = !connected;
    $("send").disabled = !connected;
    $("disconnect").disabled = !connected && !state.wanted;
    $("refresh-threads").disabled = !(connected && state.threadsSupported);
  }

  function showThread() {
    $("thread-label").textContent = state.thread
      ? `Thread ${state.thread}`
      : "New thread: the server names it when the first message is sent.";
    for (const button of $("threads").querySelectorAll("button")) {
      button.classList.toggle("current", button.dataset.threadId === state.thread);
    }
  }

  function setThread(threadId) {
    state.thread = threadId;
    state.lastSeq = 0;
    state.resumeTries = 0;
    save(KEY.thread, threadId);
    save(KEY.seq, 0);
    showThread();
  }

  function clearLog() {
    $("log").replaceChildren();
    state.runs.clear();
    updateKeepalive();
  }

  // -- tokens ---------------------------------------------------------------------

  function base64urlJson(part) {
    const text = atob(part.replace(/-/g, "+").replace(/_/g, "/"));
    return JSON.parse(text);
  }

  // What is visibly wrong with a token before the server is asked; null if nothing.
  function tokenProblem(token) {
    if (!token) return "Enter a token first" + (DEV ? " (or ask for a dev token)." : ".");
    const parts = token.split(".");
    if (parts.length !== 3 || !parts.every((p) => /^[A-Za-z0-9_-]+$/.test(p))) {
      return "That is not a token: a JWT is three base64url parts separated by dots.";
    }
    let claims;
    try {
      claims = base64urlJson(parts[1]);
    } catch {
      return "That is not a token: its claims cannot be read.";
    }
    if (claims && typeof claims.exp === "number" && claims.exp * 1000 < Date.now()) {
      return `This token expired at ${new Date(claims.exp * 1000).toLocaleString()}: get a new one.`;
    }
    return null;
  }

  async function devToken() {
    const sub = $("dev-sub").value.trim();
    let response;
    try {
      response = await fetch("dev/token", {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify(sub ? { sub } : {}),
      });
    } catch {
      notice("Could not reach the server for a dev token.", "error");
      return;
    }
    let body = {};
    try {
      body = await response.json();
    } catch {
      // not JSON: the status says enough
    }
    if (!response.ok || typeof body.token !== "string") {
      const detail = body.detail ? `: ${body.detail}` : "";
      const hint = response.status === 404 ? " (is the server running with --dev?)" : "";
      notice(`The server gave no dev token (HTTP ${response.status}${detail})${hint}.`, "error");
      return;
    }
    $("token").value = body.token;
    notice(`A dev token for "${body.sub}" (valid 24 h) is in the token field: press Connect.`);
  }

  // -- the connection -------------------------------------------------------------

  function connect() {
    const token = $("token").value.trim();
    const problem = tokenProblem(token);
    if (problem) {
      notice(problem, "error");
      return;
    }
    save(KEY.token, token);
    save(KEY.connected, "1");
    state.wanted = true;
    state.attempt = 0;
    open(token);
  }

  function disconnect() {
    state.wanted = false;
    save(KEY.connected, null);
    clearTimeout(state.retryTimer);
    if (state.ws) state.ws.close(1000);
    setConnected(false);
    setStatus("Disconnected.");
  }

  function open(token) {
    clearTimeout(state.retryTimer);
    if (state.ws) state.ws.close(1000);
    const url = new URL(WS_PATH, location.href);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    setStatus(state.attempt ? `Reconnecting (attempt ${state.attempt})…` : "Connecting…");
    let ws;
    try {
      // The token rides in a subprotocol: browsers cannot set headers, and URLs get logged.
      ws = new WebSocket(url.href, ["chat.v1", `bearer.${token}`]);
    } catch (error) {
      notice(`Could not open a WebSocket: ${error.message}`, "error");
      return;
    }
    state.ws = ws;
    state.opened = false;
    $("disconnect").disabled = false;
    ws.onopen = () => {
      state.opened = true;
    };
    ws.onmessage = (message) => {
      let event;
      try {
        event = JSON.parse(message.data);
      } catch {
        notice("The server sent something that is not JSON.", "error");
        return;
      }
      if (event && typeof event.type === "string") handle(event);
    };
    ws.onclose = (event) => closed(ws, event);
  }

  function retryable(code, opened) {
    if (!opened) return state.attempt > 0; // a refused first handshake will not heal
    return code === 1001 || code === 1006 || code === 1011 || code === 1012 || code === 1013;
  }

  function closed(ws, event) {
    if (ws !== state.ws) return;
    state.ws = null;
    state.ready = null;
    state.pending = [];
    setConnected(false);
    for (const [runId, run] of state.runs) {
      if (!run.live) continue;
      if (state.threadsSupported) {
        setRunStatus(runId, "connection lost: resuming after reconnect");
      } else {
        // Without threads the server cancels a closed connection's runs (docs/protocol.md).
        run.live = false;
        run.el.querySelector(".cancel")?.remove();
        setRunStatus(runId, "lost with the connection", "failed");
      }
    }
    updateKeepalive();
    if (!state.wanted) return;
    const sentence = closeSentence(event.code, event.reason, state.opened);
    if (retryable(event.code, state.opened) && state.attempt < MAX_RECONNECTS) {
      state.attempt += 1;
      // Exponential backoff with jitter, so many pages do not return at once.
      const delay = Math.min(15000, 500 * 2 ** (state.attempt - 1)) * (0.5 + Math.random() / 2);
      notice(`${sentence} Reconnecting in ${(delay / 1000).toFixed(1)} s…`, "warn");
      setStatus("Disconnected: reconnecting soon.");
      state.retryTimer = setTimeout(() => open($("token").value.trim()), delay);
      $("disconnect").disabled = false;
      return;
    }
    state.wanted = false;
    save(KEY.connected, null);
    const gaveUp = state.attempt >= MAX_RECONNECTS ? " Gave up reconnecting." : "";
    notice(sentence + gaveUp, "error");
    setStatus("Not connected.");
    $("disconnect").disabled = true;
  }

  function send(message) {
    if (!state.ws || state.ws.readyState !== WebSocket.OPEN) return false;
    state.ws.send(JSON.stringify(message));
    return true;
  }

  // A thread request; a server without threads answers `unknown_type` (see handleError).
  function request(message) {
    if (!state.threadsSupported) return;
    if (send(message)) state.pending.push(message.type);
  }

  function answered(type) {
    const index = state.pending.indexOf(type);
    if (index >= 0) state.pending.splice(index, 1);
  }

  // Keep the connection from the idle timeout while a run is going (docs/protocol.md).
  function updateKeepalive() {
    const live = [...state.runs.values()].some((run) => run.live);
    if (live && state.ws && !state.keepalive) {
      const idle = ((state.ready && state.ready.limits) || {}).idle_timeout_s || 300;
      state.keepalive = setInterval(() => send({ type: "ping" }), Math.max(5, idle / 2) * 1000);
    } else if ((!live || !state.ws) && state.keepalive) {
      clearInterval(state.keepalive);
      state.keepalive = null;
    }
  }

  // -- events ---------------------------------------------------------------------

  function handle(event) {
    switch (event.type) {
      case "connection_ready":
        return ready(event);
      case "error":
        return handleError(event);
      case "pong":
        return undefined;
      case "auth_ok":
        return notice("The server accepted the new token.");
      case "thread_list":
        return showThreads(event);
      case "history_page":
        return showHistory(event);
      case "resumed":
        return resumed(event);
      case "message_accepted": // a message of the thread, in a history or a replay
        return userEvent(event);
      default:
        if (typeof event.run_id === "string") return runEvent(event);
        return genericEvent(event);
    }
  }

  function ready(event) {
    state.ready = event;
    state.attempt = 0;
    setStatus(`Connected as ${event.user_id} (${event.connection_id}).`, true);
    // `epoch` comes with the servers that keep threads; older ones would answer
    // `unknown_type` to every thread request.
    state.threadsSupported = Object.hasOwn(event, "epoch");
    setConnected(true);
    $("message").focus();
    if (!state.threadsSupported) {
      $("threads-note").textContent = "This server keeps no thread history.";
      return;
    }
    $("threads-note").textContent = "";
    if (load(KEY.epoch) !== String(event.epoch)) save(KEY.epoch, event.epoch);
    request({ type: "threads", limit: 20 });
    if (state.thread) {
      state.resumeTries = 0;
      // After a reload the log is empty: show the thread first, then resume after it.
      if ($("log").children.length) resume();
      else request({ type: "history", thread_id: state.thread, limit: 50 });
    }
  }

  function resume() {
    state.resumeTries += 1;
    request({ type: "resume", thread_id: state.thread, after: state.lastSeq });
  }

  function handleError(event) {
    if (event.code === "unknown_type" && state.pending.length) {
      // The oldest thread request was not understood: a server without threads.
      state.pending.shift();
      state.threadsSupported = false;
      state.pending = [];
      $("threads-note").textContent = "This server keeps no thread history.";
      setConnected(Boolean(state.ws));
      return;
    }
    const sentence = errorSentence(event);
    if (event.ref && state.runs.has(event.ref)) {
      const run = state.runs.get(event.ref);
      if (event.code === "run_not_found") {
        run.live = false;
        setRunStatus(event.ref, "already ended");
        run.el.querySelector(".cancel")?.remove();
        updateKeepalive();
      }
      notice(sentence, "warn");
      return;
    }
    const bubble = event.ref ? userBubble(event.ref) : null;
    if (bubble) {
      bubble.append(el("span", "refused", `Not run: ${sentence}`));
    }
    notice(sentence, "error");
  }

  function noteSeq(event) {
    if (typeof event.thread_seq !== "number" || event.thread_id !== state.thread) return true;
    if (event.thread_seq <= state.lastSeq) return false; // seen already (history and resume overlap)
    state.lastSeq = event.thread_seq;
    save(KEY.seq, state.lastSeq);
    return true;
  }

  function userBubble(clientId) {
    for (const node of $("log").querySelectorAll("li.user")) {
      if (node.dataset.clientId === clientId) return node;
    }
    return null;
  }

  function userEvent(event) {
    if (event.thread_id && state.thread && event.thread_id !== state.thread) return;
    if (!noteSeq(event)) return;
    if (event.client_id && userBubble(event.client_id)) return;
    addUser(event.text, event.client_id);
  }

  function addUser(text, clientId) {
    const item = el("li", "user", text);
    if (clientId) item.dataset.clientId = clientId;
    $("log").append(item);
    scrollDown();
    return item;
  }

  function genericEvent(event) {
    const { type, ...rest } = event;
    const item = el("li", "event", `${type}: ${json(rest)}`);
    item.dataset.type = type;
    $("log").append(item);
    scrollDown();
  }

  function runFor(event) {
    let run = state.runs.get(event.run_id);
    if (run) return run;
    const item = el("li", "run live");
    item.dataset.runId = event.run_id;
    const head = el("div", "run-head");
    head.append(el("span", "agent", "agent"), el("code", "run-id", event.run_id));
    head.append(el("span", "run-status", "running"));
    const cancel = el("button", "cancel", "Cancel");
    cancel.type = "button";
    cancel.addEventListener("click", () => {
      if (send({ type: "cancel", run_id: event.run_id })) {
        cancel.disabled = true;
        cancel.textContent = "Cancelling…";
      }
    });
    head.append(cancel);
    item.append(head, el("ol", "steps"), el("div", "answer"));
    // Right after the message that started it, when that message is on the page.
    const bubble = event.client_id ? userBubble(event.client_id) : null;
    if (bubble) bubble.after(item);
    else $("log").append(item);
    run = { el: item, live: true, deltas: false };
    state.runs.set(event.run_id, run);
    return run;
  }

  function setRunStatus(runId, text, outcome) {
    const run = state.runs.get(runId);
    if (!run) return;
    run.el.querySelector(".run-status").textContent = text;
    if (outcome) {
      run.el.classList.remove("live");
      run.el.classList.add(outcome);
    }
  }

  function step(run, type, label, payload) {
    const item = el("li", `step step-${type}`, label);
    item.dataset.type = type;
    if (payload !== undefined) item.append(" ", el("code", "payload", payload));
    run.el.querySelector(".steps").append(item);
    return item;
  }

  function runEvent(event) {
    if (
      event.type === "agent_started" &&
      !state.thread &&
      event.client_id &&
      userBubble(event.client_id)
    ) {
      setThread(event.thread_id); // the server named the new thread
      noteSeq(event);
    } else if (event.thread_id && state.thread && event.thread_id !== state.thread) {
      return; // another thread's run: it is in that thread's history
    } else if (!noteSeq(event)) {
      return;
    }
    const run = runFor(event);
    const answer = run.el.querySelector(".answer");
    switch (event.type) {
      case "agent_started":
        run.el.querySelector(".agent").textContent = event.agent;
        step(run, event.type, `started ${event.agent}`);
        break;
      case "agent_thinking":
        step(run, event.type, "thinking:", event.thought);
        break;
      case "tool_executing":
        step(run, event.type, `tool ${event.tool_name} ←`, json(event.tool_input));
        break;
      case "tool_completed":
        step(run, event.type, `tool ${event.tool_name} →`, json(event.results));
        break;
      case "agent_delta":
        if (typeof event.delta === "string") {
          answer.textContent += event.delta;
          run.deltas = true;
        }
        break;
      case "agent_completed":
        step(run, event.type, "completed");
        if (!run.deltas) {
          answer.textContent = typeof event.result === "string" ? event.result : json(event.result);
        }
        setRunStatus(event.run_id, "completed", "completed");
        break;
      case "agent_error": {
        const error = event.error || {};
        const sentence = AGENT_ERRORS[error.code] || `The run failed (${error.code}): ${error.message}`;
        step(run, event.type, sentence);
        setRunStatus(event.run_id, "failed", "failed");
        break;
      }
      case "run_cancelled": {
        const sentence = CANCEL_REASONS[event.reason] || `Cancelled (${event.reason}).`;
        step(run, event.type, sentence);
        setRunStatus(event.run_id, "cancelled", "cancelled");
        break;
      }
      default: {
        // An event type this page does not know yet: shown as it came.
        const rest = Object.fromEntries(Object.entries(event).filter(([k]) => !RUN_FIELDS.has(k)));
        step(run, event.type, `${event.type}:`, json(rest));
      }
    }
    if (TERMINAL.has(event.type)) {
      run.live = false;
      run.el.querySelector(".cancel")?.remove();
    } else if (run.live) {
      setRunStatus(event.run_id, "running");
    }
    updateKeepalive();
    scrollDown();
  }

  // -- threads ----------------------------------------------------------------------

  function formatTime(value) {
    if (typeof value === "number") return new Date(value * 1000).toLocaleString();
    return typeof value === "string" ? value : "";
  }

  function showThreads(event) {
    answered("threads");
    const list = $("threads");
    list.replaceChildren();
    const threads = Array.isArray(event.threads) ? event.threads : [];
    for (const thread of threads) {
      const button = el("button", "", thread.thread_id);
      button.type = "button";
      button.dataset.threadId = thread.thread_id;
      const meta = `${thread.last_seq ?? "?"} events · ${formatTime(thread.updated_at)}`;
      button.append(el("span", "meta", meta));
      button.addEventListener("click", () => openThread(thread.thread_id));
      const item = el("li");
      item.append(button);
      list.append(item);
    }
    $("threads-note").textContent = threads.length ? "" : "No threads yet.";
    showThread();
  }

  function openThread(threadId) {
    setThread(threadId);
    clearLog();
    request({ type: "history", thread_id: threadId, limit: 50 });
  }

  function showHistory(event) {
    answered("history");
    if (event.thread_id !== state.thread) return; // another thread was opened since
    clearLog();
    state.lastSeq = 0;
    if (event.has_more) {
      const more = el("li", "event", "Earlier events of this thread are not shown.");
      $("log").append(more);
    }
    for (const past of Array.isArray(event.events) ? event.events : []) {
      if (past && typeof past.type === "string") handle(past);
    }
    // Runs whose end is not in the history may still be going: resume brings the rest.
    if (state.resumeTries < 2) resume();
  }

  function resumed(event) {
    answered("resume");
    if (event.thread_id !== state.thread) return;
    if (event.recovered) return;
    const sentence = RESUME_FAILURES[event.reason] || `The thread could not be resumed (${event.reason}).`;
    notice(sentence, "warn");
    if (event.reason === "unknown_thread") {
      setThread(null);
      clearLog();
    } else if (state.resumeTries < 2) {
      request({ type: "history", thread_id: state.thread, limit: 50 });
    }
  }

  // -- wiring -----------------------------------------------------------------------

  function sendMessage() {
    const box = $("message");
    const text = box.value.trim();
    if (!text) return;
    state.clientSeq += 1;
    const clientId = `c${state.clientSeq}-${Date.now().toString(36)}`;
    const message = { type: "user_message", text, client_id: clientId };
    if (state.thread) message.thread_id = state.thread;
    if (!send(message)) {
      notice("Not connected: the message was not sent.", "error");
      return;
    }
    addUser(text, clientId);
    box.value = "";
  }

  function start() {
    if (DEV) {
      const slot = $("dev-slot");
      const sub = el("input");
      sub.id = "dev-sub";
      sub.placeholder = "dev-user";
      sub.setAttribute("aria-label", "user for the dev token");
      const button = el("button", "", "Dev token");
      button.id = "dev-token";
      button.type = "button";
      button.addEventListener("click", devToken);
      slot.append(sub, button);
    }
    $("connect-form").addEventListener("submit", (event) => {
      event.preventDefault();
      connect();
    });
    $("disconnect").addEventListener("click", disconnect);
    $("message-form").addEventListener("submit", (event) => {
      event.preventDefault();
      sendMessage();
    });
    $("message").addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        sendMessage();
      }
    });
    $("new-thread").addEventListener("click", () => {
      setThread(null);
      clearLog();
    });
    $("refresh-threads").addEventListener("click", () => request({ type: "threads", limit: 20 }));
    showThread();
    const token = load(KEY.token);
    if (token) $("token").value = token;
    // A reload while connected reconnects and resumes the stored thread.
    if (token && load(KEY.connected)) connect();
  }

  start();
})();
