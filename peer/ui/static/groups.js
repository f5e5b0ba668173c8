// PeerPost UI: groups (issue 13). Loaded after app.js and daily.js, whose globals it uses (ui, api,
// el, $, toast, guarded, convKey, convPath, ...). A group's conversation is keyed "g:<group id>" in
// ui.current and ui.messages and uses the same message, file, typing and read calls as a contact's
// (under /api/groups/<id>/); this file adds the group list, the new-group and members dialogs,
// sender names, receipt rollups ("read by 2 of 5") and the "you are out" state. The page holds no
// group state of its own: it reads the list again whenever the peer says membership changed.
"use strict";

ui.groups = [];        // GET /api/groups: every group this device knows, most recent first
ui.groupInfo = null;   // {group, members} of the open group

const isGroup = (key) => typeof key === "string" && key.startsWith("g:");
const groupById = (id) => ui.groups.find((g) => g.group_id === id);
const currentGroup = () => (isGroup(ui.current) ? groupById(ui.current.slice(2)) : undefined);

// ---------------------------------------------------------------- the group list

async function refreshGroups() {
  if (!ui.state || ui.state.phase !== "ready") return;
  try {
    ui.groups = await api("GET", "/api/groups");
  } catch (err) {
    toast(err.message);
    return;
  }
  renderGroups();
  if (isGroup(ui.current)) renderConvHeader();
}

function groupSub(g) {
  if (!g.active) return "you are not a member";
  return `${g.members} member${g.members === 1 ? "" : "s"}${g.role === "admin" ? " · admin" : ""}`;
}

function renderGroups() {
  $("#no-groups").hidden = ui.groups.length > 0;
  $("#group-list").replaceChildren(...ui.groups.map((g) => {
    const key = `g:${g.group_id}`;
    const unread = ui.current === key && !document.hidden ? 0 : g.unread || 0;
    const last = g.last ? `${g.last.direction === "out" ? "You: " : ""}${g.last.text}` : null;
    const face = avatar(g.name);
    face.classList.add("group");
    return el("li", {},
      el("button", {
        type: "button", class: "person", "data-group": g.name, "data-group-id": g.group_id,
        "aria-current": String(ui.current === key), "aria-label": `Group ${g.name}`,
        onclick: () => openConversation(key),
      },
      face,
      el("span", { class: "who" },
        el("span", { class: "name", text: g.name }),
        el("span", { class: "sub", text: groupSub(g) }),
        last ? el("span", { class: "last", text: last }) : null),
      unread ? el("span", { class: "badge unread", text: String(unread) }) : null));
  }));
}

const baseRefreshContacts = refreshContacts;
refreshContacts = async function () {  // eslint-disable-line no-global-assign
  await Promise.all([baseRefreshContacts(), refreshGroups()]);
};

// The contact list re-renders when the open conversation changes: the group list follows.
const groupBaseRenderContacts = renderContacts;
renderContacts = function () {  // eslint-disable-line no-global-assign
  groupBaseRenderContacts();
  renderGroups();
};

const baseApplySummary = applySummary;
applySummary = function (key, summary) {  // eslint-disable-line no-global-assign
  if (!isGroup(key)) return baseApplySummary(key, summary);
  const g = groupById(key.slice(2));
  if (!g) {
    refreshGroups();  // a group this window has not listed yet (made on another device)
    return;
  }
  if (summary.unread !== undefined) g.unread = summary.unread;
  if (summary.last) {
    g.last = summary.last;
    g.last_at_ms = Math.max(g.last_at_ms || 0, summary.last_at_ms || 0);
    ui.groups.sort((a, b) => (b.last_at_ms || 0) - (a.last_at_ms || 0) || a.name.localeCompare(b.name));
  }
  renderGroups();
};

const baseUnreadTotal = unreadTotal;
unreadTotal = function () {  // eslint-disable-line no-global-assign
  return baseUnreadTotal() + ui.groups.reduce((n, g) => n + (g.unread || 0), 0);
};

// ---------------------------------------------------------------- the open group

const CONTACT_ONLY = ["#safety-btn", "#edit-contact-btn", "#block-btn", ".conv-head .timer"];

const groupBaseRenderConvHeader = renderConvHeader;
renderConvHeader = function () {  // eslint-disable-line no-global-assign
  const group = isGroup(ui.current);
  for (const sel of CONTACT_ONLY) $(sel).hidden = group;
  $("#group-btn").hidden = !group;
  if (!group) {
    $("#group-out").hidden = true;
    setComposer(true);
    return groupBaseRenderConvHeader();
  }
  const g = currentGroup();
  if (!g) return undefined;
  $("#conv-name").textContent = g.name;
  $("#conv-display").textContent = "";
  const info = ui.groupInfo && ui.groupInfo.group.group_id === g.group_id ? ui.groupInfo : null;
  // Out of a group, this device no longer learns who is in it: its last list would mislead.
  const names = info && g.active ? info.members.map((m) => (m.is_me ? "you" : m.username)).join(", ") : groupSub(g);
  $("#conv-status").textContent = names;
  $("#group-out").hidden = g.active;
  $("#group-out").textContent = g.active ? "" : "You are no longer a member of this group. You can read what was said, but not write to it.";
  setComposer(g.active);
  return undefined;
};

