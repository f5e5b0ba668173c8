// PeerPost UI: what people do every day (issue 15). Loaded after app.js, whose globals it uses
// (ui, api, el, $, toast, guarded, ...). It extends app.js's functions by wrapping them, so app.js
// keeps its shape: links in messages, "edited" and tombstones, edit/delete, block and the blocked
// list, my devices, account, undo "verified", desktop notifications and the unread count in the
// tab's title.
"use strict";

// ---------------------------------------------------------------- links, never previews

// Only http(s) links become anchors; nothing is fetched from them (no previews that would tell the
// link's site who is reading), and the site gets neither a window handle nor a referrer.
const LINK = /\bhttps?:\/\/[^\s<>"']+/gi;
const TRAILING = /[.,;:!?)\]}'"]+$/;

function linkified(text) {
  const parts = [];
  let last = 0;
  for (const match of text.matchAll(LINK)) {
    let url = match[0];
    const trail = url.match(TRAILING);
    if (trail) url = url.slice(0, -trail[0].length);
    if (!url) continue;
    parts.push(text.slice(last, match.index));
    parts.push(el("a", { href: url, target: "_blank", rel: "noopener noreferrer", class: "msglink", text: url }));
    last = match.index + url.length;
  }
  parts.push(text.slice(last));
  return parts.filter((p) => p !== "");
}

// ---------------------------------------------------------------- messages: edited, deleted, actions

const baseMessageNode = messageNode;
messageNode = function (m) {  // eslint-disable-line no-global-assign
  if (m.kind === "deleted") {
    const node = baseMessageNode({ ...m, kind: "text", text: "" });
    node.classList.add("deleted");
    node.querySelector(".bubble").replaceChildren(el("em", { text: "This message was deleted." }));
    node.append(actionsButton(m));
    return node;
  }
  if (m.kind === "timer") return baseMessageNode({ ...m, kind: "system" });
  const node = baseMessageNode(m);
  if (m.kind === "system") return node;
  if (m.kind === "text" && m.text) node.querySelector(".bubble").replaceChildren(...linkified(m.text));
  if (m.edited) node.querySelector(".meta").prepend(el("span", { class: "edited", text: "edited" }));
  node.append(actionsButton(m));
  return node;
};

function actionsButton(m) {
  return el("button", {
    type: "button", class: "ghost small msg-actions", text: "⋯", "aria-label": "Message actions",
    onclick: () => openMessageDialog(m),
  });
}

let dialogMessage = null;

function openMessageDialog(m) {
  dialogMessage = m;
  const own = m.direction === "out";
  const editable = own && m.editable && m.kind === "text";
  $("#edit-label").hidden = !editable;
  $("#edit-save").hidden = !editable;
  $("#edit-text").value = editable ? m.text : "";
  $("#delete-everyone").hidden = !own || m.kind === "deleted";
  $("#message-dialog").showModal();
}

async function saveEdit() {
  const m = dialogMessage;
  const text = $("#edit-text").value;
  const updated = await api("PATCH", `/api/messages/${m.id}`, { text });
  $("#message-dialog").close();
  upsertMessage(ui.current, updated, false);
}

async function deleteMessage(forEveryone) {
  const m = dialogMessage;
  await api("DELETE", `/api/messages/${m.id}${forEveryone ? "?for=everyone" : ""}`);
  $("#message-dialog").close();
  if (!forEveryone) removeMessage(ui.current, m.id);
}

function removeMessage(userId, id) {
  const map = ui.messages.get(userId);
  if (map && map.delete(id) && userId === ui.current) renderMessages();
}

// ---------------------------------------------------------------- disappearing messages

function showTimer(seconds) {
  const select = $("#timer-select");
  if (![...select.options].some((o) => Number(o.value) === seconds)) {
    select.append(el("option", { value: String(seconds), text: `Vanish after ${seconds} s` }));
  }
  select.value = String(seconds);
}

async function loadTimer(userId) {
  const data = await api("GET", `/api/conversations/${userId}/timer`);
  if (ui.current === userId) showTimer(data.seconds);
}

