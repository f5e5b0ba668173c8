// PeerPost local UI. Plain modern JavaScript, no framework, no build step.
// Commands go to /api/* (JSON); live events arrive over one WebSocket at /api/events.
// Every failure is shown as a sentence in a toast, never as raw JSON or a blank page.
"use strict";

const $ = (sel) => document.querySelector(sel);
const el = (tag, attrs = {}, ...children) => {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
};

const ui = {
  state: null,            // {phase, me, settings, keygen}
  view: "chats",
  contacts: { contacts: [], incoming: [], outgoing: [] },
  current: null,          // the open conversation: a contact's user id, or "g:<group id>" (groups.js)
  messages: new Map(),    // conversation -> Map(message id -> message)
  // Unread counts and last messages come from the peer (GET /api/contacts, then "message" and
  // "unread" events): a reload shows the same numbers, and every window agrees.
  uploading: null,        // {uploadId, messageId} of the file this window is sending
  typingTimers: new Map(),
  links: new Map(),       // user id -> direct link state
  safetyUser: null,
  editUser: null,
  socket: null,
  socketRetry: 0,
};

// ---------------------------------------------------------------- talking to the peer

class ApiError extends Error {}

async function api(method, path, body) {
  const init = { method, headers: {}, credentials: "same-origin" };
  if (body instanceof FormData) init.body = body;
  else if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch {
    throw new ApiError("PeerPost is not answering. Is `peerpost ui` still running?");
  }
  const type = response.headers.get("content-type") || "";
  if (!response.ok) {
    let message = `PeerPost answered ${response.status}.`;
    if (type.includes("application/json")) {
      const data = await response.json().catch(() => ({}));
      if (data && typeof data.error === "string") message = data.error;
    }
    throw new ApiError(message);
  }
  if (type.includes("application/json")) return response.json();
  return response.blob();
}

// Small stroke icons drawn here (no icon font, no emoji font needed).
const ICONS = {
  clip: "M21 11.5l-8.6 8.6a5 5 0 0 1-7.1-7.1l8.6-8.6a3.3 3.3 0 0 1 4.7 4.7l-8.6 8.6a1.7 1.7 0 0 1-2.4-2.4l7.9-7.9",
  file: "M14 3H7a2 2 0 0 0-2 2v14a2 2 0 0 0 2 2h10a2 2 0 0 0 2-2V8zM14 3v5h5",
};
function icon(name) {
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", "0 0 24 24");
  svg.setAttribute("class", "icon");
  svg.setAttribute("aria-hidden", "true");
  const path = document.createElementNS("http://www.w3.org/2000/svg", "path");
  path.setAttribute("d", ICONS[name]);
  svg.append(path);
  return svg;
}

function toast(message, kind = "error") {
  const box = el("div", { class: `toast ${kind}` }, el("span", { text: message }));
  const close = el("button", { type: "button", "aria-label": "Dismiss", text: "×", onclick: () => box.remove() });
  box.append(close);
  $("#toasts").append(box);
  setTimeout(() => box.remove(), kind === "error" ? 9000 : 4000);
}

// Wrap an event handler: disable the button while it runs and show any error as a toast.
function guarded(handler, button) {
  return async (event) => {
    if (event && event.preventDefault) event.preventDefault();
    if (button) button.disabled = true;
    try {
      await handler(event);
    } catch (err) {
      toast(err instanceof ApiError ? err.message : `Something went wrong: ${err.message || err}`);
    } finally {
      if (button) button.disabled = false;
    }
  };
}

function connectEvents() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const socket = new WebSocket(`${scheme}://${location.host}/api/events`);
  ui.socket = socket;
  socket.addEventListener("open", () => {
    ui.socketRetry = 0;
    ui.socketOpen = true;
    renderDot();
    // Contact changes are pushed, not polled: read the lists once on every (re)connect, for what
    // happened while this window was not listening. (Before the first state event it is a no-op.)
    refreshContacts();
  });
  socket.addEventListener("message", (event) => {
    let data;
    try {
      data = JSON.parse(event.data);
    } catch {
      return;
    }
    handleEvent(data);
  });
  socket.addEventListener("close", () => {
    ui.socketOpen = false;
    renderDot();
    // Loopback to our own peer: retrying costs nothing, so the window is back within ~2 s.
    const delay = Math.min(1600, 200 * 2 ** ui.socketRetry++) * (0.75 + Math.random() / 4);
    setTimeout(connectEvents, delay);
  });
}