function setComposer(enabled) {
  for (const sel of ["#message-input", "#send-btn", "#file-input"]) $(sel).disabled = !enabled;
  $("#message-input").placeholder = enabled ? "Write a message" : "You are not in this group";
}

async function loadGroupInfo(groupId) {
  const info = await api("GET", `/api/groups/${groupId}`);
  const i = ui.groups.findIndex((g) => g.group_id === groupId);
  if (i >= 0) ui.groups[i] = { ...ui.groups[i], ...info.group };
  if (ui.current !== `g:${groupId}`) return;
  ui.groupInfo = info;
  renderConvHeader();
  renderMessages();  // sender names may have been learnt
  if ($("#group-dialog").open) renderGroupDialog();
}

const baseOpenConv = openConversation;
openConversation = async function (key) {  // eslint-disable-line no-global-assign
  if (!isGroup(key)) ui.groupInfo = null;
  const opened = baseOpenConv(key);
  if (isGroup(key)) await loadGroupInfo(key.slice(2)).catch((err) => toast(err.message));
  return opened;
};

// ---------------------------------------------------------------- messages: sender names, rollups, timeline

function rollupText(r) {
  const n = r.recipients;
  if (r.read >= n) return `read by ${n} of ${n}`;
  const parts = [`delivered to ${r.delivered} of ${n}`];
  if (r.read) parts.push(`read by ${r.read} of ${n}`);
  return parts.join(" · ");
}

const groupBaseMessageNode = messageNode;
messageNode = function (m) {  // eslint-disable-line no-global-assign
  if (m.kind === "group_event") return groupBaseMessageNode({ ...m, kind: "system" });
  const node = groupBaseMessageNode(m);
  if (m.sender_user === undefined || m.kind === "system") return node;
  if (m.direction === "in") node.prepend(el("span", { class: "sender", text: m.sender }));
  if (m.rollup) {
    node.querySelector(".meta").append(el("span", { class: "rollup", "data-read": String(m.rollup.read),
      "data-delivered": String(m.rollup.delivered), text: rollupText(m.rollup) }));
  }
  return node;
};

// Receipts from several devices race the answer to "send": a rollup only ever grows.
const baseUpsertMessage = upsertMessage;
upsertMessage = function (key, message, live) {  // eslint-disable-line no-global-assign
  const old = (ui.messages.get(key) || new Map()).get(message.id);
  if (old && old.rollup && message.rollup) {
    message.rollup.delivered = Math.max(old.rollup.delivered, message.rollup.delivered);
    message.rollup.read = Math.max(old.rollup.read, message.rollup.read);
  }
  return baseUpsertMessage(key, message, live);
};

// ---------------------------------------------------------------- new group

function openNewGroup() {
  $("#new-group-name").value = "";
  const contacts = [...ui.contacts.contacts].sort((a, b) => a.username.localeCompare(b.username));
  $("#new-group-contacts").replaceChildren(...(contacts.length ? contacts.map((c) =>
    el("li", {}, el("label", {},
      el("input", { type: "checkbox", value: String(c.user_id), "aria-label": `Add ${c.username} to the group` }),
      avatar(c.username), el("span", { text: c.username }))))
    : [el("li", { class: "muted small empty", text: "Add contacts first: a group is made from them." })]));
  $("#new-group-dialog").showModal();
  $("#new-group-name").focus();
}

async function createGroup() {
  const name = $("#new-group-name").value.trim();
  if (!name) throw new ApiError("Give the group a name.");
  const members = [...document.querySelectorAll("#new-group-contacts input:checked")].map((i) => Number(i.value));
  if (!members.length) throw new ApiError("Pick at least one contact for the group.");
  const group = await api("POST", "/api/groups", { name, members });
  $("#new-group-dialog").close();
  await refreshGroups();
  await openConversation(`g:${group.group_id}`);
}

// ---------------------------------------------------------------- members, rename, leave

async function openGroupDialog() {
  const g = currentGroup();
  if (!g) return;
  await loadGroupInfo(g.group_id);
  renderGroupDialog();
  $("#group-dialog").showModal();
}

