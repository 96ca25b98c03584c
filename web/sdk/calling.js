// Switchboard web calling SDK, served at /sdk/calling.js.
//
// A plain ES module (no build step, no dependencies) that talks the Switchboard signaling protocol v1
// (docs/protocol.md) over one WebSocket and runs one RTCPeerConnection per call against the server's SFU.
// Its object model mirrors the Azure Communication Services (ACS) Calling SDK:
//
//   import { CallClient } from "/sdk/calling.js";
//   const agent = await new CallClient().createCallAgent(token, { displayName: "Alice" });
//   agent.on("incomingCall", ({ incomingCall }) => incomingCall.accept({ audio: true, video: true }));
//   const call = agent.startCall([{ communicationUserId: bobId }], { audio: true, video: true });
//   call.on("stateChanged", () => console.log(call.state));
//   await call.mute(); await call.stopVideo(); await call.hangUp();
//
// Every error this module throws or rejects with is an `Error` with a `code` property: a string code from the
// server (`"CallNotFound"`, `"BadTarget"`, ...), a WebSocket close code (`4401` authentication failed), or one of
// the local codes below (`"Timeout"`, `"ConnectionClosed"`, `"Disposed"`, `"InvalidState"`, `"MediaError"`).

/** Path of the signaling WebSocket on the server. */
const SIGNALING_PATH = "/calling/v1/ws";
/** A request that gets no response within this time fails with code "Timeout". */
const REQUEST_TIMEOUT_MS = 15000;
/** Interval of `ping` requests, unless the server's `auth` result says otherwise. */
const DEFAULT_HEARTBEAT_MS = 15000;
/** How often each call samples getStats() to derive remote video availability and isSpeaking. */
const MEDIA_POLL_MS = 1000;
/** Remote video counts as unavailable when no frame was decoded for this long. */
const VIDEO_STALL_MS = 2500;
/** inbound audio `audioLevel` (0..1) above which the remote participant counts as speaking. */
const SPEAKING_LEVEL = 0.02;
/** Events for a call id that is not known yet (they can overtake the `startCall` response) are kept this long. */
const EARLY_EVENT_TTL_MS = 30000;
/** How long hangUp() waits for the server's `callStateChanged Disconnected` after its response. */
const HANGUP_EVENT_WAIT_MS = 1000;

/** Call end reasons this SDK sets locally (when the server did not give one). */
const LOCAL_END = Object.freeze({
  hungUp: { code: 0, subcode: 0, message: "local participant hung up" },
  connectionLost: { code: 0, subcode: 5010, message: "signaling connection lost" },
  disposed: { code: 0, subcode: 0, message: "call agent disposed" },
});

/**
 * @typedef {{ communicationUserId: string }} CommunicationUserIdentifier
 * @typedef {{ code: number, subcode: number, message?: string }} CallEndReason
 * @typedef {"None"|"Connecting"|"Ringing"|"EarlyMedia"|"Connected"|"LocalHold"|"RemoteHold"|"InLobby"|"Disconnecting"|"Disconnected"} CallState
 * @typedef {"Idle"|"Connecting"|"Ringing"|"Connected"|"Hold"|"InLobby"|"EarlyMedia"|"Disconnected"} RemoteParticipantState
 * @typedef {{ audio?: boolean, video?: boolean, audioOptions?: { muted?: boolean }, videoOptions?: { localVideoStreams?: unknown[] } }} CallOptions
 */

/**
 * Makes an Error with a `code` property.
 * @param {string|number} code
 * @param {string} message
 * @param {object} [extra] more own properties (e.g. `reason`)
 * @returns {Error & {code: string|number}}
 */
function sdkError(code, message, extra) {
  const err = /** @type {Error & {code: string|number}} */ (new Error(message));
  err.code = code;
  if (extra) Object.assign(err, extra);
  return err;
}

/** Minimal event emitter with the `on`/`off` shape of the ACS SDK. Listener errors are logged, not thrown. */
class Emitter {
  constructor() {
    /** @type {Map<string, Set<Function>>} */
    this._listeners = new Map();
  }
  /**
   * Subscribes to an event.
   * @param {string} event
   * @param {Function} listener
   */
  on(event, listener) {
    if (typeof listener !== "function") throw sdkError("BadArgument", "listener must be a function");
    if (!this._listeners.has(event)) this._listeners.set(event, new Set());
    this._listeners.get(event).add(listener);
  }
  /**
   * Unsubscribes a listener given to `on`.
   * @param {string} event
   * @param {Function} listener
   */
  off(event, listener) {
    const set = this._listeners.get(event);
    if (set) set.delete(listener);
  }
  /**
   * @param {string} event
   * @param {unknown} [arg]
   * @protected
   */
  _emit(event, arg) {
    const set = this._listeners.get(event);
    if (!set) return;
    for (const listener of [...set]) {
      try {
        listener(arg);
      } catch (e) {
        console.error(`[switchboard] "${event}" listener threw`, e);
      }
    }
  }
}

/** @param {number} ms */
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Normalises an identifier given by the application (`{communicationUserId}` or a raw id string).
 * @param {CommunicationUserIdentifier|string} target
 * @returns {CommunicationUserIdentifier}
 */
function toIdentifier(target) {
  if (typeof target === "string") return { communicationUserId: target };
  if (target && typeof target.communicationUserId === "string") return { communicationUserId: target.communicationUserId };
  throw sdkError("BadTarget", "a call target must be { communicationUserId }");
}