// ---------------------------------------------------------------- events from the peer

// Events name a conversation by `user_id` (a contact) or `group_id` (a group); the page keys both
// the same way as `ui.current`: the user id, or "g:<group id>".
function convKey(ev) {
  return ev.group_id ? `g:${ev.group_id}` : ev.user_id;
}

// The API path of a conversation: the same calls for a contact and a group.
function convPath(key) {
  return typeof key === "string" && key.startsWith("g:") ? `/api/groups/${key.slice(2)}` : `/api/conversations/${key}`;
}

function handleEvent(ev) {
  switch (ev.type) {
    case "state":
      applyState(ev.state);
      break;
    case "keygen":
      showKeygen(ev.fraction, ev.label);
      break;
    case "presence":
      // One contact's dot: changed in place, nothing is re-read.
      setOnline(ev.user_id, ev.online);
      break;
    case "presence_snapshot": {
      const online = new Set(ev.online);
      for (const c of ui.contacts.contacts) setOnline(c.user_id, online.has(c.user_id), false);
      renderContacts();
      break;
    }
    case "contacts_changed":
      refreshContacts();
      break;
    case "message":
      upsertMessage(convKey(ev), ev.message, true);
      if (ev.summary) applySummary(convKey(ev), ev.summary);
      break;
    case "unread":
      applySummary(convKey(ev), { unread: ev.unread });
      for (const id of ev.read || []) {
        const m = (ui.messages.get(convKey(ev)) || new Map()).get(id);
        if (m) m.unread = false;
      }
      break;
    case "upload":
      if (ui.uploading && ui.uploading.uploadId === ev.upload_id) ui.uploading.messageId = ev.message_id;
      break;
    case "typing":
      showTyping(convKey(ev), ev.active, ev.name);
      break;
    case "file_progress":
      fileProgress(convKey(ev), ev.message_id, ev.fraction);
      break;
    case "key_change":
      keyChange(ev.user_id, ev.text);
      break;
    case "error":
      toast(ev.message);
      break;
    case "link":
      ui.links.set(ev.user_id, ev.state);
      if (ev.user_id === ui.current) renderConvHeader();
      break;
    case "connection":
      ui.serverOnline = ev.online;
      ui.offlineReason = ev.online ? null : ev.reason;
      renderBanner();
      renderDot(ev.reason);
      break;
    case "resync":
      if (ui.state && ui.state.phase === "ready") {
        refreshContacts();
        if (ui.current !== null) loadHistory(ui.current);
      }
      break;
  }
}

// Green when this window reaches the peer and the peer reaches the server.
function renderDot(reason) {
  const on = ui.socketOpen && ui.serverOnline;
  $("#link-dot").classList.toggle("on", Boolean(on));
  $("#link-dot").title = !ui.socketOpen ? "This window lost its connection to PeerPost"
    : on ? "Connected to the server" : `Not connected to the server${reason ? `: ${reason}` : ""}`;
}

// The "not connected" banner says why (the peer's own words) and offers "Retry now".
function renderBanner() {
  const ready = ui.state && ui.state.phase === "ready";
  $("#offline-banner").hidden = !ready || ui.serverOnline;
  const reason = ui.offlineReason || "connecting to the server";
  $("#offline-reason").textContent = `Not connected to the PeerPost server: ${reason}.`;
}

async function retryNow() {
  $("#offline-reason").textContent = "Trying to reach the server again…";
  const state = await api("POST", "/api/reconnect");
  ui.serverOnline = state.online || ui.serverOnline;
  if (!state.online && state.offline_reason) ui.offlineReason = state.offline_reason;
  renderBanner();
  renderDot();
}

function setOnline(userId, online, render = true) {
  const c = contactById(userId);
  if (!c || c.online === online) return;
  c.online = online;
  if (render) renderContacts();
}

function applySummary(userId, summary) {
  const c = contactById(userId);
  if (!c) return;
  if (summary.unread !== undefined) c.unread = summary.unread;
  if (summary.last) {
    c.last = summary.last;
    c.last_at_ms = Math.max(c.last_at_ms || 0, summary.last_at_ms || 0);
  }
  renderContacts();
}

