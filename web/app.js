// Switchboard calling page: sign in with a name, pick someone, call them with audio and video; or join a group
// call by id (a grid of participant tiles, screen sharing). Uses only the web SDK (/sdk/calling.js) and the demo
// endpoints (/demo/signin, /demo/users).
import { CallClient } from "/sdk/calling.js";

const USERS_REFRESH_MS = 3000;

/** @param {string} id */
const $ = (id) => /** @type {HTMLElement} */ (document.getElementById(id));

/** Page state, exposed on window for debugging and tests. */
const app = {
  /** @type {import("/sdk/calling.js").CallAgent|null} */
  agent: null,
  /** @type {{name: string, communicationUserId: string, token: string, expiresOn: string}|null} */
  me: null,
  /** @type {import("/sdk/calling.js").Call|null} */
  call: null,
  /** Name of the other person in the current/last call ("the group" in group calls). */
  peerName: "",
  /** Group id of the current group call. */
  groupId: "",
  /** @type {import("/sdk/calling.js").IncomingCall[]} */
  incoming: [],
  /** @type {{name: string, communicationUserId: string, online: boolean}[]} */
  users: [],
  usersTimer: 0,
};
window.switchboardApp = app;

// ---------- helpers ----------

/**
 * @param {HTMLElement} el
 * @param {string} text "" hides the element
 */
function showMessage(el, text) {
  el.textContent = text;
  el.hidden = !text;
}

/** @param {unknown} e */
function errorText(e) {
  if (e && typeof e === "object" && "message" in e) {
    const code = /** @type {any} */ (e).code;
    return code !== undefined && code !== "" ? `${e.message} (${code})` : String(e.message);
  }
  return String(e);
}

/**
 * Fetches JSON; rejects with an Error carrying the server's `{error:{code,message}}` when the status is not 2xx.
 * @param {string} url
 * @param {RequestInit} [init]
 */
async function fetchJson(url, init) {
  const res = await fetch(url, { ...init, headers: { Accept: "application/json", ...(init?.headers || {}) } });
  let body = null;
  try {
    body = await res.json();
  } catch {
    body = null;
  }
  if (!res.ok) {
    const err = new Error(body?.error?.message || `${res.status} ${res.statusText}`);
    /** @type {any} */ (err).code = body?.error?.code || res.status;
    throw err;
  }
  return body;
}

/** Human text for a call end reason. */
function describeEnd(reason, peer) {
  const who = peer || "The other person";
  if (!reason) return "The call ended.";
  const { code, subcode } = reason;
  let text;
  if (code === 0 && subcode === 5001) text = "The organizer ended the call for everyone.";
  else if (code === 0 && subcode === 5010) text = `Connection to ${peer || "the other person"} was lost.`;
  else if (code === 0) text = "The call ended.";
  else if (code === 480) text = `${who} is not available right now.`;
  else if (code === 603) text = `${who} declined the call.`;
  else if (code === 487) text = "The call was cancelled before it was answered.";
  else if (code === 486) text = `${who} is busy.`;
  else if (code === 408) text = `${who} did not answer.`;
  else if (code === 404) text = "No such person.";
  else if (code === 403) text = "Not allowed to make this call.";
  else text = reason.message ? `The call ended: ${reason.message}.` : "The call ended.";
  return `${text} (code ${code}${subcode ? `/${subcode}` : ""})`;
}

function nameOf(communicationUserId) {
  const user = app.users.find((u) => u.communicationUserId === communicationUserId);
  return user ? user.name : "";
}

// ---------- sign in ----------