/**
 * Reads what media the application asked for, in either this SDK's short form ({audio, video}) or the ACS
 * form ({audioOptions: {muted}, videoOptions: {localVideoStreams}}).
 * @param {CallOptions} [options]
 */
function mediaOptions(options = {}) {
  const video = options.video === true || Boolean(options.videoOptions?.localVideoStreams?.length);
  const audio = options.audio !== false;
  const muted = Boolean(options.audioOptions?.muted) || options.audio === false;
  return { audio, video, muted };
}

/** Entry point, as in ACS: `new CallClient().createCallAgent(token, options)`. */
export class CallClient {
  /**
   * Connects to the server's signaling endpoint and authenticates.
   * @param {string} token a user access token (JWT) with scope `voip` or `voip.join`
   * @param {{ displayName?: string, url?: string }} [options] `url` overrides the WebSocket URL (default:
   *   `wss://` or `ws://` + the page's host + `/calling/v1/ws`)
   * @returns {Promise<CallAgent>} rejects with an Error whose `code` is 4401 when the server refuses the token
   */
  async createCallAgent(token, options = {}) {
    if (typeof token !== "string" || token === "") throw sdkError(4401, "a user access token is required");
    const agent = new CallAgent(token, options);
    await agent._connect();
    return agent;
  }
}

/**
 * A signed-in user's connection: starts calls and receives incoming calls.
 * Events: `incomingCall` ({incomingCall}), `callsUpdated` ({added, removed}), `connectionStateChanged`
 * ({newValue, oldValue, reason}), `error` ({code, message, callId?}: server `error` events).
 */
export class CallAgent extends Emitter {
  /**
   * @param {string} token
   * @param {{ displayName?: string, url?: string }} options
   */
  constructor(token, options) {
    super();
    this._token = token;
    /** The display name sent to the other participants. */
    this.displayName = options.displayName || "";
    this._url = options.url || defaultSignalingUrl();
    /** @type {WebSocket|null} */
    this._ws = null;
    this._nextId = 1;
    /** @type {Map<string, {resolve: Function, reject: Function, timer: any, type: string}>} */
    this._pending = new Map();
    /** @type {Call[]} */
    this._calls = [];
    /** @type {Map<string, Call>} */
    this._callsById = new Map();
    /** @type {Map<string, IncomingCall>} */
    this._incoming = new Map();
    /** @type {Map<string, {at: number, events: object[]}>} events for call ids not known yet */
    this._early = new Map();
    /** Ids of calls that ended here: late events for them are dropped. */
    this._endedIds = new Set();
    this._heartbeat = null;
    this._disposed = false;
    /** The authenticated identity (from the server's `auth` result). */
    this.communicationUserId = "";
    /** The server's id of this connection. */
    this.connectionId = "";
    /** When the token expires (ISO string from the server), if it said. */
    this.tokenExpiresOn = "";
    /** "Disconnected" | "Connected" (as ACS `CallAgent.connectionState`). */
    this.connectionState = "Disconnected";
    /** The WebSocket close code and reason once the connection is gone. */
    this.closeInfo = null;
  }

  /** The calls of this agent that have not ended (copy). @returns {Call[]} */
  get calls() {
    return [...this._calls];
  }

  /**
   * Starts a 1:1 call. Returns the Call at once (state "None"); it moves to "Connecting", "Ringing",
   * "Connected" and finally "Disconnected" (see `call.callEndReason`).
   * @param {CommunicationUserIdentifier[]} participants exactly one communication user
   * @param {CallOptions} [options] `{audio: true, video: true}`
   * @returns {Call}
   */
  startCall(participants, options = {}) {
    if (this._disposed) throw sdkError("Disposed", "the call agent is disposed");
    if (this.connectionState !== "Connected") throw sdkError("ConnectionClosed", "the signaling connection is closed");
    const list = Array.isArray(participants) ? participants : [participants];
    if (list.length !== 1) throw sdkError("BadTarget", "a call needs exactly one participant");
    const target = toIdentifier(list[0]);
    const call = new Call(this, "Outgoing", mediaOptions(options));
    call._addRemoteParticipant({ communicationUserId: target.communicationUserId, displayName: "", state: "Connecting", isMuted: false }, true);
    this._addCall(call);
    call._runOutgoing(target);
    return call;
  }

  /**
   * Closes the signaling connection (code 1000) after hanging up every call of this agent.
   * @returns {Promise<void>}
   */
  async dispose() {
    if (this._disposed) return;
    this._disposed = true;
    const calls = this.calls;
    await Promise.all(
      calls.map((call) =>
        Promise.race([call.hangUp().catch(() => {}), sleep(2000)]).then(() => call._end(LOCAL_END.disposed)),
      ),
    );
    for (const incoming of this._incoming.values()) incoming._end({ code: 0, subcode: 0, message: "call agent disposed" });
    this._incoming.clear();
    this._stopHeartbeat();
    const ws = this._ws;
    if (ws && ws.readyState <= 1) {
      const closed = new Promise((resolve) => ws.addEventListener("close", resolve, { once: true }));
      ws.close(1000, "dispose");
      await Promise.race([closed, sleep(3000)]);
    }
    this._onClosed(1000, "dispose");
  }

  // ----- connection -----

