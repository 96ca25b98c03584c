// Switchboard calling page: sign in with a name, pick someone, call them with audio and video.
// Uses only the web SDK (/sdk/calling.js) and the demo endpoints (/demo/signin, /demo/users).
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
  /** Name of the other person in the current/last call. */
  peerName: "",
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
  if (code === 0 && subcode === 5010) text = `Connection to ${peer || "the other person"} was lost.`;
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
  call.on("remoteParticipantsUpdated", ({ added }) => added.forEach(watchParticipant));
  call.remoteParticipants.forEach(watchParticipant);
  renderCall();
  renderLocalVideo();
}

/** @param {import("/sdk/calling.js").RemoteParticipant} participant */
function watchParticipant(participant) {
  const update = () => renderRemote();
  participant.on("videoStreamsUpdated", ({ added }) => {
    added.forEach((stream) => stream.on("isAvailableChanged", update));
    update();
  });
  participant.videoStreams.forEach((stream) => stream.on("isAvailableChanged", update));
  participant.on("isMutedChanged", update);
  participant.on("displayNameChanged", () => {
    if (participant.displayName) app.peerName = participant.displayName;
    renderCall();
  });
  participant.on("stateChanged", update);
  if (participant.displayName) app.peerName = participant.displayName;
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
  renderControls();
  $("remote-placeholder").hidden = false;
  $("remote-label").textContent = "Remote video";
  showMessage($("end-reason"), describeEnd(call.callEndReason, app.peerName));
  setStateText("Disconnected", `call with ${app.peerName} ended`);
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
    setStateText(call.state, texts[call.state] || "");
    renderRemote();
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
  mute.disabled = !active;
  camera.disabled = !active;
  hangup.disabled = !active;
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
  $("copy-id").addEventListener("click", copyId);
  window.addEventListener("pagehide", () => {
    if (app.agent) app.agent.dispose();
  });
  try {
    const saved = localStorage.getItem("switchboard.name");
    if (saved) /** @type {HTMLInputElement} */ ($("name")).value = saved;
  } catch {}
  renderControls();
  $("name").focus();
}

init();