async function signIn(event) {
  event.preventDefault();
  const input = /** @type {HTMLInputElement} */ ($("name"));
  const name = input.value.trim();
  showMessage($("signin-error"), "");
  if (!name) {
    showMessage($("signin-error"), "Please type your name.");
    input.focus();
    return;
  }
  const button = /** @type {HTMLButtonElement} */ ($("signin"));
  button.disabled = true;
  button.textContent = "Signing in…";
  try {
    const me = await fetchJson("/demo/signin", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ name }),
    });
    const agent = await new CallClient().createCallAgent(me.token, { displayName: me.name || name });
    app.me = me;
    app.agent = agent;
    try {
      localStorage.setItem("switchboard.name", name);
    } catch {}
    wireAgent(agent);
    showSignedIn();
  } catch (e) {
    showMessage($("signin-error"), `Could not sign in: ${errorText(e)}`);
  } finally {
    button.disabled = false;
    button.textContent = "Sign in";
  }
}

function showSignedIn() {
  $("signin-panel").hidden = true;
  $("me-panel").hidden = false;
  $("people-panel").hidden = false;
  $("group-panel").hidden = false;
  $("whoami").hidden = false;
  $("my-name").textContent = app.me.name;
  $("my-id").textContent = app.me.communicationUserId;
  document.title = `Switchboard — ${app.me.name}`;
  refreshUsers();
  clearInterval(app.usersTimer);
  app.usersTimer = window.setInterval(refreshUsers, USERS_REFRESH_MS);
  renderCall();
  /** @type {HTMLInputElement} */ ($("callee")).focus();
}

function showSignedOut(reasonText) {
  clearInterval(app.usersTimer);
  app.agent = null;
  app.incoming = [];
  renderIncoming();
  $("signin-panel").hidden = false;
  $("me-panel").hidden = true;
  $("people-panel").hidden = true;
  $("group-panel").hidden = true;
  $("whoami").hidden = true;
  document.title = "Switchboard — calls";
  if (reasonText) showMessage($("signin-error"), reasonText);
  renderCall();
}

/** @param {import("/sdk/calling.js").CallAgent} agent */
function wireAgent(agent) {
  agent.on("incomingCall", ({ incomingCall }) => {
    app.incoming.push(incomingCall);
    incomingCall.on("callEnded", ({ callEndReason }) => {
      const wasShown = app.incoming[0] === incomingCall;
      app.incoming = app.incoming.filter((c) => c !== incomingCall);
      renderIncoming();
      if (wasShown && callEndReason.code !== 603 && !(callEndReason.code === 0 && callEndReason.subcode === 5003) && !app.call) {
        const who = incomingCall.callerInfo.displayName || "someone";
        setStateText("Disconnected", `missed call from ${who}`);
      }
    });
    renderIncoming();
  });
  agent.on("connectionStateChanged", ({ newValue, reason }) => {
    if (newValue === "Disconnected" && app.agent === agent) {
      const why = reason && reason.code === 4401 ? "your sign-in expired or was revoked" : `connection closed (${reason ? reason.code : "?"})`;
      showSignedOut(`Signed out: ${why}. Sign in again to make calls.`);
    }
  });
}

// ---------- people ----------

async function refreshUsers() {
  if (!app.me) return;
  try {
    const body = await fetchJson("/demo/users");
    app.users = Array.isArray(body?.users) ? body.users : [];
    renderUsers();
  } catch (e) {
    console.warn("cannot load the people list:", errorText(e));
  }
}

function renderUsers() {
  const list = $("people");
  const mine = app.me ? app.me.communicationUserId : "";
  const others = app.users.filter((u) => u.communicationUserId !== mine);
  others.sort((a, b) => Number(b.online) - Number(a.online) || a.name.localeCompare(b.name));
  const selected = /** @type {HTMLInputElement} */ ($("callee")).value.trim();
  list.replaceChildren(
    ...others.map((user) => {
      const li = document.createElement("li");
      const button = document.createElement("button");
      button.type = "button";
      button.className = "person";
      button.dataset.id = user.communicationUserId;
      button.dataset.name = user.name;
      button.setAttribute("aria-pressed", String(selected === user.communicationUserId));
      button.title = user.communicationUserId;
      const name = document.createElement("span");
      name.className = "person-name";
      name.textContent = user.name;
      const presence = document.createElement("span");
      presence.className = `presence${user.online ? " online" : ""}`;
      presence.textContent = user.online ? "online" : "offline";
      button.append(name, presence);
      button.setAttribute("aria-label", `Pick ${user.name} (${user.online ? "online" : "offline"})`);
      button.addEventListener("click", () => {
        /** @type {HTMLInputElement} */ ($("callee")).value = user.communicationUserId;
        showMessage($("call-error"), "");
        renderUsers();
        $("call").focus();
      });
      li.append(button);
      return li;
    }),
  );
  $("people-empty").hidden = others.length > 0;
}