  /** Opens the socket and authenticates. @private */
  _connect() {
    return new Promise((resolve, reject) => {
      let settled = false;
      const fail = (err) => {
        if (settled) return;
        settled = true;
        reject(err);
      };
      let ws;
      try {
        ws = new WebSocket(this._url);
      } catch (e) {
        fail(sdkError("ConnectionFailed", `cannot open ${this._url}: ${e.message}`));
        return;
      }
      this._ws = ws;
      ws.addEventListener("message", (ev) => this._onMessage(ev));
      ws.addEventListener("close", (ev) => {
        if (!settled) {
          const what = ev.code === 4401 ? "authentication failed" : "connection closed before authentication";
          fail(sdkError(ev.code, `${what} (close ${ev.code}${ev.reason ? `: ${ev.reason}` : ""})`, { reason: ev.reason }));
        }
        this._onClosed(ev.code, ev.reason);
      });
      ws.addEventListener("open", () => {
        const auth = { token: this._token };
        if (this.displayName) auth.displayName = this.displayName;
        this._request("auth", auth).then(
          (result) => {
            if (settled) return;
            settled = true;
            this.communicationUserId = result.communicationUserId || "";
            this.connectionId = result.connectionId || "";
            this.tokenExpiresOn = result.tokenExpiresOn || "";
            this._setConnectionState("Connected", null);
            this._startHeartbeat(result.heartbeatIntervalMs);
            resolve();
          },
          (err) => {
            // The server closes with 4401 after a failed auth; prefer that close code when it follows promptly.
            setTimeout(() => {
              fail(err);
              try {
                ws.close(1000, "auth failed");
              } catch {}
            }, 500);
          },
        );
      });
    });
  }

  /** @private */
  _setConnectionState(newValue, reason) {
    if (this.connectionState === newValue) return;
    const oldValue = this.connectionState;
    this.connectionState = newValue;
    this._emit("connectionStateChanged", { newValue, oldValue, reason });
  }

  /** @private */
  _onClosed(code, reason) {
    if (this.closeInfo) return;
    this.closeInfo = { code, reason };
    this._stopHeartbeat();
    for (const [id, p] of this._pending) {
      clearTimeout(p.timer);
      p.reject(sdkError("ConnectionClosed", `connection closed (${code}${reason ? `: ${reason}` : ""}) before the response to ${p.type}`, { closeCode: code }));
      this._pending.delete(id);
    }
    const lost = { ...LOCAL_END.connectionLost, message: `signaling connection lost (close ${code}${reason ? `: ${reason}` : ""})` };
    for (const call of this.calls) call._end(this._disposed ? LOCAL_END.disposed : lost);
    for (const incoming of this._incoming.values()) incoming._end(lost);
    this._incoming.clear();
    this._setConnectionState("Disconnected", { code, reason });
  }

  /** @private */
  _startHeartbeat(intervalMs) {
    const every = Number(intervalMs) > 0 ? Number(intervalMs) : DEFAULT_HEARTBEAT_MS;
    this._heartbeat = setInterval(() => {
      this._request("ping", {}).catch((e) => {
        if (this.connectionState === "Connected") console.warn("[switchboard] ping failed:", e.message);
      });
    }, every);
  }

  /** @private */
  _stopHeartbeat() {
    if (this._heartbeat) clearInterval(this._heartbeat);
    this._heartbeat = null;
  }

  /**
   * Sends a request and resolves with its `result` (rejects with Error{code} on `ok:false` or timeout).
   * @param {string} type
   * @param {object} fields
   * @returns {Promise<any>}
   * @private
   */
  _request(type, fields) {
    const ws = this._ws;
    if (!ws || ws.readyState !== 1) return Promise.reject(sdkError("ConnectionClosed", `cannot send ${type}: the signaling connection is closed`));
    const id = String(this._nextId++);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this._pending.delete(id);
        reject(sdkError("Timeout", `no response to ${type} within ${REQUEST_TIMEOUT_MS / 1000} s`));
      }, REQUEST_TIMEOUT_MS);
      this._pending.set(id, { resolve, reject, timer, type });
      try {
        ws.send(JSON.stringify({ type, id, ...fields }));
      } catch (e) {
        clearTimeout(timer);
        this._pending.delete(id);
        reject(sdkError("ConnectionClosed", `cannot send ${type}: ${e.message}`));
      }
    });
  }

  /**
   * Sends a notice (no id, no response).
   * @private
   */
  _notify(type, fields) {
    const ws = this._ws;
    if (!ws || ws.readyState !== 1) return;
    try {
      ws.send(JSON.stringify({ type, ...fields }));
    } catch {}
  }

  /** @private */
  _onMessage(ev) {
    if (typeof ev.data !== "string") return;
    let msg;
    try {
      msg = JSON.parse(ev.data);
    } catch {
      console.warn("[switchboard] non-JSON frame from server");
      return;
    }
    if (!msg || typeof msg !== "object") return;
    if (msg.type === "response") {
      const id = msg.id == null ? "" : String(msg.id);
      const p = this._pending.get(id);
      if (!p) return;
      this._pending.delete(id);
      clearTimeout(p.timer);
      if (msg.ok) p.resolve(msg.result || {});
      else {
        const e = msg.error || {};
        p.reject(sdkError(e.code || "Unknown", e.message || `${p.type} failed`));
      }
      return;
    }
    this._dispatchEvent(msg);
  }

  /** @private */
  _dispatchEvent(msg) {
    switch (msg.type) {
      case "incomingCall":
        this._onIncomingCall(msg);
        return;
      case "incomingCallEnded": {
        const incoming = this._incoming.get(msg.callId);
        if (incoming) {
          this._incoming.delete(msg.callId);
          incoming._end(msg.endReason || { code: 0, subcode: 0 });
        }
        return;
      }
      case "error": {
        const e = msg.error || {};
        console.warn(`[switchboard] server error event: ${e.code}: ${e.message}`);
        this._emit("error", { code: e.code, message: e.message, callId: msg.callId });
        return;
      }
      default:
        break;
    }
    if (typeof msg.callId === "string") {
      const call = this._callsById.get(msg.callId);
      if (call) call._onEvent(msg);
      else if (!this._endedIds.has(msg.callId)) this._keepEarly(msg);
      return;
    }
    console.warn(`[switchboard] ignoring event ${JSON.stringify(msg.type)}`);
  }

  /** Keeps an event for a call id that is not known yet (its startCall response may still be on the way). @private */
  _keepEarly(msg) {
    const now = Date.now();
    for (const [id, entry] of this._early) if (now - entry.at > EARLY_EVENT_TTL_MS) this._early.delete(id);
    let entry = this._early.get(msg.callId);
    if (!entry) this._early.set(msg.callId, (entry = { at: now, events: [] }));
    if (entry.events.length < 50) entry.events.push(msg);
  }

  /** @private */
  _onIncomingCall(msg) {
    if (typeof msg.callId !== "string" || this._incoming.has(msg.callId) || this._callsById.has(msg.callId)) return;
    const incoming = new IncomingCall(this, msg);
    this._incoming.set(msg.callId, incoming);
    this._emit("incomingCall", { incomingCall: incoming });
  }

  /** Binds a call to its server id and replays events that came before. @private */
  _bindCallId(call, callId) {
    call.id = callId;
    this._callsById.set(callId, call);
    const entry = this._early.get(callId);
    if (entry) {
      this._early.delete(callId);
      for (const msg of entry.events) call._onEvent(msg);
    }
  }

  /** @private */
  _addCall(call) {
    this._calls.push(call);
    this._emit("callsUpdated", { added: [call], removed: [] });
  }

  /** @private */
  _removeCall(call) {
    if (call.id && this._callsById.get(call.id) === call) {
      this._callsById.delete(call.id);
      this._endedIds.add(call.id);
      if (this._endedIds.size > 200) this._endedIds.delete(this._endedIds.values().next().value);
    }
    const i = this._calls.indexOf(call);
    if (i < 0) return;
    this._calls.splice(i, 1);
    this._emit("callsUpdated", { added: [], removed: [call] });
  }
}