async function setTimer() {
  const userId = ui.current;
  const data = await api("POST", `/api/conversations/${userId}/timer`, { seconds: Number($("#timer-select").value) });
  upsertMessage(userId, data.message, false);
}

const baseOpenConversation = openConversation;
openConversation = async function (userId) {  // eslint-disable-line no-global-assign
  const opened = baseOpenConversation(userId);
  // Disappearing messages are a contact's setting; a group has none (yet).
  if (typeof userId === "number") await loadTimer(userId).catch((err) => toast(err.message));
  return opened;
};

// ---------------------------------------------------------------- block

async function blockCurrent() {
  const c = contactById(ui.current);
  if (!c) return;
  if (!confirm(`Block ${c.username}? They can no longer message you, call you or see you online.`)) return;
  await api("POST", "/api/blocks", { user_id: c.user_id });
  toast(`You blocked ${c.username}.`, "info");
  ui.current = null;
  $("#conv-inner").hidden = true;
  $("#conv-placeholder").hidden = false;
  $("#view-chats").classList.remove("in-conversation");
  await refreshContacts();
}

async function loadBlocked() {
  const rows = await api("GET", "/api/blocks");
  $("#blocked-list").replaceChildren(...(rows.length ? rows.map((b) =>
    el("li", { class: "person", "data-user": b.username },
      avatar(b.username),
      el("span", { class: "who" }, el("span", { class: "name", text: b.username }),
        el("span", { class: "sub", text: `blocked ${new Date(b.created_at).toLocaleDateString()}` })),
      el("button", { type: "button", class: "secondary small", text: "Unblock", "aria-label": `Unblock ${b.username}`,
        onclick: guarded(async () => {
          await api("DELETE", `/api/blocks/${b.user_id}`);
          toast(`You unblocked ${b.username}.`, "info");
          await loadBlocked();
        }) })))
    : [el("li", { class: "muted small empty", text: "You have blocked nobody." })]));
}

// ---------------------------------------------------------------- my devices

function when(iso) {
  return iso ? new Date(iso).toLocaleString([], { dateStyle: "medium", timeStyle: "short" }) : "never";
}

async function loadDevices() {
  const rows = await api("GET", "/api/devices");
  $("#devices-list").replaceChildren(...rows.map((d) => {
    const name = el("input", { value: d.name || "", maxlength: "64", placeholder: "Name this device", "aria-label": `Name of device ${d.device_id}` });
    return el("li", { class: "device", "data-device": d.device_id },
      el("span", { class: "who" },
        el("span", { class: "name", text: `${d.name || d.device_id}${d.this_device ? " (this device)" : ""}` }),
        el("span", { class: "sub", text: `added ${when(d.added_at)} · last seen ${d.this_device ? "now" : when(d.last_seen)}` })),
      el("div", { class: "row" },
        name,
        el("button", { type: "button", class: "secondary small", text: "Rename", "aria-label": `Rename device ${d.device_id}`,
          onclick: guarded(async () => { await api("PATCH", `/api/devices/${d.device_id}`, { name: name.value }); await loadDevices(); }) }),
        d.this_device ? null : el("button", { type: "button", class: "secondary small", text: "Send my history", "aria-label": `Send my history to device ${d.device_id}`,
          onclick: guarded(async () => {
            if (!confirm(`Send your whole message history to ${d.name || d.device_id}, over a direct link?`)) return;
            const data = await api("POST", `/api/devices/${d.device_id}/history`);
            toast(`Sent ${data.sent} messages to ${d.name || d.device_id}.`, "info");
          }) }),
        d.this_device ? null : el("button", { type: "button", class: "danger small", text: "Revoke", "aria-label": `Revoke device ${d.device_id}`,
          onclick: guarded(async () => {
            if (!confirm(`Revoke ${d.name || d.device_id}? It gets no further message. This cannot be undone.`)) return;
            await api("DELETE", `/api/devices/${d.device_id}`);
            toast("The device was revoked.", "info");
            await loadDevices();
          }) })));
  }));
}

// ---------------------------------------------------------------- account