function applyState(state) {
  const wasReady = ui.state && ui.state.phase === "ready";
  ui.state = state;
  ui.serverOnline = state.online;
  ui.offlineReason = state.offline_reason;
  renderBanner();
  renderDot();
  $("#auth-server").textContent = state.settings.server_url;
  const ready = state.phase === "ready";
  $("#nav").hidden = !ready;
  $("#me-box").hidden = !ready;
  if (ready) {
    $("#me-name").textContent = state.me.username;
    if (!wasReady) {
      $("#toasts").replaceChildren();  // errors from the login screen are settled now
      refreshContacts();
      if (ui.view === "auth") show("chats");
      else show(ui.view);
    }
  } else {
    if (state.known_username && !$("#login-username").value) {
      // This profile has logged in before: only the password is missing.
      $("#login-username").value = state.known_username;
      if (ui.view === "auth" || ui.view === "chats") $("#login-password").focus();
    }
    if (ui.view !== "settings") show("auth");
    if (state.phase === "logged_out") $("#keygen").hidden = true;
  }
}

function show(view) {
  if (view !== "settings" && view !== "auth" && (!ui.state || ui.state.phase !== "ready")) view = "auth";
  ui.view = view;
  for (const name of ["auth", "chats", "stego", "settings"]) $(`#view-${name}`).hidden = name !== view;
  for (const btn of document.querySelectorAll(".navbtn")) {
    if (btn.dataset.view === view) btn.setAttribute("aria-current", "page");
    else btn.removeAttribute("aria-current");
  }
  if (view === "settings") loadSettings();
}

// ---------------------------------------------------------------- sign in

function selectTab(which) {
  const login = which === "login";
  $("#tab-login").setAttribute("aria-selected", String(login));
  $("#tab-register").setAttribute("aria-selected", String(!login));
  $("#login-form").hidden = !login;
  $("#register-form").hidden = login;
  (login ? $("#login-username") : $("#reg-username")).focus();
}

function showKeygen(fraction, label) {
  $("#keygen").hidden = false;
  $("#keygen-progress").value = fraction;
  const text = label ? label[0].toUpperCase() + label.slice(1) : "Generating keys…";
  $("#keygen-label").textContent = text;
  // Kept after the panel hides: what the last progress report said (shown in the log, read by tests).
  $("#keygen").dataset.lastProgress = `${Math.round(fraction * 100)}% ${text}`;
}

async function doLogin() {
  $("#keygen").hidden = true;
  const username = $("#login-username").value.trim();
  const password = $("#login-password").value;
  const state = await api("POST", "/api/login", { username, password });
  $("#login-password").value = "";
  applyState(state);
}

async function doRegister() {
  const username = $("#reg-username").value.trim();
  const email = $("#reg-email").value.trim();
  const password = $("#reg-password").value;
  $("#keygen").hidden = false;
  $("#keygen-label").textContent = "Creating your account…";
  $("#keygen-progress").value = 0;
  const state = await api("POST", "/api/register", { username, email, password });
  $("#reg-password").value = "";
  $("#login-username").value = username;
  selectTab("login");
  applyState(state);
}

// ---------------------------------------------------------------- contacts

const palette = ["#3d5afe", "#00a884", "#f79009", "#d92d20", "#7a5af8", "#0ba5ec", "#ee46bc", "#667085"];
function avatar(name, online) {
  let hash = 0;
  for (const ch of name) hash = (hash * 31 + ch.codePointAt(0)) >>> 0;
  const node = el("span", { class: "avatar", "aria-hidden": "true", text: name.slice(0, 1) });
  node.style.background = palette[hash % palette.length];
  if (online !== undefined) node.append(el("span", { class: `dot${online ? " on" : ""}` }));
  return node;
}

async function refreshContacts() {
  if (!ui.state || ui.state.phase !== "ready") return;
  try {
    ui.contacts = await api("GET", "/api/contacts");
  } catch (err) {
    toast(err.message);
    return;
  }
  renderContacts();
}

function contactById(id) {
  return ui.contacts.contacts.find((c) => c.user_id === id);
}