/** Turns what was typed into an id: an id as is, else a unique name from the list. */
function resolveCallee(text) {
  if (text.includes(":")) return { id: text, name: nameOf(text) };
  const matches = app.users.filter((u) => u.name.toLowerCase() === text.toLowerCase() && u.communicationUserId !== app.me?.communicationUserId);
  if (matches.length === 1) return { id: matches[0].communicationUserId, name: matches[0].name };
  if (matches.length > 1) throw new Error(`Several people are named "${text}": pick one from the list.`);
  throw new Error(`No one named "${text}" is signed in. Paste their id instead.`);
}

// ---------- calls ----------

function startCall(event) {
  event.preventDefault();
  showMessage($("call-error"), "");
  if (!app.agent) return;
  if (app.call) {
    showMessage($("call-error"), "Hang up the current call first.");
    return;
  }
  const text = /** @type {HTMLInputElement} */ ($("callee")).value.trim();
  if (!text) {
    showMessage($("call-error"), "Pick someone from the list or paste their id.");
    $("callee").focus();
    return;
  }
  let target;
  try {
    target = resolveCallee(text);
  } catch (e) {
    showMessage($("call-error"), errorText(e));
    return;
  }
  try {
    const call = app.agent.startCall([{ communicationUserId: target.id }], { audio: true, video: true });
    attachCall(call, target.name || "them");
  } catch (e) {
    showMessage($("call-error"), `Could not call: ${errorText(e)}`);
  }
}

async function acceptIncoming() {
  const incoming = app.incoming[0];
  if (!incoming) return;
  app.incoming.shift();
  renderIncoming();
  if (app.call) await app.call.hangUp().catch(() => {});
  const name = incoming.callerInfo.displayName || nameOf(incoming.callerInfo.identifier.communicationUserId) || "the caller";
  try {
    const call = await incoming.accept({ audio: true, video: true });
    attachCall(call, name);
  } catch (e) {
    setStateText("Disconnected", `could not answer: ${errorText(e)}`);
  }
}

async function declineIncoming() {
  const incoming = app.incoming[0];
  if (!incoming) return;
  app.incoming.shift();
  renderIncoming();
  try {
    await incoming.reject();
  } catch (e) {
    console.warn("decline failed:", errorText(e));
  }
}

// ---------- group calls ----------

