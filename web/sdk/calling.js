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
//   const group = agent.join({ groupId }, { audio: true, video: true });
//   call.on("stateChanged", () => console.log(call.state));
//   await call.mute(); await call.stopVideo(); await call.startScreenSharing(); await call.hangUp();
//
// Media model: the client offers only what it sends (`sendonly` microphone and camera m-lines, plus one while
// screen sharing) and says which is which (`tracks` of the `offer` request). Other participants' media arrives on
// m-lines the server adds by renegotiation (server `offer` events, answered with `answer` requests). The SDK is the
// polite peer of perfect negotiation: a server offer that crosses its own rolls the local offer back, and an
// `offer` refused with `Glare` is sent again once the server's offer is answered. All negotiation steps of a call
// run one after another on one promise chain.
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
/** Mean inbound audio level (0..1, RMS over the last poll interval) above which a remote participant counts as
 * speaking, when the server does not report `isSpeaking` itself. */
const SPEAKING_LEVEL = 0.02;
/** How many times in a row an `offer` refused with `Glare` is sent again before negotiation gives up. */
const MAX_GLARE_RETRIES = 20;
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
 * @typedef {{ audio?: boolean|MediaTrackConstraints, video?: boolean|MediaTrackConstraints, audioOptions?: { muted?: boolean }, videoOptions?: { localVideoStreams?: unknown[] } }} CallOptions
 *   `audio`/`video` may be getUserMedia constraints instead of `true` (e.g. `{ width: 320, height: 240, frameRate: 15 }`)
 * @typedef {"audio"|"camera"|"screenShare"} TrackSource
 * @typedef {{ speakersList: CommunicationUserIdentifier[], timestamp: Date }} DominantSpeakersInfo
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
  if (typeof target === "string") return target.startsWith("4:") ? identifierOf({ phoneNumber: target.slice(2) }) : { communicationUserId: target };
  if (target && typeof target.communicationUserId === "string") return { communicationUserId: target.communicationUserId };
  // A phone number (E.164): the server calls it through the SIP gateway.
  if (target && typeof target.phoneNumber === "string") return identifierOf({ phoneNumber: target.phoneNumber });
  throw sdkError("BadTarget", "a call target must be { communicationUserId } or { phoneNumber }");
}

/**
 * Reads what media the application asked for, in either this SDK's short form ({audio, video}) or the ACS
 * form ({audioOptions: {muted}, videoOptions: {localVideoStreams}}).
 * @param {CallOptions} [options]
 */
function mediaOptions(options = {}) {
  const isConstraints = (x) => typeof x === "object" && x !== null;
  const video = Boolean(options.video) || Boolean(options.videoOptions?.localVideoStreams?.length);
  const audio = options.audio !== false;
  const muted = Boolean(options.audioOptions?.muted) || options.audio === false;
  return {
    audio,
    video,
    muted,
    audioConstraints: isConstraints(options.audio) ? options.audio : true,
    // Simulcast sends three layers scaled down from the camera: ask for 1280x720 unless told otherwise.
    videoConstraints: isConstraints(options.video) ? options.video : options.simulcast ? { width: { ideal: 1280 }, height: { ideal: 720 } } : true,
    simulcast: Boolean(options.simulcast),
  };
}

/** Camera layers sent with `simulcast: true` (rids q/h/f: quarter, half and full resolution). */
const SIMULCAST_ENCODINGS = [
  { rid: "q", scaleResolutionDownBy: 4, maxBitrate: 150000 },
  { rid: "h", scaleResolutionDownBy: 2, maxBitrate: 500000 },
  { rid: "f", maxBitrate: 1500000 },
];

/**
 * The key of an identifier, a participant record or a raw id string ("" when none): the `communicationUserId`,
 * or the raw id (`4:+E164`) of a phone number.
 */
function idOf(x) {
  if (typeof x === "string") return x;
  return x?.communicationUserId || x?.rawId || x?.identifier?.communicationUserId || x?.identifier?.rawId || "";
}

/**
 * The identifier of a participant record or caller from the server: `{kind: "phoneNumber", phoneNumber, rawId}`
 * for a phone participant (SIP gateway), else `{communicationUserId}`.
 */
function identifierOf(info) {
  if (info && typeof info.phoneNumber === "string" && info.phoneNumber) {
    return { kind: "phoneNumber", phoneNumber: info.phoneNumber, rawId: info.rawId || info.communicationUserId || `4:${info.phoneNumber}` };
  }
  return { communicationUserId: info?.communicationUserId || "" };
}

/** DTMF tones `sendDtmf` takes: "0"-"9", "*", "#", "A"-"D", or the ACS names ("Num5", "Star", "Pound"). */
const DTMF_NAMES = { Star: "*", Pound: "#" };