function renderGroupDialog() {
  const g = currentGroup();
  const info = ui.groupInfo;
  if (!g || !info) return;
  const admin = g.active && g.role === "admin";
  $("#group-title").textContent = g.name;
  $("#group-rename").value = g.name;
  $("#group-rename-row").hidden = !admin;
  $("#group-add-row").hidden = !admin;
  $("#group-leave").hidden = !g.active;
  const inGroup = new Set(info.members.map((m) => m.user_id));
  const addable = ui.contacts.contacts.filter((c) => !inGroup.has(c.user_id));
  $("#group-add-select").replaceChildren(...(addable.length
    ? addable.map((c) => el("option", { value: String(c.user_id), text: c.username }))
    : [el("option", { value: "", text: "All your contacts are in it" })]));
  $("#group-add-btn").disabled = addable.length === 0;
  if (!g.active) {  // the last list this device verified is no longer news about the group
    $("#group-members").replaceChildren(el("li", { class: "muted small empty", text: "You are no longer a member, so this device no longer learns who is." }));
    return;
  }
  $("#group-members").replaceChildren(...info.members.map((m) =>
    el("li", { class: "member", "data-user": m.username },
      avatar(m.username),
      el("span", { class: "who" },
        el("span", { class: "name", text: m.is_me ? `${m.username} (you)` : m.username }),
        m.display_name ? el("span", { class: "sub", text: m.display_name }) : null),
      m.role === "admin" ? el("span", { class: "badge admin", text: "admin" }) : null,
      admin && !m.is_me ? el("div", { class: "actions" },
        m.role !== "admin" ? el("button", { type: "button", class: "secondary small", text: "Make admin",
          "aria-label": `Make ${m.username} an admin`, onclick: guarded(() => memberAction("POST", m, "/promote")) }) : null,
        el("button", { type: "button", class: "danger small", text: "Remove", "aria-label": `Remove ${m.username}`,
          onclick: guarded(() => memberAction("DELETE", m, "")) })) : null)));
}

async function memberAction(method, member, suffix) {
  const g = currentGroup();
  if (method === "DELETE" && !confirm(`Remove ${member.username} from ${g.name}? They get nothing said after this.`)) return;
  await api(method, `/api/groups/${g.group_id}/members/${member.user_id}${suffix}`);
  await afterChange(g.group_id);
}

async function addMember() {
  const g = currentGroup();
  const userId = Number($("#group-add-select").value);
  if (!userId) return;
  await api("POST", `/api/groups/${g.group_id}/members`, { user_ids: [userId] });
  await afterChange(g.group_id);
}

async function renameGroup() {
  const g = currentGroup();
  const name = $("#group-rename").value.trim();
  if (!name || name === g.name) return;
  await api("PATCH", `/api/groups/${g.group_id}`, { name });
  await afterChange(g.group_id);
}

async function leaveGroup() {
  const g = currentGroup();
  if (!confirm(`Leave ${g.name}? You get nothing said after this, unless an admin adds you again.`)) return;
  await api("POST", `/api/groups/${g.group_id}/leave`);
  $("#group-dialog").close();
  await afterChange(g.group_id);
}

// After a change made here: the list, the open group and its timeline (which shows the change).
async function afterChange(groupId) {
  await refreshGroups();
  if (ui.current === `g:${groupId}`) {
    await loadGroupInfo(groupId);
    await loadHistory(ui.current);
  }
}

// ---------------------------------------------------------------- events

const YOU_WERE = { created: "added to", added: "added to", removed: "removed from", promoted: "made an admin of" };

const groupBaseHandleEvent = handleEvent;
handleEvent = function (ev) {  // eslint-disable-line no-global-assign
  if (ev.type === "groups_changed") {
    refreshGroups();
    return;
  }
  if (ev.type === "group_changed") {
    groupChanged(ev).catch((err) => toast(err.message));
    return;
  }
  groupBaseHandleEvent(ev);
};

async function groupChanged(ev) {
  const me = ui.state && ui.state.me ? ui.state.me.user_id : null;
  const aboutMe = (ev.users || []).includes(me) && ev.actor !== me;
  if (aboutMe && YOU_WERE[ev.change]) toast(`You were ${YOU_WERE[ev.change]} ${ev.name}.`, "info");
  await refreshGroups();
  if (ui.current === `g:${ev.group_id}`) {
    await loadGroupInfo(ev.group_id).catch(() => {});
    await loadHistory(ui.current);
  }
}

function wireGroups() {
  $("#new-group-btn").addEventListener("click", openNewGroup);
  $("#new-group-form").addEventListener("submit", guarded(createGroup, $("#new-group-create")));
  $("#new-group-cancel").addEventListener("click", () => $("#new-group-dialog").close());
  $("#group-btn").addEventListener("click", guarded(openGroupDialog, $("#group-btn")));
  $("#group-rename-save").addEventListener("click", guarded(renameGroup, $("#group-rename-save")));
  $("#group-add-btn").addEventListener("click", guarded(addMember, $("#group-add-btn")));
  $("#group-leave").addEventListener("click", guarded(leaveGroup, $("#group-leave")));
  $("#group-rename").addEventListener("keydown", (e) => { if (e.key === "Enter") { e.preventDefault(); guarded(renameGroup)(); } });
}

wireGroups();