async function changePassword() {
  await api("POST", "/api/account/password", { current: $("#pw-current").value, new: $("#pw-new").value });
  $("#password-form").reset();
  toast("Password changed. Your other devices log in with the new one.", "info");
}

async function changeEmail() {
  const data = await api("POST", "/api/account/email", { email: $("#email-new").value.trim(), password: $("#email-password").value });
  $("#email-form").reset();
  toast(`Your e-mail is now ${data.email}.`, "info");
}

async function deleteAccount() {
  const typed = $("#delete-confirm").value.trim();
  if (!confirm("Delete your account for good?")) return;
  const state = await api("POST", "/api/account/delete", { confirm: typed, password: $("#delete-password").value });
  $("#delete-form").reset();
  toast("Your account was deleted.", "info");
  applyState(state);
}

async function loadAccount() {
  const me = await api("GET", "/api/account");
  // Never over what the person is typing (this answer can come after they started).
  if (!$("#display-name").dataset.dirty) $("#display-name").value = me.display_name || "";
}

async function saveName() {
  const me = await api("PATCH", "/api/account", { display_name: $("#display-name").value });
  $("#display-name").value = me.display_name || "";
  delete $("#display-name").dataset.dirty;
  toast(me.display_name ? `Your contacts now see “${me.display_name}”.` : "Display name cleared.", "info");
}

const baseLoadSettings = loadSettings;
loadSettings = async function () {  // eslint-disable-line no-global-assign
  await baseLoadSettings();
  if (!ui.state || ui.state.phase !== "ready") return;
  await Promise.all([loadDevices(), loadBlocked(), loadAccount()]).catch((err) => toast(err.message));
};

// ---------------------------------------------------------------- verified can be undone

const baseRenderSafety = renderSafety;
renderSafety = function (data) {  // eslint-disable-line no-global-assign
  baseRenderSafety(data);
  $("#unverify-btn").hidden = !data.verified;
};

async function unverify() {
  const data = await api("POST", `/api/safety/${ui.safetyUser}/unverify`);
  renderSafety(data);
  toast(`${data.username} is no longer marked verified.`, "info");
  await refreshContacts();
}

// ---------------------------------------------------------------- notifications and the title

const ASKED = "peerpost.notifications.asked";

function unreadTotal() {
  return ui.contacts.contacts.reduce((n, c) => n + (c.unread || 0), 0);
}

function renderTitle() {
  const total = unreadTotal();
  document.title = total ? `(${total}) PeerPost` : "PeerPost";
}

// Display names beside the username (the username stays the one that identifies them).
function showDisplayNames() {
  for (const c of ui.contacts.contacts) {
    if (!c.display_name) continue;
    const who = document.querySelector(`#contact-groups button.person[data-user="${CSS.escape(c.username)}"] .who`);
    if (who) who.querySelector(".name").after(el("span", { class: "display-name", text: c.display_name }));
  }
}

const baseRenderConvHeader = renderConvHeader;
renderConvHeader = function () {  // eslint-disable-line no-global-assign
  baseRenderConvHeader();
  const c = contactById(ui.current);
  $("#conv-display").textContent = c && c.display_name ? c.display_name : "";
};

const baseRenderContacts = renderContacts;
renderContacts = function () {  // eslint-disable-line no-global-assign
  baseRenderContacts();
  showDisplayNames();
  renderTitle();
  offerNotifications();
};

// Asked once, politely: a line in the page the person answers, never a prompt on load.
function offerNotifications() {
  const can = "Notification" in window && Notification.permission === "default";
  $("#notify-ask").hidden = !(can && ui.state && ui.state.phase === "ready" && !localStorage.getItem(ASKED));
}

async function answerNotifications(yes) {
  localStorage.setItem(ASKED, yes ? "yes" : "no");
  $("#notify-ask").hidden = true;
  if (yes && "Notification" in window) await Notification.requestPermission();
}