const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/** A random UUID v4 (crypto.randomUUID needs a secure context; getRandomValues does not). */
function newUuid() {
  if (typeof crypto.randomUUID === "function" && window.isSecureContext) return crypto.randomUUID();
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const hex = [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

function newGroupId() {
  const input = /** @type {HTMLInputElement} */ ($("group-id"));
  input.value = newUuid();
  showMessage($("group-error"), "");
  $("join").focus();
}

function joinGroup(event) {
  event.preventDefault();
  showMessage($("group-error"), "");
  if (!app.agent) return;
  if (app.call) {
    showMessage($("group-error"), "Leave the current call first.");
    return;
  }
  const input = /** @type {HTMLInputElement} */ ($("group-id"));
  const groupId = input.value.trim();
  if (!UUID_RE.test(groupId)) {
    showMessage($("group-error"), groupId ? "A group id is a UUID (press New id to make one)." : "Type the group id you were given, or press New id.");
    input.focus();
    return;
  }
  try {
    const call = app.agent.join({ groupId }, { audio: true, video: true });
    app.groupId = groupId;
    try {
      const url = new URL(location.href);
      url.searchParams.set("group", groupId);
      history.replaceState(null, "", url);
    } catch {}
    attachCall(call, "the group");
  } catch (e) {
    showMessage($("group-error"), `Could not join: ${errorText(e)}`);
  }
}

function renderIncoming() {
  const incoming = app.incoming[0];
  $("incoming").hidden = !incoming;
  if (!incoming) {
    document.title = app.me ? `Switchboard — ${app.me.name}` : "Switchboard — calls";
    return;
  }
  const who = incoming.callerInfo.displayName || nameOf(incoming.callerInfo.identifier.communicationUserId) || incoming.callerInfo.identifier.communicationUserId;
  $("incoming-text").textContent = `${who} is calling you${incoming.isVideoCall ? " (video call)" : ""}`;
  document.title = `Incoming call — ${who}`;
  $("accept").focus();
}

/**
 * Shows a call on the page and follows its events.
 * @param {import("/sdk/calling.js").Call} call
 * @param {string} peerName
 */
function attachCall(call, peerName) {
  app.call = call;
  app.peerName = peerName;
  showMessage($("end-reason"), "");
  call.on("stateChanged", () => {
    if (app.call !== call) return;
    renderCall();
    if (call.state === "Disconnected") detachCall(call);
  });
  call.on("isMutedChanged", renderControls);
  call.on("isLocalVideoStartedChanged", renderLocalVideo);
  call.on("localVideoStreamsUpdated", renderLocalVideo);
  call.on("remoteParticipantsUpdated", ({ added }) => {
    added.forEach(watchParticipant);
    renderCall();
  });
  call.on("isScreenSharingOnChanged", renderControls);
  call.on("dominantSpeakersChanged", renderMedia);
  call.on("error", ({ code, message }) => {
    if (app.call === call) showMessage($("end-reason"), `${message} (${code})`);
  });
  call.remoteParticipants.forEach(watchParticipant);
  renderCall();
  renderLocalVideo();
}

/** @param {import("/sdk/calling.js").RemoteParticipant} participant */
function watchParticipant(participant) {
  const update = () => renderMedia();
  participant.on("videoStreamsUpdated", ({ added }) => {
    added.forEach((stream) => stream.on("isAvailableChanged", update));
    update();
  });
  participant.videoStreams.forEach((stream) => stream.on("isAvailableChanged", update));
  participant.on("isMutedChanged", update);
  participant.on("isSpeakingChanged", update);
  participant.on("displayNameChanged", () => {
    if (participant.displayName && !app.call?.isGroupCall) app.peerName = participant.displayName;
    renderCall();
  });
  participant.on("stateChanged", update);
  if (participant.displayName && !app.call?.isGroupCall) app.peerName = participant.displayName;
  update();
}

/** @param {import("/sdk/calling.js").Call} call */
function detachCall(call) {
  if (app.call !== call) return;
  app.call = null;
  const remote = /** @type {HTMLVideoElement} */ ($("remote-video"));
  const local = /** @type {HTMLVideoElement} */ ($("local-video"));
  remote.srcObject = null;
  local.srcObject = null;
  $("grid").replaceChildren();
  $("grid").hidden = true;
  $("call-panel").classList.remove("group");
  renderControls();
  $("remote-placeholder").hidden = false;
  $("remote-label").textContent = "Remote video";
  showMessage($("end-reason"), describeEnd(call.callEndReason, app.peerName));
  setStateText("Disconnected", call.isGroupCall ? "left the group call" : `call with ${app.peerName} ended`);
}

function setStateText(state, text) {
  const el = $("state");
  el.dataset.state = state;
  el.textContent = text ? `${state} — ${text}` : state;
}

function renderCall() {
  const call = app.call;
  if (call) {
    const peer = app.peerName;
    const texts = {
      None: `calling ${peer}`,
      Connecting: call.direction === "Incoming" ? `joining ${peer}'s call` : `calling ${peer}`,
      Ringing: `waiting for ${peer} to answer`,
      EarlyMedia: `waiting for ${peer} to answer`,
      Connected: `in a call with ${peer}`,
      LocalHold: `on hold`,
      RemoteHold: `${peer} put the call on hold`,
      InLobby: "waiting in the lobby",
      Disconnecting: "hanging up",
      Disconnected: `call with ${peer} ended`,
    };
    if (call.isGroupCall) {
      const others = call.remoteParticipants.length;
      Object.assign(texts, {
        Connecting: "joining the group call",
        Connected: others ? `in a group call with ${others} other${others === 1 ? "" : "s"}` : "in a group call (no one else yet)",
        Disconnected: "left the group call",
      });
    }
    setStateText(call.state, texts[call.state] || "");
    $("call-panel").classList.toggle("group", call.isGroupCall);
    $("grid").hidden = !call.isGroupCall;
    renderMedia();
  }
  /** @type {HTMLButtonElement} */ ($("call")).disabled = !app.agent || Boolean(call);
  renderControls();
}

function renderControls() {
  const call = app.call;
  const active = Boolean(call) && call.state !== "Disconnected" && call.state !== "Disconnecting";
  const mute = /** @type {HTMLButtonElement} */ ($("mute"));
  const camera = /** @type {HTMLButtonElement} */ ($("camera"));
  const hangup = /** @type {HTMLButtonElement} */ ($("hangup"));
  const group = Boolean(call && call.isGroupCall);
  mute.disabled = !active;
  camera.disabled = !active;
  hangup.disabled = !active;
  hangup.hidden = group;
  const leave = /** @type {HTMLButtonElement} */ ($("leave"));
  const endForAll = /** @type {HTMLButtonElement} */ ($("end-for-all"));
  leave.hidden = !group;
  endForAll.hidden = !group;
  leave.disabled = !active;
  endForAll.disabled = !active;
  const share = /** @type {HTMLButtonElement} */ ($("share-screen"));
  const sharing = Boolean(call && call.isScreenSharingOn);
  share.disabled = !active || !navigator.mediaDevices?.getDisplayMedia;
  share.textContent = sharing ? "Stop sharing" : "Share screen";
  share.setAttribute("aria-pressed", String(sharing));
  /** @type {HTMLButtonElement} */ ($("join")).disabled = !app.agent || Boolean(call);
  const muted = Boolean(call && call.isMuted);
  mute.textContent = muted ? "Unmute" : "Mute";
  mute.setAttribute("aria-pressed", String(muted));
  const videoOn = Boolean(call && call.isLocalVideoStarted);
  camera.textContent = videoOn ? "Camera off" : "Camera on";
  camera.setAttribute("aria-pressed", String(videoOn));
  /** @type {HTMLButtonElement} */ ($("call")).disabled = !app.agent || Boolean(call);
}

function renderLocalVideo() {
  const call = app.call;
  const local = /** @type {HTMLVideoElement} */ ($("local-video"));
  const track = call ? call.localMediaStream.getVideoTracks()[0] : null;
  const current = local.srcObject instanceof MediaStream ? local.srcObject.getVideoTracks()[0] : null;
  if (track !== current) local.srcObject = track ? new MediaStream([track]) : null;
  renderControls();
}

function renderMedia() {
  if (app.call?.isGroupCall) renderGrid();
  else renderRemote();
}

/** Remote video streams the grid already follows. */
const watchedStreams = new WeakSet();

/**
 * The group call grid: one tile per participant (camera video, or a placeholder while it is off) and a larger
 * tile per screen share, each labelled with the name and a speaking indicator. Tiles are kept across renders
 * (keyed by participant and stream) so playing videos are not restarted.
 */
function renderGrid() {
  const call = app.call;
  const grid = $("grid");
  if (!call) return;
  const dominant = call.dominantSpeakers?.speakersList?.[0]?.communicationUserId || "";
  /** @type {Map<string, HTMLElement>} */
  const existing = new Map([...grid.children].map((el) => [/** @type {HTMLElement} */ (el).dataset.key, /** @type {HTMLElement} */ (el)]));
  const wanted = [];
  for (const p of call.remoteParticipants) {
    const userId = p.identifier.communicationUserId;
    const name = p.displayName || nameOf(userId) || "Someone";
    for (const stream of p.videoStreams.filter((s) => s.mediaStreamType === "ScreenSharing")) {
      wanted.push({ key: `${userId}|screen|${stream.id}`, userId, kind: "screen", stream, label: `${name}'s screen`, p });
    }
  }
  for (const p of call.remoteParticipants) {
    const userId = p.identifier.communicationUserId;
    const name = p.displayName || nameOf(userId) || "Someone";
    const stream = p.videoStreams.find((s) => s.mediaStreamType === "Video") || null;
    wanted.push({ key: `${userId}|camera`, userId, kind: "camera", stream, label: name + (p.isMuted ? " (muted)" : ""), p });
  }
  const tiles = wanted.map((w) => {
    let tile = existing.get(w.key);
    existing.delete(w.key);
    if (!tile) tile = makeTile(w.key, w.userId, w.kind);
    const video = /** @type {HTMLVideoElement} */ (tile.querySelector("video"));
    const mediaStream = w.stream ? w.stream.mediaStream : null;
    if (video.srcObject !== mediaStream) {
      video.srcObject = mediaStream;
      if (mediaStream) video.play().catch(() => {});
    }
    if (w.stream && !watchedStreams.has(w.stream)) {
      watchedStreams.add(w.stream);
      w.stream.on("isAvailableChanged", renderGrid);
    }
    const available = Boolean(w.stream && w.stream.isAvailable);
    /** @type {HTMLElement} */ (tile.querySelector(".placeholder")).hidden = available;
    /** @type {HTMLElement} */ (tile.querySelector(".placeholder")).textContent = w.kind === "screen" ? "Screen share starting…" : w.stream ? "Camera off" : "No video";
    /** @type {HTMLElement} */ (tile.querySelector(".label-text")).textContent = w.label;
    tile.dataset.available = String(available);
    tile.dataset.speaking = String(w.kind === "camera" && w.p.isSpeaking);
    tile.dataset.dominant = String(w.kind === "camera" && dominant === w.userId);
    tile.setAttribute("aria-label", `${w.label}${w.kind === "camera" && w.p.isSpeaking ? ", speaking" : ""}`);
    return tile;
  });
  for (const stale of existing.values()) {
    const video = stale.querySelector("video");
    if (video) video.srcObject = null;
  }
  // Keep order without re-inserting unchanged nodes (re-inserting a playing <video> pauses it).
  const current = [...grid.children];
  if (current.length !== tiles.length || tiles.some((t, i) => current[i] !== t)) grid.replaceChildren(...tiles);
  grid.dataset.count = String(tiles.length);
}

/** @returns {HTMLElement} */
function makeTile(key, userId, kind) {
  const tile = document.createElement("figure");
  tile.className = `tile ${kind}`;
  tile.dataset.key = key;
  tile.dataset.userId = userId;
  tile.dataset.kind = kind;
  tile.setAttribute("role", "listitem");
  const video = document.createElement("video");
  video.autoplay = true;
  video.playsInline = true;
  video.muted = true; // audio plays through the SDK's own <audio> elements
  const label = document.createElement("figcaption");
  label.className = "label";
  const dot = document.createElement("span");
  dot.className = "speaking-indicator";
  dot.setAttribute("aria-hidden", "true");
  const text = document.createElement("span");
  text.className = "label-text";
  label.append(dot, text);
  const placeholder = document.createElement("p");
  placeholder.className = "placeholder";
  tile.append(video, label, placeholder);
  return tile;
}

function renderRemote() {
  const call = app.call;
  if (!call) return;
  const remote = /** @type {HTMLVideoElement} */ ($("remote-video"));
  const participant = call.remoteParticipants[0];
  const stream = participant?.videoStreams[0];
  if (stream && remote.srcObject !== stream.mediaStream) {
    remote.srcObject = stream.mediaStream;
    remote.play().catch(() => {});
  }
  const available = Boolean(stream && stream.isAvailable);
  const placeholder = $("remote-placeholder");
  placeholder.hidden = available;
  if (!available) placeholder.textContent = call.state === "Connected" ? `${app.peerName}'s camera is off` : "No video yet";
  let label = participant?.displayName || app.peerName || "Remote video";
  if (participant?.isMuted) label += " (muted)";
  $("remote-label").textContent = label;
}

async function toggleMute() {
  const call = app.call;
  if (!call) return;
  try {
    if (call.isMuted) await call.unmute();
    else await call.mute();
  } catch (e) {
    showMessage($("end-reason"), `Mute failed: ${errorText(e)}`);
  }
  renderControls();
}

async function toggleCamera() {
  const call = app.call;
  if (!call) return;
  const button = /** @type {HTMLButtonElement} */ ($("camera"));
  button.disabled = true;
  try {
    if (call.isLocalVideoStarted) await call.stopVideo();
    else await call.startVideo();
  } catch (e) {
    showMessage($("end-reason"), `Camera: ${errorText(e)}`);
  }
  renderLocalVideo();
}

async function hangUp() {
  const call = app.call;
  if (!call) return;
  /** @type {HTMLButtonElement} */ ($("hangup")).disabled = true;
  try {
    await call.hangUp();
  } catch (e) {
    showMessage($("end-reason"), `Hang up failed: ${errorText(e)}`);
  }
}

async function toggleScreenShare() {
  const call = app.call;
  if (!call) return;
  const button = /** @type {HTMLButtonElement} */ ($("share-screen"));
  button.disabled = true;
  try {
    if (call.isScreenSharingOn) await call.stopScreenSharing();
    else await call.startScreenSharing();
  } catch (e) {
    showMessage($("end-reason"), `Screen sharing: ${errorText(e)}`);
  }
  renderControls();
}

async function leave(forEveryone) {
  const call = app.call;
  if (!call) return;
  /** @type {HTMLButtonElement} */ ($("leave")).disabled = true;
  /** @type {HTMLButtonElement} */ ($("end-for-all")).disabled = true;
  try {
    await call.hangUp({ forEveryone });
  } catch (e) {
    showMessage($("end-reason"), `Leave failed: ${errorText(e)}`);
  }
}

async function copyId() {
  const id = $("my-id").textContent || "";
  let ok = false;
  try {
    await navigator.clipboard.writeText(id);
    ok = true;
  } catch {
    const range = document.createRange();
    range.selectNodeContents($("my-id"));
    const selection = window.getSelection();
    selection?.removeAllRanges();
    selection?.addRange(range);
    try {
      ok = document.execCommand("copy");
    } catch {
      ok = false;
    }
  }
  $("copy-status").textContent = ok ? "Copied" : "Select the id and copy it";
  setTimeout(() => ($("copy-status").textContent = ""), 2500);
}

// ---------- start ----------

function init() {
  $("signin-form").addEventListener("submit", signIn);
  $("call-form").addEventListener("submit", startCall);
  $("callee").addEventListener("input", () => renderUsers());
  $("accept").addEventListener("click", acceptIncoming);
  $("decline").addEventListener("click", declineIncoming);
  $("mute").addEventListener("click", toggleMute);
  $("camera").addEventListener("click", toggleCamera);
  $("hangup").addEventListener("click", hangUp);
  $("share-screen").addEventListener("click", toggleScreenShare);
  $("leave").addEventListener("click", () => leave(false));
  $("end-for-all").addEventListener("click", () => leave(true));
  $("new-group").addEventListener("click", newGroupId);
  $("group-form").addEventListener("submit", joinGroup);
  $("copy-id").addEventListener("click", copyId);
  window.addEventListener("pagehide", () => {
    if (app.agent) app.agent.dispose();
  });
  try {
    const saved = localStorage.getItem("switchboard.name");
    if (saved) /** @type {HTMLInputElement} */ ($("name")).value = saved;
  } catch {}
  const group = new URLSearchParams(location.search).get("group");
  if (group && UUID_RE.test(group)) /** @type {HTMLInputElement} */ ($("group-id")).value = group;
  renderControls();
  $("name").focus();
}

init();