function renderContacts() {
  const { contacts, incoming, outgoing } = ui.contacts;
  $("#incoming-section").hidden = incoming.length === 0;
  $("#outgoing-section").hidden = outgoing.length === 0;
  $("#incoming-list").replaceChildren(
    ...incoming.map((c) =>
      el("li", { class: "person request", "data-user": c.username },
        avatar(c.username),
        el("span", { class: "who" }, el("span", { class: "name", text: c.username }), el("span", { class: "sub", text: "wants to add you" })),
        el("div", { class: "actions" },
          el("button", { type: "button", class: "primary", text: "Accept", "aria-label": `Accept ${c.username}`,
            onclick: guarded(async () => { await api("POST", `/api/contacts/${c.user_id}/accept`); await refreshContacts(); }) }),
          el("button", { type: "button", class: "ghost", text: "Decline", "aria-label": `Decline ${c.username}`,
            onclick: guarded(async () => { await api("POST", `/api/contacts/${c.user_id}/decline`); await refreshContacts(); }) })),
      )),
  );
  $("#outgoing-list").replaceChildren(
    ...outgoing.map((c) =>
      el("li", { class: "person", "data-user": c.username },
        avatar(c.username),
        el("span", { class: "who" }, el("span", { class: "name", text: c.username }), el("span", { class: "sub", text: "request sent" })),
        el("button", { type: "button", class: "ghost", text: "Cancel", "aria-label": `Cancel request to ${c.username}`,
          onclick: guarded(async () => { await api("DELETE", `/api/contacts/${c.user_id}`); await refreshContacts(); }) }),
      )),
  );
  const groups = new Map();
  for (const c of contacts) {
    const key = c.group || "";
    if (!groups.has(key)) groups.set(key, []);
    groups.get(key).push(c);
  }
  const names = [...groups.keys()].sort((a, b) => (a === "" ? 1 : b === "" ? -1 : a.localeCompare(b)));
  const blocks = [];
  for (const name of names) {
    // Most recent conversation first (as the peer sorted them); people never written to last.
    const members = groups.get(name).sort((a, b) => ((b.last_at_ms || 0) - (a.last_at_ms || 0)) || a.username.localeCompare(b.username));
    if (names.length > 1 || name) blocks.push(el("div", { class: "group-name", text: name || "No group" }));
    blocks.push(el("ul", { class: "list" }, members.map((c) => {
      const unread = ui.current === c.user_id && !document.hidden ? 0 : c.unread || 0;
      const last = c.last ? `${c.last.direction === "out" ? "You: " : ""}${c.last.text}` : null;
      return el("li", {},
        el("button", {
          type: "button", class: "person", "data-user": c.username, "aria-current": String(ui.current === c.user_id),
          "aria-label": `${c.username}, ${c.online ? "online" : "offline"}`, onclick: () => openConversation(c.user_id),
        },
        avatar(c.username, c.online),
        el("span", { class: "who" },
          el("span", { class: "name", text: c.username }),
          el("span", { class: "sub", text: c.remark || (c.online ? "online" : "offline") }),
          last ? el("span", { class: "last", text: last }) : null),
        c.key_warning ? el("span", { class: "badge warn", text: c.key_warning === "new_device" ? "new device" : "key changed" }) :
          c.verified ? el("span", { class: "badge verified", text: "verified" }) : null,
        unread ? el("span", { class: "badge unread", text: String(unread) }) : null));
    })));
  }
  $("#contact-groups").replaceChildren(...blocks);
  $("#no-contacts").hidden = contacts.length > 0;
  const online = contacts.filter((c) => c.online).length;
  $("#online-count").textContent = contacts.length ? `· ${online} online` : "";
  $("#group-names").replaceChildren(...[...groups.keys()].filter(Boolean).map((g) => el("option", { value: g })));
  if (ui.current !== null) renderConvHeader();
}

async function doSearch() {
  const q = $("#search-input").value.trim();
  const list = $("#search-results");
  if (!q) {
    list.replaceChildren();
    return;
  }
  const users = await api("GET", `/api/users/search?q=${encodeURIComponent(q)}`);
  const known = new Set([...ui.contacts.contacts, ...ui.contacts.incoming, ...ui.contacts.outgoing].map((c) => c.user_id));
  const rows = users.filter((u) => u.id !== ui.state.me.user_id).map((u) =>
    el("li", { class: "person", "data-user": u.username },
      avatar(u.username),
      el("span", { class: "who" }, el("span", { class: "name", text: u.username })),
      known.has(u.id) ? el("span", { class: "badge", text: "in contacts" }) :
        el("button", { type: "button", class: "primary", text: "Add", "aria-label": `Add ${u.username}`,
          onclick: guarded(async () => {
            await api("POST", "/api/contacts", { username: u.username });
            toast(`Request sent to ${u.username}.`, "info");
            list.replaceChildren();
            $("#search-input").value = "";
            await refreshContacts();
          }) })));
  list.replaceChildren(...(rows.length ? rows : [el("li", { class: "muted small empty", text: `Nobody called “${q}”.` })]));
}

