// In-page helpers for group-call tests: connect a CallAgent, join a group with event recording, and read
// per-participant media statistics (inbound-rtp mapped to participants through the SDK's mid/track mapping).
import { pollUntil } from "./util.mjs";

/** Small camera and raw microphone for browser tests on 2 cores. */
export const SMALL_VIDEO = { width: 320, height: 240, frameRate: 15 };
export const RAW_AUDIO = { echoCancellation: false, noiseSuppression: false, autoGainControl: false };

/**
 * In the page: imports the SDK and connects window.agent. Returns the agent's communicationUserId.
 * @param {import("playwright-core").Page} page
 */
export function connectAgent(page, token, displayName) {
  return page.evaluate(
    async ({ token, displayName }) => {
      const { CallClient } = await import("/sdk/calling.js");
      const agent = await new CallClient().createCallAgent(token, { displayName });
      window.agent = agent;
      return agent.communicationUserId;
    },
    { token, displayName },
  );
}

/**
 * In the page: `window.call = agent.join({groupId}, options)` and records what happens in `window.events`
 * (each `{what, at, ...}` with `at` = Date.now()). Returns the call's state right after join (synchronously).
 * @param {import("playwright-core").Page} page
 * @param {string} groupId
 * @param {object} options join options (`{audio, video}`; constraints objects allowed)
 */
export function joinGroup(page, groupId, options) {
  return page.evaluate(
    ({ groupId, options }) => {
      const events = (window.events = []);
      const log = (what, data) => events.push({ what, at: Date.now(), ...data });
      const call = window.agent.join({ groupId }, options);
      window.call = call;
      const state = call.state;
      log("state", { state });
      call.on("stateChanged", () => log("state", { state: call.state, reason: call.callEndReason ?? null }));
      const watch = (p) => {
        const who = p.identifier.communicationUserId;
        p.on("videoStreamsUpdated", ({ added, removed }) =>
          log("videoStreamsUpdated", { who, added: added.map((s) => s.mediaStreamType), removed: removed.map((s) => s.mediaStreamType) }),
        );
        p.on("isSpeakingChanged", () => log("isSpeaking", { who, value: p.isSpeaking }));
      };
      call.on("remoteParticipantsUpdated", ({ added, removed }) => {
        log("remoteParticipantsUpdated", { added: added.map((p) => p.identifier.communicationUserId), removed: removed.map((p) => p.identifier.communicationUserId) });
        added.forEach(watch);
      });
      call.remoteParticipants.forEach(watch);
      call.on("dominantSpeakersChanged", () => log("dominantSpeakers", { list: call.dominantSpeakers.speakersList.map((s) => s.communicationUserId) }));
      call.on("error", (e) => log("error", { code: e.code, message: e.message }));
      call.on("isScreenSharingOnChanged", () => log("isScreenSharingOn", { value: call.isScreenSharingOn }));
      return state;
    },
    { groupId, options },
  );
}

/** The call's state, participants (with streams) and events, as plain data. */
export function groupSummary(page) {
  return page.evaluate(() => {
    const call = window.call;
    if (!call) return null;
    return {
      id: call.id,
      state: call.state,
      callEndReason: call.callEndReason ?? null,
      isScreenSharingOn: call.isScreenSharingOn,
      pcState: call.peerConnection?.connectionState ?? null,
      signalingState: call.peerConnection?.signalingState ?? null,
      dominantSpeakers: call.dominantSpeakers.speakersList.map((s) => s.communicationUserId),
      participants: call.remoteParticipants.map((p) => ({
        id: p.identifier.communicationUserId,
        displayName: p.displayName,
        state: p.state,
        isMuted: p.isMuted,
        isSpeaking: p.isSpeaking,
        videoStreams: p.videoStreams.map((s) => ({ id: s.id, type: s.mediaStreamType, isAvailable: s.isAvailable })),
      })),
      audioElements: [...document.querySelectorAll("audio[data-switchboard-call]")].map((el) => el.dataset.userId),
      events: window.events,
      agentCalls: window.agent.calls.length,
    };
  });
}

/**
 * Per remote participant: inbound-rtp counters of each track the SDK attached to it, keyed by source
 * (`audio`, `camera`, `screenShare`), plus the stream ids of its RemoteVideoStreams. The stats entry of a track is
 * found by `mid` (and checked against `trackIdentifier`).
 * @returns {Promise<Record<string, Record<string, {mid: string, packetsReceived: number, framesDecoded?: number, frameWidth?: number, frameHeight?: number, audioLevel?: number, totalAudioEnergy?: number, byTrackId: boolean}>>>}
 */
export function statsByParticipant(page) {
  return page.evaluate(async () => {
    const call = window.call;
    if (!call) return {};
    const report = await call.getStats();
    const byMid = new Map();
    const byTrack = new Map();
    report.forEach((s) => {
      if (s.type !== "inbound-rtp") return;
      if (s.mid != null) byMid.set(String(s.mid), s);
      if (s.trackIdentifier) byTrack.set(s.trackIdentifier, s);
    });
    const out = {};
    for (const t of call.remoteTracks) {
      const s = byMid.get(t.mid) || byTrack.get(t.track.id);
      const entry = (out[t.communicationUserId] ||= {});
      entry[t.source] = {
        mid: t.mid,
        packetsReceived: s?.packetsReceived ?? 0,
        framesDecoded: s?.framesDecoded,
        frameWidth: s?.frameWidth,
        frameHeight: s?.frameHeight,
        audioLevel: s?.audioLevel,
        totalAudioEnergy: s?.totalAudioEnergy,
        byTrackId: Boolean(s && s.trackIdentifier === t.track.id),
      };
    }
    return out;
  });
}

/** Waits for the page's call to reach `state`. */
export function waitCallState(page, state, timeoutMs) {
  return pollUntil(() => groupSummary(page), (s) => s && s.state === state, { timeoutMs, intervalMs: 100, what: `call state ${state}` });
}