function notify(ev) {
  if (!document.hidden || !("Notification" in window) || Notification.permission !== "granted") return;
  const m = ev.message;
  if (!m || m.direction !== "in" || !m.unread) return;
  const c = contactById(ev.user_id);
  const who = m.sender || (c ? c.username : "Someone");  // a group message names its sender
  const body = m.kind === "file" ? `File: ${m.file ? m.file.name : "file"}` : (m.text || "").slice(0, 140);
  const note = new Notification(`${who} — PeerPost`, { body, tag: `peerpost-${convKey(ev)}`, silent: false });
  note.onclick = () => { window.focus(); openConversation(convKey(ev)); note.close(); };
}

// A healed session (issue 14) is a line in that conversation's timeline, kept until the page
// reloads (loadHistory keeps live entries it does not know).
let sessionNotices = 0;
function sessionNotice(userId, text) {
  const m = { id: `session-${++sessionNotices}-${Date.now()}`, kind: "system", text, sent_at_ms: Date.now() };
  upsertMessage(userId, m, true);
}

const seenLive = new Set();
const baseHandleEvent = handleEvent;
handleEvent = function (ev) {  // eslint-disable-line no-global-assign
  if (ev.type === "message" && ev.message && ev.message.kind === "timer" && ev.user_id === ui.current) {
    loadTimer(ev.user_id).catch(() => {});
  }
  if (ev.type === "message" && ev.message && ev.message.kind !== "timer" && !seenLive.has(ev.message.id)) {
    seenLive.add(ev.message.id);
    notify(ev);
  } else if (ev.type === "message_removed") {
    removeMessage(convKey(ev), ev.id);
  } else if (ev.type === "notice") {
    toast(ev.text, "info");
  } else if (ev.type === "session_reestablished") {
    sessionNotice(ev.user_id, ev.text);
  }
  baseHandleEvent(ev);
  if (ev.type === "unread" || ev.type === "message") renderTitle();
};

// ---------------------------------------------------------------- search my history (served by the peer)

async function searchMessages() {
  const q = $("#msg-search-input").value.trim();
  const list = $("#msg-search-results");
  if (!q) { list.replaceChildren(); return; }
  const rows = await api("GET", `/api/messages/search?q=${encodeURIComponent(q)}`);
  list.replaceChildren(...(rows.length ? rows.map((m) =>
    el("li", {},
      el("button", { type: "button", class: "found", "data-id": m.id,
        onclick: () => { list.replaceChildren(); $("#msg-search-input").value = ""; openConversation(convKey(m)); } },
      el("span", { class: "name", text: m.group_id ? `${m.direction === "out" ? "You" : m.sender} in ${m.username}`
        : m.direction === "out" ? `You to ${m.username}` : m.username }),
      el("span", { class: "sub", text: m.kind === "file" ? `File: ${m.file ? m.file.name : ""}` : m.text || "" }))))
    : [el("li", { class: "muted small empty", text: `No message contains “${q}”.` })]));
}

// ---------------------------------------------------------------- wiring

function wireDaily() {
  $("#block-btn").addEventListener("click", guarded(blockCurrent, $("#block-btn")));
  $("#msg-search-form").addEventListener("submit", guarded(searchMessages));
  $("#timer-select").addEventListener("change", guarded(setTimer));
  $("#edit-save").addEventListener("click", guarded(saveEdit, $("#edit-save")));
  $("#delete-everyone").addEventListener("click", guarded(() => deleteMessage(true), $("#delete-everyone")));
  $("#delete-me").addEventListener("click", guarded(() => deleteMessage(false), $("#delete-me")));
  $("#name-form").addEventListener("submit", guarded(saveName, $("#name-save")));
  $("#display-name").addEventListener("input", () => { $("#display-name").dataset.dirty = "1"; });
  $("#password-form").addEventListener("submit", guarded(changePassword, $("#pw-save")));
  $("#email-form").addEventListener("submit", guarded(changeEmail, $("#email-save")));
  $("#delete-form").addEventListener("submit", guarded(deleteAccount, $("#delete-account-btn")));
  $("#unverify-btn").addEventListener("click", guarded(unverify, $("#unverify-btn")));
  $("#notify-yes").addEventListener("click", guarded(() => answerNotifications(true)));
  $("#notify-no").addEventListener("click", guarded(() => answerNotifications(false)));
}

wireDaily();