// ---------------------------------------------------------------- conversation

async function openConversation(userId) {
  ui.current = userId;
  $("#view-chats").classList.add("in-conversation");
  $("#conv-placeholder").hidden = true;
  $("#conv-inner").hidden = false;
  $("#typing").textContent = "";
  renderContacts();
  await loadHistory(userId);
  $("#message-input").focus();
}

async function loadHistory(userId) {
  let data;
  try {
    data = await api("GET", `${convPath(userId)}/messages`);
  } catch (err) {
    toast(err.message);
    return;
  }
  if (ui.current !== userId) return;
  const old = ui.messages.get(userId) || new Map();
  const map = new Map();
  for (const m of data.messages) {
    const before = old.get(m.id);
    if (before?.read_sent && !m.unread) m.read_sent = true;
    if (before && (STATE_RANK[before.state] ?? -1) > (STATE_RANK[m.state] ?? -1)) m.state = before.state;
    map.set(m.id, m);
  }
  // Live events that arrived while the history was on its way are newer than it: keep them.
  for (const [id, m] of old) if (!map.has(id)) map.set(id, m);
  ui.messages.set(userId, map);
  setWarning(data.key_warning);
  renderMessages(true);
  markRead();
}

function renderConvHeader() {
  const c = contactById(ui.current);
  if (!c) return;
  $("#conv-name").textContent = c.username;
  const bits = [c.online ? "online" : "offline"];
  if (c.key_warning) bits.push(c.key_warning === "new_device" ? "new device" : "key changed");
  else if (c.verified) bits.push("verified");
  if (c.group) bits.push(c.group);
  if (c.remark) bits.push(c.remark);
  if (ui.links.get(c.user_id) === "open") bits.push("direct link open");
  $("#conv-status").textContent = bits.join(" · ");
}

function setWarning(text) {
  $("#key-warning").hidden = !text;
  $("#key-warning").textContent = text || "";
}

const PATH_LABEL = { direct: "direct", relayed: "relayed", queued: "queued" };

function ticks(m) {
  if (m.state === "failed") return el("span", { class: "ticks failed", title: m.reason || "failed", text: "failed" });
  if (m.state === "sending") return el("span", { class: "ticks", title: "sending", text: "…" });
  if (m.state === "sent") return el("span", { class: "ticks", title: "sent", text: "✓" });
  if (m.state === "delivered") return el("span", { class: "ticks", title: "delivered", text: "✓✓" });
  if (m.state === "read") return el("span", { class: "ticks read", title: "read", text: "✓✓" });
  return null;
}