/** @returns {string} */
function defaultSignalingUrl() {
  if (typeof location === "undefined") throw sdkError("BadArgument", "no page origin: pass options.url");
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}${SIGNALING_PATH}`;
}

/**
 * A call offered to this agent. Events: `callEnded` ({callEndReason}) when it goes away unanswered
 * (caller hung up, answered elsewhere, rejected, ...).
 */
export class IncomingCall extends Emitter {
  /**
   * @param {CallAgent} agent
   * @param {{callId: string, caller?: CommunicationUserIdentifier, callerDisplayName?: string, video?: boolean}} msg
   */
  constructor(agent, msg) {
    super();
    this._agent = agent;
    /** The server's call id. */
    this.id = msg.callId;
    /** Who is calling: `{identifier: {communicationUserId}, displayName}`. */
    this.callerInfo = {
      identifier: { communicationUserId: msg.caller?.communicationUserId || "" },
      displayName: msg.callerDisplayName || "",
    };
    /** Whether the caller started the call with video. */
    this.isVideoCall = Boolean(msg.video);
    /** @type {CallEndReason|undefined} */
    this.callEndReason = undefined;
    this._settled = false;
  }

  /**
   * Answers the call. Resolves with the Call once the server accepted the answer; media then connects.
   * @param {CallOptions} [options] `{audio: true, video: true}`
   * @returns {Promise<Call>}
   */
  async accept(options = {}) {
    if (this._settled) throw sdkError("InvalidState", "this incoming call was already answered, rejected or ended");
    this._settled = true;
    const agent = this._agent;
    const call = new Call(agent, "Incoming", mediaOptions(options));
    call._addRemoteParticipant(
      { communicationUserId: this.callerInfo.identifier.communicationUserId, displayName: this.callerInfo.displayName, state: "Connected", isMuted: false },
      true,
    );
    call._setState("Connecting");
    const media = call._acquireLocalMedia();
    try {
      agent._bindCallId(call, this.id);
      agent._addCall(call);
      await agent._request("accept", { callId: this.id });
    } catch (e) {
      agent._incoming.delete(this.id);
      await media.catch(() => {});
      call._end({ code: 0, subcode: 0, message: `accept failed: ${e.message}` });
      throw e;
    }
    agent._incoming.delete(this.id);
    call._negotiate(media);
    return call;
  }

  /**
   * Declines the call: the caller's call ends with 603.
   * @returns {Promise<void>}
   */
  async reject() {
    if (this._settled) throw sdkError("InvalidState", "this incoming call was already answered, rejected or ended");
    this._settled = true;
    try {
      await this._agent._request("reject", { callId: this.id });
    } finally {
      this._agent._incoming.delete(this.id);
      this._end({ code: 603, subcode: 0, message: "declined" });
    }
  }

  /** @private */
  _end(reason) {
    if (this.callEndReason) return;
    this._settled = true;
    this.callEndReason = { code: reason.code ?? 0, subcode: reason.subcode ?? 0, message: reason.message || "" };
    this._emit("callEnded", { callEndReason: this.callEndReason });
  }
}

/**
 * A remote video stream of a participant. Events: `isAvailableChanged`.
 */
export class RemoteVideoStream extends Emitter {
  /** @param {number} id */
  constructor(id) {
    super();
    this.id = id;
    /** Always "Video" (screen sharing comes later). */
    this.mediaStreamType = "Video";
    /** True while video frames from the participant are being decoded. */
    this.isAvailable = false;
    /** The MediaStream holding the received video track (attach it to a <video> element). */
    this.mediaStream = new MediaStream();
  }
  /** ACS-style accessor. @returns {Promise<MediaStream>} */
  async getMediaStream() {
    return this.mediaStream;
  }
  /** @private */
  _setAvailable(value) {
    if (this.isAvailable === value) return;
    this.isAvailable = value;
    this._emit("isAvailableChanged");
  }
}

/**
 * Another participant of a call. Events: `stateChanged`, `isMutedChanged`, `displayNameChanged`,
 * `isSpeakingChanged`, `videoStreamsUpdated` ({added, removed}).
 */
export class RemoteParticipant extends Emitter {
  /** @param {{communicationUserId: string, displayName?: string, state?: string, isMuted?: boolean}} info */
  constructor(info) {
    super();
    /** @type {CommunicationUserIdentifier} */
    this.identifier = { communicationUserId: info.communicationUserId };
    this.displayName = info.displayName || "";
    /** @type {RemoteParticipantState} */
    this.state = /** @type {RemoteParticipantState} */ (info.state || "Connecting");
    this.isMuted = Boolean(info.isMuted);
    this.isSpeaking = false;
    /** @type {CallEndReason|undefined} */
    this.callEndReason = undefined;
    /** @type {RemoteVideoStream[]} */
    this.videoStreams = [];
    /** True until the server itself reported this participant. @private */
    this._assumed = false;
  }

  /** Applies a participant record from the server. @private */
  _update(info) {
    if (typeof info.displayName === "string" && info.displayName && info.displayName !== this.displayName) {
      this.displayName = info.displayName;
      this._emit("displayNameChanged");
    }
    if (typeof info.isMuted === "boolean" && info.isMuted !== this.isMuted) {
      this.isMuted = info.isMuted;
      this._emit("isMutedChanged");
    }
    if (typeof info.state === "string") this._setState(info.state);
  }

  /** @private */
  _setState(state) {
    if (state === this.state) return;
    this.state = /** @type {RemoteParticipantState} */ (state);
    this._emit("stateChanged");
  }

  /** @private */
  _setSpeaking(value) {
    if (value === this.isSpeaking) return;
    this.isSpeaking = value;
    this._emit("isSpeakingChanged");
  }
}

let nextStreamId = 1;

/**
 * A call. Events: `stateChanged`, `remoteParticipantsUpdated` ({added, removed}), `isMutedChanged`,
 * `isLocalVideoStartedChanged`, `localVideoStreamsUpdated`, `idChanged`.
 */
export class Call extends Emitter {
  /**
   * @param {CallAgent} agent
   * @param {"Incoming"|"Outgoing"} direction
   * @param {{audio: boolean, video: boolean, muted: boolean}} media
   */
  constructor(agent, direction, media) {
    super();
    this._agent = agent;
    /** The server's call id ("" until the server assigned it). */
    this.id = "";
    /** "Incoming" or "Outgoing". */
    this.direction = direction;
    /** @type {CallState} */
    this.state = "None";
    /** @type {CallEndReason|undefined} set when the call is Disconnected */
    this.callEndReason = undefined;
    /** Whether the local microphone is muted. */
    this.isMuted = media.muted;
    /** Whether the local camera is sending. */
    this.isLocalVideoStarted = false;
    /** @type {RemoteParticipant[]} */
    this._remote = [];
    /** The local camera and microphone tracks (for a self-view <video muted>). */
    this.localMediaStream = new MediaStream();
    /** Everything received from the other side (audio + video). */
    this.remoteMediaStream = new MediaStream();
    /** @type {RTCPeerConnection|null} */
    this.peerConnection = null;
    this._media = media;
    /** @type {MediaStreamTrack|null} */
    this._audioTrack = null;
    /** @type {MediaStreamTrack|null} */
    this._videoTrack = null;
    /** @type {RTCRtpTransceiver|null} */
    this._audioTransceiver = null;
    /** @type {RTCRtpTransceiver|null} */
    this._videoTransceiver = null;
    /** @type {HTMLAudioElement|null} */
    this._audioElement = null;
    this._pollTimer = null;
    this._videoProgress = { frames: 0, at: 0 };
    this._hangUpRequested = false;
    this._forEveryone = false;
    this._mutePending = false;
    /** @type {Promise<void>|null} */
    this._negotiation = null;
    /** @type {Function[]} resolved when the call reaches Disconnected */
    this._disconnectWaiters = [];
  }

  /** The other participants (copy). @returns {RemoteParticipant[]} */
  get remoteParticipants() {
    return [...this._remote];
  }

  /** ACS-style: the local video streams being sent (one entry while the camera is on). */
  get localVideoStreams() {
    return this._videoTrack ? [{ mediaStreamType: "Video", mediaStream: new MediaStream([this._videoTrack]) }] : [];
  }

  /**
   * Mutes the local microphone (stops sending audio) and tells the other participants.
   * @returns {Promise<void>}
   */
  async mute() {
    this._assertActive("mute");
    if (this._audioTrack) this._audioTrack.enabled = false;
    if (!this.isMuted) {
      this.isMuted = true;
      this._emit("isMutedChanged");
    }
    if (this.id) await this._agent._request("mute", { callId: this.id });
    else this._mutePending = true;
  }

  /**
   * Unmutes the local microphone and tells the other participants.
   * @returns {Promise<void>}
   */
  async unmute() {
    this._assertActive("unmute");
    const wasMuted = this.isMuted;
    if (this._audioTrack) this._audioTrack.enabled = true;
    this.isMuted = false;
    if (wasMuted) this._emit("isMutedChanged");
    if (!this.id) {
      this._mutePending = false;
      return;
    }
    try {
      await this._agent._request("unmute", { callId: this.id });
    } catch (e) {
      if (this._audioTrack) this._audioTrack.enabled = false;
      this.isMuted = true;
      if (wasMuted) this._emit("isMutedChanged");
      throw e;
    }
  }

  /**
   * Turns the camera on and sends it on the call's video transceiver (no renegotiation).
   * @returns {Promise<void>}
   */
  async startVideo() {
    this._assertActive("startVideo");
    if (this._videoTrack) return;
    let stream;
    try {
      stream = await navigator.mediaDevices.getUserMedia({ video: true });
    } catch (e) {
      throw sdkError("MediaError", `cannot open the camera: ${e.message}`, { cause: e });
    }
    const track = stream.getVideoTracks()[0];
    if (this.state === "Disconnected" || this._videoTrack) {
      track.stop();
      if (this.state === "Disconnected") throw sdkError("InvalidState", "the call ended");
      return;
    }
    this._videoTrack = track;
    this._media.video = true;
    this.localMediaStream.addTrack(track);
    if (this._videoTransceiver) await this._videoTransceiver.sender.replaceTrack(track);
    this.isLocalVideoStarted = true;
    this._emit("isLocalVideoStartedChanged");
    this._emit("localVideoStreamsUpdated", { added: this.localVideoStreams, removed: [] });
  }

  /**
   * Turns the camera off: the video sender sends nothing and the camera is released (no renegotiation).
   * @returns {Promise<void>}
   */
  async stopVideo() {
    const track = this._videoTrack;
    this._media.video = false;
    if (!track) return;
    this._videoTrack = null;
    if (this._videoTransceiver && this.peerConnection && this.peerConnection.signalingState !== "closed") {
      await this._videoTransceiver.sender.replaceTrack(null);
    }
    track.stop();
    this.localMediaStream.removeTrack(track);
    this.isLocalVideoStarted = false;
    this._emit("isLocalVideoStartedChanged");
    this._emit("localVideoStreamsUpdated", { added: [], removed: [{ mediaStreamType: "Video" }] });
  }

  /**
   * Leaves the call (a 1:1 call ends for both). Resolves once the call is Disconnected.
   * @param {{forEveryone?: boolean}} [options]
   * @returns {Promise<void>}
   */
  async hangUp(options = {}) {
    if (this.state === "Disconnected") return;
    const disconnected = new Promise((resolve) => this._disconnectWaiters.push(resolve));
    if (!this._hangUpRequested) {
      this._hangUpRequested = true;
      this._forEveryone = Boolean(options.forEveryone);
      this._setState("Disconnecting");
      // Without an id yet, _runOutgoing sends the hangUp as soon as the server assigned one.
      if (this.id) this._sendHangUp();
    }
    await disconnected;
  }

  /** Sends `hangUp`, then ends the call when the server's Disconnected event came or after a short wait. @private */
  async _sendHangUp() {
    const disconnected = new Promise((resolve) => this._disconnectWaiters.push(resolve));
    try {
      await this._agent._request("hangUp", { callId: this.id, forEveryone: this._forEveryone });
      await Promise.race([disconnected, sleep(HANGUP_EVENT_WAIT_MS)]);
    } catch (e) {
      if (e.code !== "CallNotFound" && e.code !== "InvalidState" && e.code !== "ConnectionClosed") {
        console.warn(`[switchboard] hangUp of call ${this.id} failed: ${e.code}: ${e.message}`);
      }
    }
    this._end(LOCAL_END.hungUp);
  }

  /**
   * The statistics of the call's RTCPeerConnection (an empty Map before media started and after the call ended,
   * when the peer connection is closed).
   * @returns {Promise<RTCStatsReport|Map<string, any>>}
   */
  async getStats() {
    const pc = this.peerConnection;
    if (!pc || pc.signalingState === "closed") return new Map();
    return pc.getStats();
  }

  // ----- internals -----

  /** @private */
  _assertActive(what) {
    if (this.state === "Disconnected" || this.state === "Disconnecting") throw sdkError("InvalidState", `cannot ${what}: the call has ended`);
  }

  /** @private */
  _setState(state) {
    if (this.state === state || this.state === "Disconnected") return;
    if (this.state === "Disconnecting" && state !== "Disconnected") return;
    this.state = /** @type {CallState} */ (state);
    this._emit("stateChanged");
  }

  /** Caller side: startCall, then offer. @private */
  async _runOutgoing(target) {
    await Promise.resolve(); // let the application subscribe to events first
    this._setState("Connecting");
    const media = this._acquireLocalMedia();
    let result;
    try {
      result = await this._agent._request("startCall", { targets: [target], video: this._media.video });
    } catch (e) {
      await media.catch(() => {});
      this._end({ code: e.code === "BadTarget" || e.code === "SelfCall" ? 400 : 500, subcode: 0, message: `startCall failed: ${e.code}: ${e.message}` });
      return;
    }
    if (!result || typeof result.callId !== "string") {
      this._end({ code: 500, subcode: 0, message: "startCall response has no callId" });
      return;
    }
    this._agent._bindCallId(this, result.callId);
    this._emit("idChanged");
    if (this.state === "Disconnected") return; // ended by an early event (e.g. 480)
    if (this._hangUpRequested) {
      await media.catch(() => {});
      this._sendHangUp();
      return;
    }
    this._negotiate(media);
  }

  /**
   * Opens the camera/microphone as asked. Falls back to audio only when the camera fails, and to no local media
   * when the microphone fails too (the call still receives).
   * @returns {Promise<void>}
   * @private
   */
  async _acquireLocalMedia() {
    const wantAudio = this._media.audio;
    const wantVideo = this._media.video;
    if (!wantAudio && !wantVideo) return;
    if (typeof navigator === "undefined" || !navigator.mediaDevices) {
      console.warn("[switchboard] no navigator.mediaDevices: joining without local media");
      return;
    }
    const attempts = [{ audio: wantAudio, video: wantVideo }];
    if (wantAudio && wantVideo) attempts.push({ audio: true, video: false });
    let stream = null;
    for (const constraints of attempts) {
      try {
        stream = await navigator.mediaDevices.getUserMedia(constraints);
        break;
      } catch (e) {
        console.warn(`[switchboard] getUserMedia(${JSON.stringify(constraints)}) failed: ${e.name}: ${e.message}`);
      }
    }
    if (!stream) return;
    if (this.state === "Disconnected") {
      stream.getTracks().forEach((t) => t.stop());
      return;
    }
    this._audioTrack = stream.getAudioTracks()[0] || null;
    this._videoTrack = stream.getVideoTracks()[0] || null;
    if (this._audioTrack) {
      this._audioTrack.enabled = !this.isMuted;
      this.localMediaStream.addTrack(this._audioTrack);
    }
    if (this._videoTrack) {
      this.localMediaStream.addTrack(this._videoTrack);
      this.isLocalVideoStarted = true;
      this._emit("isLocalVideoStartedChanged");
      this._emit("localVideoStreamsUpdated", { added: this.localVideoStreams, removed: [] });
    }
  }

  /**
   * Builds the peer connection (audio then video transceiver, both sendrecv), sends the offer, applies the SFU's
   * answer. Errors end the call.
   * @param {Promise<void>} media
   * @private
   */
  _negotiate(media) {
    this._negotiation = (async () => {
      await media;
      if (this.state === "Disconnected") return;
      const pc = new RTCPeerConnection({ bundlePolicy: "max-bundle", rtcpMuxPolicy: "require" });
      this.peerConnection = pc;
      this._audioTransceiver = pc.addTransceiver(this._audioTrack || "audio", { direction: "sendrecv", streams: [this.localMediaStream] });
      this._videoTransceiver = pc.addTransceiver(this._videoTrack || "video", { direction: "sendrecv", streams: [this.localMediaStream] });
      this._attachRemoteTracks();
      pc.addEventListener("icecandidate", (ev) => {
        if (!this.id) return;
        const c = ev.candidate;
        const candidate = c
          ? { candidate: c.candidate, sdpMid: c.sdpMid ?? "0", sdpMLineIndex: c.sdpMLineIndex ?? 0 }
          : { candidate: "", sdpMid: "0", sdpMLineIndex: 0 };
        this._agent._notify("iceCandidate", { callId: this.id, candidate });
      });
      pc.addEventListener("connectionstatechange", () => {
        if (pc.connectionState === "failed") console.warn(`[switchboard] call ${this.id}: media connection failed`);
      });
      const offer = await pc.createOffer();
      await pc.setLocalDescription(offer);
      if (this.state === "Disconnected") return;
      if (this._mutePending) {
        this._mutePending = false;
        this._agent._request("mute", { callId: this.id }).catch((e) => console.warn("[switchboard] mute failed:", e.message));
      }
      const result = await this._agent._request("offer", { callId: this.id, sdp: pc.localDescription.sdp });
      if (this.state === "Disconnected") return;
      if (!result || typeof result.sdp !== "string") throw sdkError("BadSdp", "the offer response has no SDP answer");
      await pc.setRemoteDescription({ type: "answer", sdp: result.sdp });
      this._startPolling();
    })().catch((e) => {
      if (this.state === "Disconnected") return;
      console.error(`[switchboard] call ${this.id}: media negotiation failed:`, e);
      const reason = { code: 500, subcode: 0, message: `media negotiation failed: ${e.code ? `${e.code}: ` : ""}${e.message}` };
      if (this.id) this._agent._request("hangUp", { callId: this.id, forEveryone: false }).catch(() => {});
      this._end(reason);
    });
  }

  /** The server's media arrives on our own transceivers: their receiver tracks are the remote participant's. @private */
  _attachRemoteTracks() {
    const audio = this._audioTransceiver.receiver.track;
    const video = this._videoTransceiver.receiver.track;
    this.remoteMediaStream.addTrack(audio);
    this.remoteMediaStream.addTrack(video);
    if (typeof document !== "undefined" && document.body) {
      const el = document.createElement("audio");
      el.autoplay = true;
      el.hidden = true;
      el.setAttribute("data-switchboard-call", this.id);
      el.srcObject = new MediaStream([audio]);
      document.body.appendChild(el);
      el.play().catch(() => {}); // autoplay may wait for a user gesture
      this._audioElement = el;
    }
    for (const p of this._remote) this._giveVideo(p);
  }

  /** Attaches the received video track to a participant's video stream. @private */
  _giveVideo(participant) {
    if (!this._videoTransceiver || this._remote[0] !== participant) return; // 1:1: the one remote participant
    let stream = participant.videoStreams[0];
    let added = false;
    if (!stream) {
      stream = new RemoteVideoStream(nextStreamId++);
      participant.videoStreams.push(stream);
      added = true;
    }
    const track = this._videoTransceiver.receiver.track;
    if (!stream.mediaStream.getTracks().includes(track)) {
      stream.mediaStream.addTrack(track);
      added = true;
    }
    if (added) participant._emit("videoStreamsUpdated", { added: [stream], removed: [] });
  }

  /** Samples getStats() for remote video availability and speaking. @private */
  _startPolling() {
    if (this._pollTimer) return;
    this._pollTimer = setInterval(async () => {
      const pc = this.peerConnection;
      if (!pc || pc.signalingState === "closed") return;
      let report;
      try {
        report = await pc.getStats();
      } catch {
        return;
      }
      let frames = 0;
      let level = 0;
      report.forEach((s) => {
        if (s.type !== "inbound-rtp") return;
        if (s.kind === "video") frames += s.framesDecoded || 0;
        if (s.kind === "audio") level = Math.max(level, s.audioLevel || 0);
      });
      const now = Date.now();
      if (frames > this._videoProgress.frames) this._videoProgress = { frames, at: now };
      const available = frames > 0 && now - this._videoProgress.at < VIDEO_STALL_MS;
      const participant = this._remote[0];
      if (!participant || this.state === "Disconnected") return;
      const stream = participant.videoStreams[0];
      if (stream) stream._setAvailable(available);
      participant._setSpeaking(!participant.isMuted && level > SPEAKING_LEVEL);
    }, MEDIA_POLL_MS);
  }

  /**
   * @param {{communicationUserId: string, displayName?: string, state?: string, isMuted?: boolean}} info
   * @param {boolean} assumed known locally (target / caller), not yet reported by the server
   * @private
   */
  _addRemoteParticipant(info, assumed) {
    const p = new RemoteParticipant(info);
    p._assumed = assumed;
    this._remote.push(p);
    this._giveVideo(p);
    return p;
  }

  /** @private */
  _onEvent(msg) {
    switch (msg.type) {
      case "callStateChanged":
        if (msg.state === "Disconnected") {
          this._end(msg.endReason || { code: 0, subcode: 0 });
          return;
        }
        if (typeof msg.state === "string") {
          this._setState(msg.state);
          // In a 1:1 call the other side's state follows the call's until the server reports it.
          for (const p of this._remote) {
            if (p._assumed && (msg.state === "Ringing" || msg.state === "Connected")) p._setState(msg.state);
          }
        }
        return;
      case "participantsUpdated":
        this._onParticipantsUpdated(msg);
        return;
      default:
        console.warn(`[switchboard] call ${this.id}: ignoring event ${JSON.stringify(msg.type)}`);
    }
  }

  /** @private */
  _onParticipantsUpdated(msg) {
    const self = this._agent.communicationUserId;
    const idOf = (x) => (typeof x === "string" ? x : x?.communicationUserId || x?.identifier?.communicationUserId || "");
    const added = [];
    const removed = [];
    for (const info of [...(msg.added || []), ...(msg.updated || [])]) {
      const id = idOf(info);
      if (!id || id === self) continue;
      const record = { ...info, communicationUserId: id };
      const existing = this._remote.find((p) => p.identifier.communicationUserId === id);
      if (existing) {
        existing._assumed = false;
        existing._update(record);
      } else {
        added.push(this._addRemoteParticipant(record, false));
      }
    }
    for (const info of msg.removed || []) {
      const id = idOf(info);
      const i = this._remote.findIndex((p) => p.identifier.communicationUserId === id);
      if (i < 0) continue;
      const [p] = this._remote.splice(i, 1);
      p._setState("Disconnected");
      removed.push(p);
    }
    if (added.length || removed.length) this._emit("remoteParticipantsUpdated", { added, removed });
  }

  /**
   * Ends the call locally: Disconnected, media released, removed from the agent. Idempotent.
   * @param {{code?: number, subcode?: number, message?: string}} reason
   * @private
   */
  _end(reason) {
    if (this.state === "Disconnected") return;
    this.callEndReason = { code: reason.code ?? 0, subcode: reason.subcode ?? 0, message: reason.message || "" };
    if (this._pollTimer) clearInterval(this._pollTimer);
    this._pollTimer = null;
    if (this.peerConnection) {
      try {
        this.peerConnection.close();
      } catch {}
    }
    for (const t of this.localMediaStream.getTracks()) t.stop();
    if (this._audioTrack) this._audioTrack.stop();
    if (this._videoTrack) this._videoTrack.stop();
    const hadVideo = this.isLocalVideoStarted;
    this.isLocalVideoStarted = false;
    if (this._audioElement) {
      this._audioElement.srcObject = null;
      this._audioElement.remove();
      this._audioElement = null;
    }
    for (const p of this._remote) {
      p._setSpeaking(false);
      for (const s of p.videoStreams) s._setAvailable(false);
      p._setState("Disconnected");
    }
    this.state = "Disconnected";
    this._emit("stateChanged");
    if (hadVideo) this._emit("isLocalVideoStartedChanged");
    for (const resolve of this._disconnectWaiters.splice(0)) resolve();
    this._agent._removeCall(this);
  }
}

export default { CallClient };