/** @param {string} tone */
function dtmfTone(tone) {
  const t = String(tone);
  const named = DTMF_NAMES[t] ?? (/^Num[0-9]$/.test(t) ? t.slice(3) : t);
  if (!/^[0-9*#A-D]+$/.test(named) || named.length > 32) throw sdkError("BadArgument", `not a DTMF tone: ${JSON.stringify(t)}`);
  return named;
}

/** Call end code for a failed `startCall`/`join` request. */
function failureCode(code) {
  if (code === "Forbidden") return 403;
  if (code === "CallNotFound") return 404;
  if (code === "BadTarget" || code === "SelfCall" || code === "BadGroupId" || code === "AlreadyJoined" || code === "BadMessage") return 400;
  return 500;
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
 * A signed-in user's connection: starts and joins calls and receives incoming calls.
 * Events: `incomingCall` ({incomingCall}), `callsUpdated` ({added, removed}), `connectionStateChanged`
 * ({newValue, oldValue, reason}), `error` ({code, message, callId?}: server `error` events; those about a call
 * are also emitted as that call's `error` event).
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
   * @param {CommunicationUserIdentifier[]} participants exactly one: a communication user, or `{ phoneNumber: "+1..." }`
   *   (called through the SIP gateway; states `Connecting`, `Ringing` (180), `EarlyMedia` (183: the phone's audio
   *   plays), `Connected`)
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
    call._addRemoteParticipant({ communicationUserId: idOf(target), phoneNumber: target.phoneNumber, displayName: "", state: "Connecting", isMuted: false }, true);
    this._addCall(call);
    call._runOutgoing(target);
    return call;
  }

  /**
   * Joins a group call (ACS `callAgent.join({ groupId })`). Returns the Call at once in state "Connecting"; it
   * becomes "Connected" when the server confirmed the join, with `remoteParticipants` listing who is already there.
   * Only `{ groupId }` (a UUID the application chose, e.g. `crypto.randomUUID()`) is supported in this version.
   * @param {{ groupId: string }} locator
   * @param {CallOptions} [options] `{audio: true, video: true}`
   * @returns {Call}
   */
  join(locator, options = {}) {
    if (this._disposed) throw sdkError("Disposed", "the call agent is disposed");
    if (this.connectionState !== "Connected") throw sdkError("ConnectionClosed", "the signaling connection is closed");
    if (!locator || typeof locator.groupId !== "string" || locator.groupId === "") {
      if (locator && (locator.roomId || locator.meetingLink || locator.meetingId)) {
        throw sdkError("NotSupported", "only group calls ({ groupId }) can be joined in this version");
      }
      throw sdkError("BadArgument", "join needs { groupId }");
    }
    const call = new Call(this, "Outgoing", mediaOptions(options));
    call.groupId = locator.groupId;
    call.isGroupCall = true;
    call.state = "Connecting";
    this._addCall(call);
    call._runJoin(locator.groupId);
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
        const callId = msg.callId ?? e.callId;
        console.warn(`[switchboard] server error event${callId ? ` (call ${callId})` : ""}: ${e.code}: ${e.message}`);
        this._emit("error", { code: e.code, message: e.message, callId });
        const call = typeof callId === "string" ? this._callsById.get(callId) : undefined;
        if (call) call._emit("error", { code: e.code, message: e.message });
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
    /**
     * Who is calling: `{identifier, displayName}`; the identifier is `{communicationUserId}` for a user and
     * `{kind: "phoneNumber", phoneNumber: "+1555...", rawId: "4:+1555..."}` for a phone caller (SIP gateway).
     */
    this.callerInfo = {
      identifier: identifierOf(msg.caller),
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
      {
        communicationUserId: idOf(this.callerInfo.identifier),
        phoneNumber: this.callerInfo.identifier.phoneNumber,
        displayName: this.callerInfo.displayName,
        state: "Connected",
        isMuted: false,
      },
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
    call._startMedia(media);
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
 * A remote video stream of a participant: its camera (`mediaStreamType` "Video") or its screen share
 * ("ScreenSharing"). Events: `isAvailableChanged`.
 */
export class RemoteVideoStream extends Emitter {
  /**
   * @param {number} id
   * @param {"Video"|"ScreenSharing"} mediaStreamType
   * @param {MediaStreamTrack} [track]
   */
  constructor(id, mediaStreamType = "Video", track) {
    super();
    /** Unique within the page. */
    this.id = id;
    /** "Video" (camera) or "ScreenSharing". */
    this.mediaStreamType = mediaStreamType;
    /** True while video frames of this stream are being decoded. */
    this.isAvailable = false;
    /** The MediaStream holding the received video track (attach it to a <video> element). */
    this.mediaStream = new MediaStream(track ? [track] : []);
    /** The size given to setPreferredSize, if any. */
    this.preferredSize = null;
  }
  /** ACS-style accessor. @returns {Promise<MediaStream>} */
  async getMediaStream() {
    return this.mediaStream;
  }
  /**
   * Tells the server the size this stream is rendered at (`setPreferredVideoSize`), so that for a simulcast
   * publisher it forwards the smallest layer at least that large. `{width: 0, height: 0}` means not rendered:
   * the server then forwards nothing for it.
   * @param {{width: number, height: number}} size
   * @returns {Promise<void>}
   */
  async setPreferredSize(size) {
    const width = Number(size?.width);
    const height = Number(size?.height);
    const hidden = width === 0 && height === 0;
    if (!hidden && (!(width > 0) || !(height > 0))) throw sdkError("BadArgument", "setPreferredSize needs { width, height } > 0, or 0 x 0");
    this.preferredSize = { width, height };
    if (this._sendPreferredSize) await this._sendPreferredSize(Math.round(width), Math.round(height));
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
  /** @param {{communicationUserId: string, displayName?: string, state?: string, isMuted?: boolean, isSpeaking?: boolean}} info */
  constructor(info) {
    super();
    /** `{communicationUserId}`, or `{kind: "phoneNumber", phoneNumber, rawId}` for a phone participant. */
    this.identifier = identifierOf(info);
    this.displayName = info.displayName || "";
    /** @type {RemoteParticipantState} */
    this.state = /** @type {RemoteParticipantState} */ (info.state || "Connecting");
    this.isMuted = Boolean(info.isMuted);
    /** From the server (`participantsUpdated`) when it reports it, else from the received audio level. */
    this.isSpeaking = Boolean(info.isSpeaking);
    /** @type {CallEndReason|undefined} */
    this.callEndReason = undefined;
    /** Camera ("Video") first, then screen shares ("ScreenSharing"). @type {RemoteVideoStream[]} */
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
    if (typeof info.isSpeaking === "boolean") this._setSpeaking(info.isSpeaking);
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

  /** @private */
  _addVideoStream(stream) {
    if (stream.mediaStreamType === "Video") {
      const firstShare = this.videoStreams.findIndex((s) => s.mediaStreamType !== "Video");
      this.videoStreams.splice(firstShare < 0 ? this.videoStreams.length : firstShare, 0, stream);
    } else {
      this.videoStreams.push(stream);
    }
    this._emit("videoStreamsUpdated", { added: [stream], removed: [] });
  }

  /** @private */
  _removeVideoStream(stream) {
    const i = this.videoStreams.indexOf(stream);
    if (i < 0) return;
    this.videoStreams.splice(i, 1);
    stream._setAvailable(false);
    this._emit("videoStreamsUpdated", { added: [], removed: [stream] });
  }
}

let nextStreamId = 1;

/** @returns {{promise: Promise<void>, resolve: Function, reject: Function}} */
function deferred() {
  let resolve;
  let reject;
  const promise = new Promise((res, rej) => {
    resolve = res;
    reject = rej;
  });
  promise.catch(() => {}); // a waiter nobody awaits must not become an unhandled rejection
  return { promise, resolve, reject };
}

/**
 * A call (1:1 or group). Events: `stateChanged`, `idChanged`, `remoteParticipantsUpdated` ({added, removed}),
 * `isMutedChanged`, `isLocalVideoStartedChanged`, `localVideoStreamsUpdated` ({added, removed}),
 * `isScreenSharingOnChanged`, `dominantSpeakersChanged` ({dominantSpeakers}), `error` ({code, message}: server
 * `error` events about this call, e.g. `CodecUnsupported`, and renegotiation failures after the call connected).
 */
export class Call extends Emitter {
  /**
   * @param {CallAgent} agent
   * @param {"Incoming"|"Outgoing"} direction
   * @param {ReturnType<typeof mediaOptions>} media
   */
  constructor(agent, direction, media) {
    super();
    this._agent = agent;
    /** The server's call id ("" until the server assigned it). */
    this.id = "";
    /** "Incoming" or "Outgoing" (group calls are "Outgoing"). */
    this.direction = direction;
    /** True for calls made with `agent.join({ groupId })`. */
    this.isGroupCall = false;
    /** The group id of a group call ("" otherwise). */
    this.groupId = "";
    /** @type {CallState} */
    this.state = "None";
    /** @type {CallEndReason|undefined} set when the call is Disconnected */
    this.callEndReason = undefined;
    /** Whether the local microphone is muted. */
    this.isMuted = media.muted;
    /** Whether the local camera is sending. */
    this.isLocalVideoStarted = false;
    /** Whether this participant is sharing its screen. */
    this.isScreenSharingOn = false;
    /** The server's dominant speakers, loudest first (ACS shape). @type {DominantSpeakersInfo} */
    this.dominantSpeakers = { speakersList: [], timestamp: new Date() };
    /** @type {RemoteParticipant[]} */
    this._remote = [];
    /** The local camera and microphone tracks (for a self-view <video muted>). */
    this.localMediaStream = new MediaStream();
    /** Every track received from the other participants (audio and video). */
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
    /** Screen share: the track, the stream it came in, whether the SDK opened it (and so stops it), its transceiver. */
    this._screen = /** @type {{track: MediaStreamTrack, stream: MediaStream, owned: boolean, transceiver: RTCRtpTransceiver|null, onEnded: Function}|null} */ (null);
    /** Transceivers this side sends on (never remote media). @type {Set<RTCRtpTransceiver>} */
    this._ownTransceivers = new Set();
    /** mid -> what the server said it carries: {communicationUserId, source}. @type {Map<string, {communicationUserId: string, source?: string}>} */
    this._midInfo = new Map();
    /** mid -> the remote track attached to a participant. @type {Map<string, {mid: string, participant: RemoteParticipant, source: TrackSource, track: MediaStreamTrack, stream: RemoteVideoStream|null, audioElement: HTMLAudioElement|null}>} */
    this._attached = new Map();
    /** Serialises every negotiation step of this call. */
    this._chain = Promise.resolve();
    /** Resolved when media negotiation may start (the call has its id and local media was acquired). */
    this._mediaReady = deferred();
    this._mediaStarted = false;
    /** @type {Promise<RTCPeerConnection>|null} */
    this._pcPromise = null;
    /** Whether an `offer` step is queued and not started. */
    this._offerQueued = false;
    /** Waiters resolved when an offer made after they were registered is answered. @type {ReturnType<typeof deferred>[]} */
    this._offerWaiters = [];
    this._glareRetries = 0;
    /** Diagnostics: offers sent, refused with Glare, server offers applied (`crossed`: while ours was out). */
    this._negotiationCounts = { offers: 0, glare: 0, serverOffers: 0, crossed: 0 };
    /** Server `offer` events not applied yet. @type {object[]} */
    this._serverOffers = [];
    /** Set while an offer step awaits its response: wakes it when a server offer arrives. @type {Function|null} */
    this._wakeOfferStep = null;
    /** True once the first offer/answer completed. */
    this._negotiated = false;
    /** True once the server reported `isSpeaking` in an update: the local audio-level estimate is then off. */
    this._serverSpeaking = false;
    this._pollTimer = null;
    this._polling = false;
    /** track id -> {frames, at} and {energy, duration} from the last poll. */
    this._statsMemory = new Map();
    this._hangUpRequested = false;
    this._forEveryone = false;
    this._mutePending = false;
    /** @type {Function[]} resolved when the call reaches Disconnected */
    this._disconnectWaiters = [];
  }

  /** The other participants (copy). @returns {RemoteParticipant[]} */
  get remoteParticipants() {
    return [...this._remote];
  }

  /** ACS-style: the local video streams being sent (camera while on, screen share while sharing). */
  get localVideoStreams() {
    const out = [];
    if (this._videoTrack) out.push({ mediaStreamType: "Video", mediaStream: new MediaStream([this._videoTrack]) });
    if (this._screen) out.push({ mediaStreamType: "ScreenSharing", mediaStream: new MediaStream([this._screen.track]) });
    return out;
  }

  /**
   * Diagnostics: the remote tracks received and whose they are, as the server's offers mapped them
   * (`[{mid, communicationUserId, source: "audio"|"camera"|"screenShare", track}]`). Match `track.id` with the
   * `trackIdentifier` (or `mid`) of inbound-rtp entries in `getStats()`.
   */
  get remoteTracks() {
    return [...this._attached.values()].map((e) => ({ mid: e.mid, communicationUserId: idOf(e.participant.identifier), source: e.source, track: e.track }));
  }

  /**
   * Sends DTMF: each tone reaches the other participants as a `dtmfReceived` event; a phone participant (SIP
   * gateway) hears it as RFC 4733 telephone-events. Takes "0"-"9", "*", "#", "A"-"D" (several at once are sent
   * in order) or the ACS names "Num0"-"Num9", "Star", "Pound". Only in a connected call.
   * @param {string} tone
   * @returns {Promise<void>}
   */
  async sendDtmf(tone) {
    this._assertActive("sendDtmf");
    const tones = dtmfTone(tone);
    if (!this.id) throw sdkError("InvalidState", "the call is not connected yet");
    await this._agent._request("sendDtmf", { callId: this.id, tones });
  }

  /**
   * Dials a phone number into this group call through the server's SIP gateway (ACS
   * `call.addParticipant(identifier)`). Returns the new RemoteParticipant at once, `state` "Connecting"; it moves to
   * "Ringing" or "EarlyMedia" as the carrier reports, "Connected" when the phone answers, and is removed
   * (`remoteParticipantsUpdated`, state "Disconnected") when the call to it fails or ends. Only group calls take
   * added participants.
   * @param {{phoneNumber: string}} identifier  E.164, e.g. `{phoneNumber: "+15550100"}`
   * @returns {RemoteParticipant}
   */
  addParticipant(identifier) {
    this._assertActive("addParticipant");
    const phoneNumber = identifier?.phoneNumber;
    if (typeof phoneNumber !== "string" || !/^\+\d{1,15}$/.test(phoneNumber)) {
      throw sdkError("BadTarget", 'addParticipant takes {phoneNumber: "+E164"}');
    }
    if (!this.id) throw sdkError("InvalidState", "the call is not connected yet");
    const record = { communicationUserId: `4:${phoneNumber}`, phoneNumber, state: "Connecting" };
    this._onParticipantsUpdated({ added: [record] });
    const participant = this._remote.find((p) => idOf(p.identifier) === record.communicationUserId);
    this._agent._request("addParticipant", { callId: this.id, target: { phoneNumber } }).catch((e) => {
      console.warn(`[switchboard] call ${this.id}: adding ${phoneNumber} failed: ${e.message || e}`);
      this._onParticipantsUpdated({ removed: [record] });
    });
    return participant;
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
   * Turns the camera on and sends it on the call's camera transceiver (no renegotiation).
   * @returns {Promise<void>}
   */
  async startVideo() {
    this._assertActive("startVideo");
    if (this._videoTrack) return;
    let stream;
    try {
      stream = await navigator.mediaDevices.getUserMedia({ video: this._media.videoConstraints });
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
    if (this._videoTransceiver && this.peerConnection?.signalingState !== "closed") await this._videoTransceiver.sender.replaceTrack(track);
    this.isLocalVideoStarted = true;
    this._emit("isLocalVideoStartedChanged");
    this._emit("localVideoStreamsUpdated", { added: this.localVideoStreams.filter((s) => s.mediaStreamType === "Video"), removed: [] });
  }

  /**
   * Turns the camera off: the camera transceiver stays and sends nothing (`replaceTrack(null)`, no
   * renegotiation), and the camera is released.
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
   * Shares a screen: adds a `sendonly` video m-line carrying the video track of `stream` (or of
   * `getDisplayMedia()` when none is given) and renegotiates. Resolves once the server accepted the new offer.
   * The other participants get it as a RemoteVideoStream of type "ScreenSharing". Ending the track (the browser's
   * own "Stop sharing" button) stops sharing.
   * @param {MediaStream} [stream] e.g. `canvas.captureStream(15)`; the SDK stops only tracks it opened itself
   * @returns {Promise<void>}
   */
  async startScreenSharing(stream) {
    this._assertActive("startScreenSharing");
    if (this._screen) return;
    let owned = false;
    let source = stream;
    if (!source) {
      if (typeof navigator === "undefined" || !navigator.mediaDevices?.getDisplayMedia) throw sdkError("MediaError", "screen capture is not available in this browser");
      try {
        source = await navigator.mediaDevices.getDisplayMedia({ video: true, audio: false });
      } catch (e) {
        throw sdkError("MediaError", `cannot capture the screen: ${e.message}`, { cause: e });
      }
      owned = true;
    }
    const track = typeof source?.getVideoTracks === "function" ? source.getVideoTracks()[0] : undefined;
    if (!track) {
      if (owned) source.getTracks().forEach((t) => t.stop());
      throw sdkError("BadArgument", "startScreenSharing needs a MediaStream with a video track");
    }
    if (this.state === "Disconnected" || this.state === "Disconnecting" || this._screen) {
      if (owned) source.getTracks().forEach((t) => t.stop());
      if (this._screen) return;
      throw sdkError("InvalidState", "cannot share the screen: the call has ended");
    }
    if (!track.contentHint) track.contentHint = "detail";
    const screen = { track, stream: source, owned, transceiver: null, onEnded: () => this.stopScreenSharing().catch(() => {}) };
    this._screen = screen;
    track.addEventListener("ended", screen.onEnded);
    this.isScreenSharingOn = true;
    this._emit("isScreenSharingOnChanged");
    this._emit("localVideoStreamsUpdated", { added: [{ mediaStreamType: "ScreenSharing", mediaStream: new MediaStream([track]) }], removed: [] });
    // Before media negotiation started, the peer connection is created with the share and the first offer has it.
    if (!this._mediaStarted) return;
    await this._enqueue(async () => {
      const pc = await this._ensurePeerConnection();
      if (this._screen === screen) this._addScreenTransceiver(pc);
    });
    await this._requestOffer();
  }

  /**
   * Stops sharing: stops the screen-share transceiver and renegotiates (the other participants' stream goes away).
   * @returns {Promise<void>}
   */
  async stopScreenSharing() {
    const screen = this._screen;
    if (!screen) return;
    this._screen = null;
    screen.track.removeEventListener("ended", screen.onEnded);
    if (screen.owned) screen.stream.getTracks().forEach((t) => t.stop());
    this.isScreenSharingOn = false;
    this._emit("isScreenSharingOnChanged");
    this._emit("localVideoStreamsUpdated", { added: [], removed: [{ mediaStreamType: "ScreenSharing" }] });
    if (!this._mediaStarted || this.state === "Disconnected") return;
    await this._enqueue(async () => {
      const transceiver = screen.transceiver;
      if (!transceiver || this.peerConnection?.signalingState === "closed") return;
      try {
        transceiver.sender.replaceTrack(null).catch(() => {});
        transceiver.stop();
      } catch {}
    });
    await this._requestOffer();
  }

  /**
   * Leaves the call. A 1:1 call ends for both. In a group call the others stay, unless `forEveryone` is true and
   * this participant is the organizer (the first to join): then the call ends for all (code 0, subcode 5001). A
   * non-organizer's `forEveryone` is refused by the server (`Forbidden`): the SDK then emits `error`
   * ({code: "Forbidden"}) and just leaves.
   * Resolves once the call is Disconnected.
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
      // Without an id yet, _runOutgoing/_runJoin send the hangUp as soon as the server assigned one.
      if (this.id) this._sendHangUp();
    }
    await disconnected;
  }

  /** Sends `hangUp`, then ends the call when the server's Disconnected event came or after a short wait. @private */
  async _sendHangUp() {
    const disconnected = new Promise((resolve) => this._disconnectWaiters.push(resolve));
    try {
      try {
        await this._agent._request("hangUp", { callId: this.id, forEveryone: this._forEveryone });
      } catch (e) {
        if (e.code !== "Forbidden" || !this._forEveryone) throw e;
        console.warn(`[switchboard] call ${this.id}: only the organizer may end the call for everyone (${e.message}); leaving instead`);
        this._emit("error", { code: e.code, message: `cannot end the call for everyone: ${e.message}` });
        this._forEveryone = false;
        await this._agent._request("hangUp", { callId: this.id, forEveryone: false });
      }
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

  // ----- internals: call control -----

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

  /** Caller side: startCall, then media. @private */
  async _runOutgoing(target) {
    await Promise.resolve(); // let the application subscribe to events first
    this._setState("Connecting");
    const media = this._acquireLocalMedia();
    let result;
    try {
      result = await this._agent._request("startCall", { targets: [target], video: this._media.video });
    } catch (e) {
      await media.catch(() => {});
      this._end({ code: failureCode(e.code), subcode: 0, message: `startCall failed: ${e.code}: ${e.message}` });
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
    this._startMedia(media);
  }

  /** Group call: join, then media. @private */
  async _runJoin(groupId) {
    await Promise.resolve();
    const media = this._acquireLocalMedia();
    let result;
    try {
      result = await this._agent._request("join", { groupId, video: this._media.video });
    } catch (e) {
      await media.catch(() => {});
      this._end({ code: failureCode(e.code), subcode: 0, message: `join failed: ${e.code}: ${e.message}` });
      return;
    }
    if (!result || typeof result.callId !== "string") {
      this._end({ code: 500, subcode: 0, message: "join response has no callId" });
      return;
    }
    // Who is already there (before the replay of early events, which may update or remove them).
    const self = this._agent.communicationUserId;
    const added = [];
    for (const info of Array.isArray(result.participants) ? result.participants : []) {
      const id = idOf(info);
      if (!id || id === self || this._remote.some((p) => idOf(p.identifier) === id)) continue;
      added.push(this._addRemoteParticipant({ ...info, communicationUserId: id }, false));
    }
    this._agent._bindCallId(this, result.callId);
    this._emit("idChanged");
    if (added.length) this._emit("remoteParticipantsUpdated", { added, removed: [] });
    if (this.state === "Disconnected") return;
    if (this._hangUpRequested) {
      await media.catch(() => {});
      this._sendHangUp();
      return;
    }
    this._setState("Connected");
    this._startMedia(media);
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
    const audio = wantAudio ? this._media.audioConstraints : false;
    const attempts = [{ audio, video: wantVideo ? this._media.videoConstraints : false }];
    if (wantAudio && wantVideo) attempts.push({ audio, video: false });
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
      this._emit("localVideoStreamsUpdated", { added: this.localVideoStreams.filter((s) => s.mediaStreamType === "Video"), removed: [] });
    }
  }

  /**
   * Starts the media session once the call has its id: peer connection, first offer. The server then adds the
   * other participants' media by renegotiation.
   * @param {Promise<void>} media local media being acquired
   * @private
   */
  _startMedia(media) {
    this._mediaStarted = true;
    media.catch(() => {}).then(() => this._mediaReady.resolve());
    if (this.isMuted || this._mutePending) {
      this._mutePending = false;
      this._agent._request("mute", { callId: this.id }).catch((e) => console.warn("[switchboard] mute failed:", e.message));
    }
    this._enqueue(() => this._ensurePeerConnection());
    this._requestOffer().catch(() => {}); // failures are handled on the chain
  }

  // ----- internals: negotiation (one promise chain per call) -----

  /**
   * Runs `step` after every negotiation step queued before it. Failures are reported (and end the call when the
   * media session never came up); the returned promise still rejects for callers that await it.
   * @template T
   * @param {() => Promise<T>} step
   * @returns {Promise<T|undefined>}
   * @private
   */
  _enqueue(step) {
    const run = this._chain.then(() => (this.state === "Disconnected" ? undefined : step()));
    this._chain = run.catch((e) => this._negotiationFailed(e));
    return run;
  }

  /** @private */
  _negotiationFailed(e) {
    if (this.state === "Disconnected") return;
    // The socket is closing (a request made between `close()` and the `close` event fails at once): the agent's close
    // handling ends the call with the connection-lost reason, not as a failed negotiation.
    if (e?.code === "ConnectionClosed") return;
    const text = `${e?.code ? `${e.code}: ` : ""}${e?.message || e}`;
    if (!this._negotiated) {
      console.error(`[switchboard] call ${this.id}: media negotiation failed:`, e);
      if (this.id) this._agent._request("hangUp", { callId: this.id, forEveryone: false }).catch(() => {});
      this._end({ code: 500, subcode: 0, message: `media negotiation failed: ${text}` });
      return;
    }
    console.warn(`[switchboard] call ${this.id}: renegotiation failed: ${text}`);
    this._emit("error", { code: e?.code || "NegotiationFailed", message: `renegotiation failed: ${e?.message || e}` });
  }

  /**
   * The call's peer connection, created on first use once local media is ready: one `sendonly` audio and one
   * `sendonly` video transceiver (kept while the camera is off), plus the screen share if one was started.
   * @returns {Promise<RTCPeerConnection>}
   * @private
   */
  _ensurePeerConnection() {
    if (!this._pcPromise) {
      this._pcPromise = (async () => {
        await this._mediaReady.promise;
        if (this.state === "Disconnected") throw sdkError("InvalidState", "the call ended");
        const pc = new RTCPeerConnection({ bundlePolicy: "max-bundle", rtcpMuxPolicy: "require" });
        this.peerConnection = pc;
        this._audioTransceiver = pc.addTransceiver(this._audioTrack || "audio", { direction: "sendonly", streams: [this.localMediaStream] });
        const videoInit = { direction: "sendonly", streams: [this.localMediaStream] };
        if (this._media.simulcast) videoInit.sendEncodings = SIMULCAST_ENCODINGS.map((e) => ({ ...e }));
        this._videoTransceiver = pc.addTransceiver(this._videoTrack || "video", videoInit);
        this._ownTransceivers.add(this._audioTransceiver);
        this._ownTransceivers.add(this._videoTransceiver);
        if (this._screen) this._addScreenTransceiver(pc);
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
        // Remote tracks are attached from the transceivers (by mid, as the server offer's `tracks` maps them) once
        // each server offer is answered: see _reconcileRemoteTracks.
        return pc;
      })();
    }
    return this._pcPromise;
  }

  /** @private */
  _addScreenTransceiver(pc) {
    const screen = this._screen;
    if (!screen || screen.transceiver) return;
    screen.transceiver = pc.addTransceiver(screen.track, { direction: "sendonly", streams: [screen.stream] });
    this._ownTransceivers.add(screen.transceiver);
  }

  /** What each of our sending m-lines carries, for the `offer` request. @private */
  _localTrackList() {
    const out = [];
    const add = (transceiver, source) => {
      if (!transceiver || transceiver.mid == null || transceiver.direction === "stopped" || transceiver.currentDirection === "stopped") return;
      out.push({ mid: transceiver.mid, source });
    };
    add(this._audioTransceiver, "audio");
    add(this._videoTransceiver, "camera");
    add(this._screen?.transceiver, "screenShare");
    return out;
  }

  /**
   * Queues an offer (unless one is queued and not started yet, which will cover this change too). Resolves when
   * an offer made after this call was answered by the server.
   * @returns {Promise<void>}
   * @private
   */
  _requestOffer() {
    const waiter = deferred();
    this._offerWaiters.push(waiter);
    if (!this._offerQueued) {
      this._offerQueued = true;
      this._enqueue(() => this._offerStep()).catch(() => {});
    }
    return waiter.promise;
  }

  /**
   * One client offer: createOffer, setLocalDescription, `offer` request, apply the answer. While the request is
   * out, a server offer that crosses it is applied at once (the polite peer: setRemoteDescription rolls our offer
   * back); the server then refuses our offer with `Glare` (or answers an offer we no longer have): we offer again.
   * @private
   */
  async _offerStep() {
    this._offerQueued = false;
    const waiters = this._offerWaiters.splice(0);
    const finish = (error) => {
      for (const w of waiters) error ? w.reject(error) : w.resolve();
    };
    try {
      const pc = await this._ensurePeerConnection();
      if (this.state === "Disconnected") return finish();
      if (this._glareRetries > 0 && this._serverOffers.length === 0) {
        // Refused with Glare before the server's own offer got here: give it time to arrive (it wakes us).
        await Promise.race([sleep(Math.min(1000 * this._glareRetries, 3000)), new Promise((resolve) => (this._wakeOfferStep = resolve))]);
        this._wakeOfferStep = null;
        if (this.state === "Disconnected") return finish();
      }
      while (this._serverOffers.length) await this._applyServerOffer(this._serverOffers.shift());
      await pc.setLocalDescription(await pc.createOffer());
      const sdp = pc.localDescription.sdp;
      const tracks = this._localTrackList();
      this._negotiationCounts.offers++;
      const response = this._agent._request("offer", { callId: this.id, sdp, tracks }).then(
        (result) => ({ result }),
        (error) => ({ error }),
      );
      let crossed = false;
      let outcome;
      for (;;) {
        if (this._serverOffers.length && this.state !== "Disconnected") {
          crossed = true;
          this._negotiationCounts.crossed++;
          await this._applyServerOffer(this._serverOffers.shift());
          continue;
        }
        const wake = new Promise((resolve) => (this._wakeOfferStep = resolve));
        outcome = await Promise.race([response, wake.then(() => null)]);
        this._wakeOfferStep = null;
        if (outcome) break;
        if (this.state === "Disconnected") return finish();
      }
      if (this.state === "Disconnected") return finish();
      if (outcome.error) {
        if (outcome.error.code !== "Glare") throw outcome.error;
        this._negotiationCounts.glare++;
        if (pc.signalingState === "have-local-offer") await pc.setLocalDescription({ type: "rollback" });
        return this._offerAgain(waiters, "Glare");
      }
      if (crossed || pc.signalingState !== "have-local-offer") return this._offerAgain(waiters, "our offer was rolled back");
      if (!outcome.result || typeof outcome.result.sdp !== "string") throw sdkError("BadSdp", "the offer response has no SDP answer");
      await pc.setRemoteDescription({ type: "answer", sdp: outcome.result.sdp });
      this._negotiated = true;
      this._glareRetries = 0;
      this._reconcileRemoteTracks();
      this._startPolling();
      finish();
    } catch (e) {
      finish(e);
      throw e;
    }
  }

  /** Offers again after glare, keeping the waiters of the offer that did not go through. @private */
  _offerAgain(waiters, why) {
    this._glareRetries++;
    if (this._glareRetries > MAX_GLARE_RETRIES) {
      this._glareRetries = 0;
      throw sdkError("Glare", `offer refused ${MAX_GLARE_RETRIES} times in a row (${why})`);
    }
    this._offerWaiters.unshift(...waiters);
    if (!this._offerQueued) {
      this._offerQueued = true;
      this._enqueue(() => this._offerStep()).catch(() => {});
    }
  }

  /** A server `offer` event: queued on the chain, or handed to the offer step that waits for its response. @private */
  _onServerOffer(msg) {
    if (typeof msg.sdp !== "string") {
      console.warn(`[switchboard] call ${this.id}: server offer without sdp`);
      return;
    }
    this._serverOffers.push(msg);
    if (this._wakeOfferStep) this._wakeOfferStep();
    this._enqueue(async () => {
      while (this._serverOffers.length) await this._applyServerOffer(this._serverOffers.shift());
    }).catch(() => {});
  }

  /**
   * Applies a server offer and answers it: setRemoteDescription (rolling back an outstanding local offer),
   * createAnswer, setLocalDescription, `answer` request; then attaches the remote tracks it added and detaches
   * the ones it stopped.
   * @private
   */
  async _applyServerOffer(msg) {
    const pc = await this._ensurePeerConnection();
    if (this.state === "Disconnected") return;
    for (const t of Array.isArray(msg.tracks) ? msg.tracks : []) {
      if (t && t.mid != null && typeof t.communicationUserId === "string") {
        this._midInfo.set(String(t.mid), { communicationUserId: t.communicationUserId, source: t.source });
      }
    }
    this._negotiationCounts.serverOffers++;
    await pc.setRemoteDescription({ type: "offer", sdp: msg.sdp });
    await pc.setLocalDescription(await pc.createAnswer());
    const sdp = pc.localDescription.sdp;
    this._reconcileRemoteTracks();
    this._startPolling();
    try {
      await this._agent._request("answer", { callId: this.id, sdp });
    } catch (e) {
      if (this.state === "Disconnected" || e.code === "ConnectionClosed") return;
      console.warn(`[switchboard] call ${this.id}: answer refused: ${e.code}: ${e.message}`);
      this._emit("error", { code: e.code, message: `answer refused: ${e.message}` });
    }
  }

  // ----- internals: remote media -----

  /**
   * Matches the peer connection's receiving transceivers with what the server's offers said they carry, and
   * attaches/detaches remote tracks to/from participants accordingly.
   * @private
   */
  _reconcileRemoteTracks() {
    const pc = this.peerConnection;
    if (!pc || pc.signalingState === "closed") return;
    const present = new Set();
    for (const transceiver of pc.getTransceivers()) {
      if (this._ownTransceivers.has(transceiver) || transceiver.mid == null) continue;
      const mid = transceiver.mid;
      present.add(mid);
      const dir = transceiver.currentDirection;
      const receiving = dir === "recvonly" || dir === "sendrecv";
      const info = this._midInfo.get(mid);
      const participant = info && this._remote.find((p) => idOf(p.identifier) === info.communicationUserId);
      const track = transceiver.receiver.track;
      const source = /** @type {TrackSource} */ (track.kind === "audio" ? "audio" : info?.source === "screenShare" ? "screenShare" : "camera");
      const current = this._attached.get(mid);
      if (!receiving || !participant) {
        if (current) this._detach(mid);
        continue;
      }
      if (current && current.participant === participant && current.source === source && current.track === track) continue;
      if (current) this._detach(mid);
      this._attach(mid, track, participant, source);
    }
    for (const mid of [...this._attached.keys()]) if (!present.has(mid)) this._detach(mid);
  }

  /** @private */
  _attach(mid, track, participant, source) {
    const entry = { mid, participant, source, track, stream: null, audioElement: null };
    this._attached.set(mid, entry);
    this.remoteMediaStream.addTrack(track);
    if (source === "audio") {
      // Chromium reports remote audio levels only for tracks that are played.
      if (typeof document !== "undefined" && document.body) {
        const el = document.createElement("audio");
        el.autoplay = true;
        el.hidden = true;
        el.setAttribute("data-switchboard-call", this.id);
        el.setAttribute("data-user-id", idOf(participant.identifier));
        el.srcObject = new MediaStream([track]);
        document.body.appendChild(el);
        el.play().catch(() => {}); // autoplay may wait for a user gesture
        entry.audioElement = el;
      }
      return;
    }
    entry.stream = new RemoteVideoStream(nextStreamId++, source === "screenShare" ? "ScreenSharing" : "Video", track);
    entry.stream._sendPreferredSize = (width, height) =>
      this._agent._request("setPreferredVideoSize", { callId: this.id, mid, width, height }).then(() => {});
    participant._addVideoStream(entry.stream);
  }

  /** @private */
  _detach(mid) {
    const entry = this._attached.get(mid);
    if (!entry) return;
    this._attached.delete(mid);
    this._statsMemory.delete(entry.track.id);
    this.remoteMediaStream.removeTrack(entry.track);
    if (entry.audioElement) {
      entry.audioElement.srcObject = null;
      entry.audioElement.remove();
    }
    if (entry.stream) entry.participant._removeVideoStream(entry.stream);
  }

  /** Samples getStats() for remote video availability and (unless the server reports it) speaking. @private */
  _startPolling() {
    if (this._pollTimer) return;
    this._pollTimer = setInterval(() => this._poll(), MEDIA_POLL_MS);
  }

  /** @private */
  async _poll() {
    const pc = this.peerConnection;
    if (!pc || pc.signalingState === "closed" || this._polling) return;
    this._polling = true;
    let report;
    try {
      report = await pc.getStats();
    } catch {
      return;
    } finally {
      this._polling = false;
    }
    if (this.state === "Disconnected") return;
    const byTrack = new Map();
    const byMid = new Map();
    report.forEach((s) => {
      if (s.type !== "inbound-rtp") return;
      if (s.trackIdentifier) byTrack.set(s.trackIdentifier, s);
      if (s.mid != null) byMid.set(String(s.mid), s);
    });
    const now = Date.now();
    const levels = new Map();
    for (const entry of this._attached.values()) {
      const s = byTrack.get(entry.track.id) || byMid.get(entry.mid);
      const memory = this._statsMemory.get(entry.track.id) || { frames: 0, at: 0, energy: 0, duration: 0 };
      if (entry.stream) {
        const frames = s?.framesDecoded || 0;
        if (frames > memory.frames) Object.assign(memory, { frames, at: now });
        entry.stream._setAvailable(frames > 0 && now - memory.at < VIDEO_STALL_MS);
      } else if (s) {
        // Mean level over the last interval, from the energy counters; the instantaneous level as fallback.
        const energy = s.totalAudioEnergy ?? 0;
        const duration = s.totalSamplesDuration ?? 0;
        let level = s.audioLevel || 0;
        if (duration > memory.duration && energy >= memory.energy) level = Math.sqrt((energy - memory.energy) / (duration - memory.duration));
        Object.assign(memory, { energy, duration });
        const p = entry.participant;
        levels.set(p, Math.max(levels.get(p) || 0, level));
      }
      this._statsMemory.set(entry.track.id, memory);
    }
    if (this._serverSpeaking) return;
    for (const p of this._remote) p._setSpeaking(!p.isMuted && (levels.get(p) || 0) > SPEAKING_LEVEL);
  }

  // ----- internals: events -----

  /**
   * @param {{communicationUserId: string, displayName?: string, state?: string, isMuted?: boolean, isSpeaking?: boolean}} info
   * @param {boolean} assumed known locally (target / caller), not yet reported by the server
   * @private
   */
  _addRemoteParticipant(info, assumed) {
    const p = new RemoteParticipant(info);
    p._assumed = assumed;
    this._remote.push(p);
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
      case "offer":
        this._onServerOffer(msg);
        return;
      case "layersWanted":
        this._onLayersWanted(msg);
        return;
      case "dtmfReceived":
        // Another participant's key press: a phone caller's DTMF (RFC 4733, SIP INFO or in-band) or a sendDtmf.
        this._emit("dtmfReceived", { tone: String(msg.tone) });
        return;
      case "dominantSpeakersChanged": {
        const list = Array.isArray(msg.speakers) ? msg.speakers : [];
        this.dominantSpeakers = {
          speakersList: list.map(idOf).filter(Boolean).map((communicationUserId) => ({ communicationUserId })),
          timestamp: new Date(),
        };
        this._emit("dominantSpeakersChanged", { dominantSpeakers: this.dominantSpeakers });
        return;
      }
      default:
        console.warn(`[switchboard] call ${this.id}: ignoring event ${JSON.stringify(msg.type)}`);
    }
  }

  /**
   * Dynacast: the server says which simulcast layers (rids) of our sending m-line `mid` someone watches; the others
   * are paused (`encodings[i].active = false`), so the encoder and the uplink do not spend on them.
   * @private
   */
  async _onLayersWanted(msg) {
    const pc = this.peerConnection;
    const rids = Array.isArray(msg.rids) ? msg.rids : [];
    if (!pc || pc.signalingState === "closed" || typeof msg.mid !== "string" || rids.length === 0) return;
    const transceiver = pc.getTransceivers().find((t) => t.mid === msg.mid);
    if (!transceiver) return;
    const params = transceiver.sender.getParameters();
    if (!params.encodings || params.encodings.length < 2) return;
    let changed = false;
    for (const e of params.encodings) {
      const active = !e.rid || rids.includes(e.rid);
      if (e.active !== active) {
        e.active = active;
        changed = true;
      }
    }
    if (!changed) return;
    try {
      await transceiver.sender.setParameters(params);
    } catch (e) {
      console.warn(`[switchboard] call ${this.id}: pausing simulcast layers failed: ${e}`);
    }
  }

  /** @private */
  _onParticipantsUpdated(msg) {
    const self = this._agent.communicationUserId;
    const added = [];
    const removed = [];
    const apply = (info, isUpdate) => {
      const id = idOf(info);
      if (!id || id === self) return;
      const record = { ...info, communicationUserId: id };
      if (isUpdate && typeof info.isSpeaking === "boolean") this._serverSpeaking = true;
      const existing = this._remote.find((p) => idOf(p.identifier) === id);
      if (existing) {
        existing._assumed = false;
        existing._update(record);
      } else {
        added.push(this._addRemoteParticipant(record, false));
      }
    };
    for (const info of msg.added || []) apply(info, false);
    for (const info of msg.updated || []) apply(info, true);
    for (const info of msg.removed || []) {
      const id = idOf(info);
      const i = this._remote.findIndex((p) => idOf(p.identifier) === id);
      if (i < 0) continue;
      const p = this._remote[i];
      for (const [mid, entry] of [...this._attached]) if (entry.participant === p) this._detach(mid);
      for (const [mid, info] of [...this._midInfo]) if (info.communicationUserId === id) this._midInfo.delete(mid);
      this._remote.splice(i, 1);
      p._setSpeaking(false);
      p._setState("Disconnected");
      removed.push(p);
    }
    if (added.length || removed.length) this._emit("remoteParticipantsUpdated", { added, removed });
    // Media for a participant announced after the server's offer that carries it.
    if (added.length) this._reconcileRemoteTracks();
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
    const screen = this._screen;
    this._screen = null;
    if (screen) {
      screen.track.removeEventListener("ended", screen.onEnded);
      if (screen.owned) screen.stream.getTracks().forEach((t) => t.stop());
      this.isScreenSharingOn = false;
    }
    for (const entry of this._attached.values()) {
      if (entry.audioElement) {
        entry.audioElement.srcObject = null;
        entry.audioElement.remove();
      }
      if (entry.stream) entry.stream._setAvailable(false);
    }
    for (const p of this._remote) {
      p._setSpeaking(false);
      p._setState("Disconnected");
    }
    for (const w of this._offerWaiters.splice(0)) w.resolve();
    this._serverOffers.length = 0;
    this._mediaReady.resolve();
    if (this._wakeOfferStep) this._wakeOfferStep();
    this.state = "Disconnected";
    this._emit("stateChanged");
    if (hadVideo) this._emit("isLocalVideoStartedChanged");
    if (screen) this._emit("isScreenSharingOnChanged");
    for (const resolve of this._disconnectWaiters.splice(0)) resolve();
    this._agent._removeCall(this);
  }
}

export default { CallClient };