function formatSize(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KB`;
  return `${(n / 1024 / 1024).toFixed(1)} MB`;
}

function messageNode(m) {
  if (m.kind === "system") {
    return el("li", { class: "msg system", "data-id": m.id }, el("div", { class: "bubble", text: m.text }));
  }
  let body;
  if (m.file) {
    const parts = [icon("file"),
      el("span", {}, el("span", { class: "fname", text: m.file.name }), " ", el("span", { class: "small", text: formatSize(m.file.size) }))];
    if (m.file.fraction !== undefined && m.file.fraction !== null && m.file.fraction < 1) {
      parts.push(el("progress", { max: "1", value: String(m.file.fraction), "aria-label": `Transfer of ${m.file.name}` }));
    }
    if (m.file.downloadable) {
      parts.push(el("a", { href: `/api/files/${m.id}`, download: m.file.name, class: "download", text: "Download" }));
    }
    body = el("div", { class: "bubble file" }, parts);
  } else {
    body = el("div", { class: "bubble", text: m.text });
  }
  const time = new Date(m.sent_at_ms).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  const meta = el("div", { class: "meta" },
    el("time", { datetime: new Date(m.sent_at_ms).toISOString(), text: time }),
    m.path ? el("span", { class: `path ${m.path}`, title: `travelled ${m.path}`, text: PATH_LABEL[m.path] || m.path }) : null,
    m.direction === "out" ? ticks(m) : null);
  const why = m.state === "failed" && m.reason ? el("div", { class: "failed-reason", text: m.reason }) : null;
  return el("li", { class: `msg ${m.direction}`, "data-id": m.id, "data-state": m.state || "", "data-path": m.path || "" }, body, meta, why);
}

function renderMessages(toBottom = false) {
  const list = $("#messages");
  const map = ui.messages.get(ui.current) || new Map();
  const items = [...map.values()].sort((a, b) => a.sent_at_ms - b.sent_at_ms);
  const nearBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 80;
  list.replaceChildren(...items.map(messageNode));
  // Follow new messages unless the person scrolled up to read older ones.
  if (toBottom || nearBottom) list.scrollTop = list.scrollHeight;
}

// Events and request answers race (a receipt can overtake the answer to "send"): never go back.
const STATE_RANK = { sending: 0, sent: 1, delivered: 2, read: 3 };

function upsertMessage(userId, message, live) {
  if (!ui.messages.has(userId)) ui.messages.set(userId, new Map());
  const map = ui.messages.get(userId);
  const old = map.get(message.id);
  if (old && (STATE_RANK[old.state] ?? -1) > (STATE_RANK[message.state] ?? -1) && message.state !== "failed") {
    message.state = old.state;
  }
  if (old && old.read_sent && !message.unread) message.read_sent = true;
  if (old && old.file && message.file && old.file.fraction !== undefined && message.file.fraction === undefined) {
    message.file.fraction = old.file.fraction;
  }
  map.set(message.id, message);
  if (userId === ui.current) {
    renderMessages(message.direction === "out" && !old);
    if (message.direction === "in") {
      showTyping(userId, false);
      markRead();
    }
  }
}

let readPending = false;
async function markRead() {
  if (ui.current === null || document.hidden || readPending) return;
  const map = ui.messages.get(ui.current) || new Map();
  // A file counts as read only once it has arrived whole: no read tick for a file still on its way.
  const ids = [...map.values()]
    .filter((m) => m.direction === "in" && m.unread && !m.read_sent && m.kind !== "system" && (!m.file || m.file.arrived))
    .map((m) => m.id);
  if (!ids.length) return;
  readPending = true;
  const userId = ui.current;
  try {
    for (const id of ids) map.get(id).read_sent = true;
    const answer = await api("POST", `${convPath(userId)}/read`, { message_ids: ids });
    applySummary(userId, { unread: answer.unread });
  } catch (err) {
    toast(err.message);
  } finally {
    readPending = false;
  }
}

// `name` says who, in a group (a contact's conversation has only one person who can type).
function showTyping(userId, active, name) {
  if (userId !== ui.current) return;
  clearTimeout(ui.typingTimers.get(userId));
  const c = contactById(userId);
  $("#typing").textContent = active ? `${name || (c ? c.username : "Someone")} is typing…` : "";
  if (active) ui.typingTimers.set(userId, setTimeout(() => showTyping(userId, false), 6000));
}

function fileProgress(userId, messageId, fraction) {
  void userId;
  const map = ui.messages.get(userId);
  const m = map && map.get(messageId);
  if (m && m.file) {
    m.file.fraction = fraction;
    if (userId === ui.current) {
      const bar = document.querySelector(`.msg[data-id="${messageId}"] progress`);
      if (bar && fraction < 1) bar.value = fraction;
      else renderMessages();
    }
  }
  if (ui.uploading && ui.uploading.messageId === messageId) {
    // Second half of the bar: the peer's transfer (direct chunks acknowledged, or the blob upload).
    $("#upload-progress").value = 0.5 + fraction / 2;
    $("#upload").dataset.fraction = String(fraction);
  }
}

function keyChange(userId, text) {
  if (userId === ui.current) {
    setWarning(text);
    loadHistory(userId);
  } else {
    toast(text);
  }
  refreshContacts();
}

let typingSentAt = 0;
let typingStopTimer = null;
function onComposerInput() {
  if (ui.current === null) return;
  const userId = ui.current;
  const now = Date.now();
  if (now - typingSentAt > 3000) {
    typingSentAt = now;
    api("POST", `${convPath(userId)}/typing`, { active: true }).catch(() => {});
  }
  clearTimeout(typingStopTimer);
  typingStopTimer = setTimeout(() => {
    typingSentAt = 0;
    api("POST", `${convPath(userId)}/typing`, { active: false }).catch(() => {});
  }, 4000);
}

async function sendMessage() {
  const input = $("#message-input");
  const text = input.value;
  if (!text.trim() || ui.current === null) return;
  input.value = "";
  clearTimeout(typingStopTimer);
  typingSentAt = 0;
  try {
    const message = await api("POST", `${convPath(ui.current)}/messages`, { text });
    upsertMessage(ui.current, message, false);
  } catch (err) {
    input.value = text;
    throw err;
  }
}

// Upload to the local peer (first half of the bar), then the peer's transfer (second half).
function sendFile(file) {
  const userId = ui.current;
  return new Promise((resolve, reject) => {
    const uploadId = Math.random().toString(36).slice(2) + Date.now().toString(36);
    const form = new FormData();
    form.append("upload_id", uploadId);
    form.append("file", file, file.name);
    const xhr = new XMLHttpRequest();
    xhr.open("POST", `${convPath(userId)}/files`);
    ui.uploading = { uploadId, messageId: null };
    $("#upload").hidden = false;
    $("#upload").dataset.fraction = "0";
    $("#upload-label").textContent = `Sending ${file.name}`;
    $("#upload-progress").value = 0;
    xhr.upload.addEventListener("progress", (e) => {
      if (e.lengthComputable) $("#upload-progress").value = (e.loaded / e.total) / 2;
    });
    xhr.addEventListener("load", () => {
      let data = {};
      try { data = JSON.parse(xhr.responseText); } catch { /* not JSON */ }
      ui.uploading = null;
      if (xhr.status >= 200 && xhr.status < 300) {
        $("#upload-progress").value = 1;
        $("#upload").hidden = true;
        upsertMessage(userId, data, false);
        resolve(data);
      } else {
        $("#upload").hidden = true;
        reject(new ApiError(data.error || `Sending the file failed (${xhr.status}).`));
      }
    });
    xhr.addEventListener("error", () => {
      ui.uploading = null;
      $("#upload").hidden = true;
      reject(new ApiError("PeerPost is not answering. Is `peerpost ui` still running?"));
    });
    xhr.send(form);
  });
}

// ---------------------------------------------------------------- safety numbers

async function openSafety() {
  const userId = ui.current;
  $("#safety-digits").textContent = "";
  $("#safety-qr").replaceChildren();
  const data = await api("GET", `/api/safety/${userId}`);
  ui.safetyUser = userId;
  renderSafety(data);
  $("#safety-dialog").showModal();
}

function renderSafety(data) {
  $("#safety-name").textContent = data.username;
  $("#safety-digits").textContent = data.formatted;
  const img = el("img", { src: `data:image/svg+xml;base64,${btoa(data.qr_svg)}`, alt: "Safety number as a QR code", width: "176", height: "176" });
  $("#safety-qr").replaceChildren(img);
  $("#safety-state").textContent = data.verified
    ? `You marked ${data.username} as verified.`
    : `${data.username} is not verified yet.`;
  $("#verify-btn").hidden = data.verified;
}

async function markVerified() {
  const data = await api("POST", `/api/safety/${ui.safetyUser}`);
  renderSafety(data);
  toast(`${data.username} is now verified.`, "info");
  await refreshContacts();
  if (ui.current === ui.safetyUser) await loadHistory(ui.current);
}

// ---------------------------------------------------------------- contact edit

function openEdit() {
  const c = contactById(ui.current);
  if (!c) return;
  ui.editUser = c.user_id;
  $("#contact-title").textContent = `Edit ${c.username}`;
  $("#contact-group").value = c.group || "";
  $("#contact-remark").value = c.remark || "";
  $("#contact-dialog").showModal();
}

async function saveContact() {
  await api("PATCH", `/api/contacts/${ui.editUser}`, {
    group: $("#contact-group").value.trim(),
    remark: $("#contact-remark").value.trim(),
  });
  $("#contact-dialog").close();
  await refreshContacts();
}

async function removeContact() {
  const c = contactById(ui.editUser);
  if (!c || !confirm(`Remove ${c.username} from your contacts?`)) return;
  await api("DELETE", `/api/contacts/${ui.editUser}`);
  $("#contact-dialog").close();
  ui.current = null;
  $("#conv-inner").hidden = true;
  $("#conv-placeholder").hidden = false;
  $("#view-chats").classList.remove("in-conversation");
  await refreshContacts();
}

// ---------------------------------------------------------------- steganography

async function hideMessage() {
  const form = new FormData($("#hide-form"));
  const blob = await api("POST", "/api/stego/hide", form);
  const url = URL.createObjectURL(blob);
  $("#hide-preview").src = url;
  $("#hide-download").href = url;
  $("#hide-result").hidden = false;
  toast("The message is hidden in the image. Download it and send it like any file.", "info");
}

async function revealMessage() {
  const data = await api("POST", "/api/stego/reveal", new FormData($("#reveal-form")));
  $("#reveal-result").textContent = data.message;
  $("#reveal-result").hidden = false;
}

async function showCapacity() {
  const file = $("#hide-image").files[0];
  $("#hide-capacity").textContent = "";
  if (!file) return;
  const form = new FormData();
  form.append("image", file);
  const data = await api("POST", "/api/stego/capacity", form);
  $("#hide-capacity").textContent = `This image can hold about ${formatSize(data.capacity)}.`;
}

// ---------------------------------------------------------------- settings

async function loadSettings() {
  const data = await api("GET", "/api/settings").catch((err) => { toast(err.message); return null; });
  if (!data) return;
  $("#set-server").value = data.server_url;
  $("#set-ice").value = data.ice_servers.join("\n");
  const facts = [["Profile", data.profile], ["Profile folder", data.data_dir]];
  if (data.device_id) facts.push(["This device", data.device_id]);
  $("#settings-facts").replaceChildren(...facts.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: v })]));
}

async function saveSettings() {
  const ice = $("#set-ice").value.split("\n").map((s) => s.trim()).filter(Boolean);
  const data = await api("PUT", "/api/settings", { server_url: $("#set-server").value.trim(), ice_servers: ice });
  $("#settings-saved").textContent = "Saved.";
  setTimeout(() => { $("#settings-saved").textContent = ""; }, 3000);
  if (ui.state) {
    ui.state.settings = data;
    $("#auth-server").textContent = data.server_url;
  }
}

// ---------------------------------------------------------------- wiring

function wire() {
  $("#tab-login").addEventListener("click", () => selectTab("login"));
  $("#tab-register").addEventListener("click", () => selectTab("register"));
  $("#login-form").addEventListener("submit", guarded(doLogin, $("#login-btn")));
  $("#register-form").addEventListener("submit", guarded(async () => {
    try {
      await doRegister();
    } catch (err) {
      $("#keygen").hidden = true;
      throw err;
    }
  }, $("#register-btn")));
  $("#logout-btn").addEventListener("click", guarded(async () => {
    applyState(await api("POST", "/api/logout"));
    ui.current = null;
    ui.messages.clear();
    $("#conv-inner").hidden = true;
    $("#conv-placeholder").hidden = false;
  }));
  for (const btn of document.querySelectorAll("[data-view]")) {
    btn.addEventListener("click", () => show(btn.dataset.view));
  }
  $("#search-form").addEventListener("submit", guarded(doSearch));
  $("#composer").addEventListener("submit", guarded(sendMessage, $("#send-btn")));
  $("#message-input").addEventListener("input", onComposerInput);
  $("#file-input").addEventListener("change", guarded(async () => {
    const file = $("#file-input").files[0];
    $("#file-input").value = "";
    if (file) await sendFile(file);
  }));
  $("#back-btn").addEventListener("click", () => {
    ui.current = null;
    $("#view-chats").classList.remove("in-conversation");
    renderContacts();
  });
  $("#retry-btn").addEventListener("click", guarded(retryNow, $("#retry-btn")));
  $("#safety-btn").addEventListener("click", guarded(openSafety));
  $("#verify-btn").addEventListener("click", guarded(markVerified, $("#verify-btn")));
  $("#edit-contact-btn").addEventListener("click", openEdit);
  $("#contact-save").addEventListener("click", guarded(saveContact, $("#contact-save")));
  $("#contact-remove").addEventListener("click", guarded(removeContact));
  $("#hide-form").addEventListener("submit", guarded(hideMessage, $("#hide-btn")));
  $("#hide-image").addEventListener("change", guarded(showCapacity));
  $("#reveal-form").addEventListener("submit", guarded(revealMessage, $("#reveal-btn")));
  $("#settings-form").addEventListener("submit", guarded(saveSettings, $("#settings-save")));
  document.addEventListener("visibilitychange", () => { if (!document.hidden) markRead(); });
  window.addEventListener("unhandledrejection", (e) => toast(`Something went wrong: ${e.reason && e.reason.message || e.reason}`));
}

async function start() {
  wire();
  $("#attach-icon").replaceWith(icon("clip"));
  try {
    applyState(await api("GET", "/api/state"));
  } catch (err) {
    toast(err.message);
  }
  connectEvents();
}

start();
