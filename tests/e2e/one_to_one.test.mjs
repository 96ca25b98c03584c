// Acceptance: 1:1 calls between two separate Chromium processes through the web SDK (/sdk/calling.js) and the
// server's signaling + SFU. Run: cd tests/e2e && npm ci && node --test
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import { browserSlot, launchBrowser } from "./lib/browser.mjs";
import { demoSignIn, demoUsers, startServer } from "./lib/server.mjs";
import { inboundStats, pollUntil } from "./lib/util.mjs";

const CONNECT_TIMEOUT_MS = 10000;
const MEDIA_TIMEOUT_MS = 10000;

/** @type {Awaited<ReturnType<typeof startServer>>} */
let server;
/** @type {Awaited<ReturnType<typeof launchBrowser>>} */
let alice;
/** @type {Awaited<ReturnType<typeof launchBrowser>>} */
let bob;
let releaseSlot = () => {};
let aliceUser;
let bobUser;

/**
 * In the page: imports the SDK, connects a CallAgent as window.agent and records incoming calls in
 * window.incoming. Returns the agent's communicationUserId.
 */
function connectAgent(page, token, displayName) {
  return page.evaluate(
    async ({ token, displayName }) => {
      const { CallClient } = await import("/sdk/calling.js");
      const agent = await new CallClient().createCallAgent(token, { displayName });
      window.agent = agent;
      window.trackCall = (call) => {
        window.call = call;
        call.states = [call.state];
        call.on("stateChanged", () => call.states.push(call.state));
        return call;
      };
      window.incoming = [];
      window.allIncoming = [];
      agent.on("incomingCall", ({ incomingCall }) => {
        incomingCall.on("callEnded", ({ callEndReason }) => (incomingCall.endedWith = callEndReason));
        window.incoming.push(incomingCall);
        window.allIncoming.push(incomingCall);
      });
      return agent.communicationUserId;
    },
    { token, displayName },
  );
}

/** Alice (or whoever `page` is) calls `calleeId`; returns the state right after startCall (must be "None"). */
function startCall(page, calleeId) {
  return page.evaluate((calleeId) => {
    const call = window.trackCall(window.agent.startCall([{ communicationUserId: calleeId }], { audio: true, video: true }));
    return call.state;
  }, calleeId);
}

/** Waits until the page has an unanswered incoming call; returns what it says about the caller. */
async function waitIncoming(page, timeoutMs = CONNECT_TIMEOUT_MS) {
  await page.waitForFunction(() => window.incoming.length > 0, null, { timeout: timeoutMs, polling: 100 });
  return page.evaluate(() => {
    const c = window.incoming[0];
    return { id: c.id, callerInfo: JSON.parse(JSON.stringify(c.callerInfo)), isVideoCall: c.isVideoCall };
  });
}

/** The current call's state, end reason and participants, as plain data. */
function callSummary(page) {
  return page.evaluate(() => {
    const call = window.call;
    if (!call) return null;
    return {
      id: call.id,
      state: call.state,
      states: call.states,
      callEndReason: call.callEndReason ?? null,
      isMuted: call.isMuted,
      isLocalVideoStarted: call.isLocalVideoStarted,
      remoteParticipants: call.remoteParticipants.map((p) => ({
        id: p.identifier.communicationUserId,
        displayName: p.displayName,
        state: p.state,
        isMuted: p.isMuted,
        videoStreams: p.videoStreams.map((s) => ({
          mediaStreamType: s.mediaStreamType,
          isAvailable: s.isAvailable,
          isMediaStream: s.mediaStream instanceof MediaStream,
          liveVideoTracks: s.mediaStream.getVideoTracks().filter((t) => t.readyState === "live").length,
        })),
      })),
      agentCalls: window.agent.calls.length,
      pcState: call.peerConnection ? call.peerConnection.connectionState : null,
      signalingState: call.peerConnection ? call.peerConnection.signalingState : null,
      liveLocalTracks: call.localMediaStream.getTracks().filter((t) => t.readyState === "live").length,
      audioElements: document.querySelectorAll("audio[data-switchboard-call]").length,
    };
  });
}

function waitState(page, state, timeoutMs) {
  return pollUntil(() => callSummary(page), (s) => s && s.state === state, { timeoutMs, intervalMs: 100, what: `call state ${state}` });
}

/** Hangs up whatever calls are left and forgets unanswered incoming calls (between tests). */
async function resetPages() {
  for (const p of [alice, bob]) {
    await p.page.evaluate(async () => {
      if (!window.agent) return;
      for (const c of window.agent.calls) await c.hangUp().catch(() => {});
      for (const c of window.incoming) await c.reject().catch(() => {});
      window.incoming.length = 0;
      window.call = null;
    });
  }
}

before(async () => {
  releaseSlot = await browserSlot();
  server = await startServer({ label: "one_to_one" });
  [alice, bob] = await Promise.all([launchBrowser("alice"), launchBrowser("bob")]);
  await Promise.all([alice.page.goto(`${server.httpUrl}/`), bob.page.goto(`${server.httpUrl}/`)]);
  aliceUser = await demoSignIn(server.httpUrl, "Alice");
  bobUser = await demoSignIn(server.httpUrl, "Bob");
  assert.match(aliceUser.communicationUserId, /^8:acs:/);
  assert.notEqual(aliceUser.communicationUserId, bobUser.communicationUserId);
});

after(async () => {
  await Promise.allSettled([alice?.close(), bob?.close()]);
  await server?.stop();
  releaseSlot();
});

test("createCallAgent rejects a bad token with code 4401", { timeout: 60000 }, async () => {
  const tampered = aliceUser.token.slice(0, -4) + (aliceUser.token.endsWith("AAAA") ? "BBBB" : "AAAA");
  const results = await alice.page.evaluate(async (tokens) => {
    const { CallClient } = await import("/sdk/calling.js");
    const out = [];
    for (const token of tokens) {
      try {
        await new CallClient().createCallAgent(token, { displayName: "Mallory" });
        out.push({ ok: true });
      } catch (e) {
        out.push({ ok: false, isError: e instanceof Error, code: e.code, message: e.message });
      }
    }
    return out;
  }, ["not-a-jwt", tampered]);
  for (const r of results) {
    assert.equal(r.ok, false, "createCallAgent must reject");
    assert.equal(r.isError, true);
    assert.equal(r.code, 4401, `error code: ${JSON.stringify(r)}`);
  }
});

describe("Alice calls Bob, Bob accepts", () => {
  test("both sides connect and receive audio and video", { timeout: 120000 }, async () => {
    const [aliceId, bobId] = await Promise.all([
      connectAgent(alice.page, aliceUser.token, "Alice"),
      connectAgent(bob.page, bobUser.token, "Bob"),
    ]);
    assert.equal(aliceId, aliceUser.communicationUserId);
    assert.equal(bobId, bobUser.communicationUserId);

    assert.equal(await startCall(alice.page, bobId), "None", "startCall returns the Call synchronously in state None");
    const incoming = await waitIncoming(bob.page);
    assert.equal(incoming.callerInfo.identifier.communicationUserId, aliceId);
    assert.equal(incoming.callerInfo.displayName, "Alice");
    assert.equal(incoming.isVideoCall, true);
    await pollUntil(() => callSummary(alice.page), (s) => s.state === "Ringing", { timeoutMs: 5000, what: "Alice Ringing" });

    const accepted = await bob.page.evaluate(async () => {
      const call = await window.incoming.shift().accept({ audio: true, video: true });
      window.trackCall(call);
      return { id: call.id, state: call.state };
    });
    assert.equal(accepted.id, incoming.id);

    const t0 = Date.now();
    const [a, b] = await Promise.all([waitState(alice.page, "Connected", CONNECT_TIMEOUT_MS), waitState(bob.page, "Connected", CONNECT_TIMEOUT_MS)]);
    console.log(`connected ${Date.now() - t0} ms after accept`);
    assert.equal(a.id, b.id, "both sides see the same call id");
    assert.deepEqual(a.states.slice(0, 3), ["None", "Connecting", "Ringing"]);
    assert.equal(a.remoteParticipants.length, 1);
    assert.equal(a.remoteParticipants[0].id, bobId);
    assert.equal(b.remoteParticipants.length, 1);
    assert.equal(b.remoteParticipants[0].id, aliceId);
    assert.equal(b.remoteParticipants[0].displayName, "Alice");

    const mediaStart = Date.now();
    const enough = (s) => s.audio && s.audio.packetsReceived > 100 && s.video && s.video.framesDecoded > 30;
    const [sa, sb] = await Promise.all(
      [alice, bob].map((p) => pollUntil(() => inboundStats(p.page), enough, { timeoutMs: MEDIA_TIMEOUT_MS, intervalMs: 500, what: `${p.label}: inbound audio packetsReceived > 100 and video framesDecoded > 30` })),
    );
    console.log(`media flowing ${Date.now() - mediaStart} ms after Connected; alice ${JSON.stringify(sa)}; bob ${JSON.stringify(sb)}`);

    // The SDK derives remote video availability from decoding progress and plays remote audio in an <audio>.
    for (const p of [alice, bob]) {
      const s = await pollUntil(() => callSummary(p.page), (s) => s.remoteParticipants[0]?.videoStreams[0]?.isAvailable === true, {
        timeoutMs: 5000,
        what: `${p.label}: remote video stream isAvailable`,
      });
      const stream = s.remoteParticipants[0].videoStreams[0];
      assert.equal(stream.mediaStreamType, "Video");
      assert.equal(stream.isMediaStream, true);
      assert.equal(stream.liveVideoTracks, 1);
      assert.equal(s.audioElements, 1, "one hidden <audio> element plays the remote audio");
      assert.equal(s.liveLocalTracks, 2, "camera and microphone are live");
    }
  });

  test("mute and camera off/on reach the other side", { timeout: 120000 }, async () => {
    await alice.page.evaluate(() => window.call.mute());
    let a = await callSummary(alice.page);
    assert.equal(a.isMuted, true);
    assert.equal(await alice.page.evaluate(() => window.call.localMediaStream.getAudioTracks()[0].enabled), false);
    await pollUntil(() => callSummary(bob.page), (s) => s.remoteParticipants[0].isMuted === true, { timeoutMs: 5000, what: "Bob sees Alice muted" });
    await alice.page.evaluate(() => window.call.unmute());
    assert.equal(await alice.page.evaluate(() => window.call.localMediaStream.getAudioTracks()[0].enabled), true);
    await pollUntil(() => callSummary(bob.page), (s) => s.remoteParticipants[0].isMuted === false, { timeoutMs: 5000, what: "Bob sees Alice unmuted" });

    await alice.page.evaluate(() => window.call.stopVideo());
    a = await callSummary(alice.page);
    assert.equal(a.isLocalVideoStarted, false);
    assert.equal(a.liveLocalTracks, 1, "the camera is released");
    await pollUntil(() => callSummary(bob.page), (s) => s.remoteParticipants[0].videoStreams[0].isAvailable === false, {
      timeoutMs: 10000,
      what: "Bob sees Alice's video unavailable after stopVideo",
    });
    const before = (await inboundStats(bob.page)).video.framesDecoded;
    await alice.page.evaluate(() => window.call.startVideo());
    assert.equal((await callSummary(alice.page)).isLocalVideoStarted, true);
    await pollUntil(() => inboundStats(bob.page), (s) => s.video.framesDecoded > before + 30, {
      timeoutMs: 15000,
      intervalMs: 500,
      what: "Bob decodes Alice's video again after startVideo",
    });
    await pollUntil(() => callSummary(bob.page), (s) => s.remoteParticipants[0].videoStreams[0].isAvailable === true, {
      timeoutMs: 5000,
      what: "Bob sees Alice's video available again",
    });
  });

  test("Alice hangs up: both Disconnected, Bob with code 0", { timeout: 60000 }, async () => {
    await alice.page.evaluate(() => window.call.hangUp());
    const a = await callSummary(alice.page);
    assert.equal(a.state, "Disconnected", "hangUp resolves once the call is Disconnected");
    assert.equal(a.callEndReason.code, 0);
    const b = await waitState(bob.page, "Disconnected", CONNECT_TIMEOUT_MS);
    assert.equal(b.callEndReason.code, 0, `Bob's end reason ${JSON.stringify(b.callEndReason)}`);
    for (const s of [a, b]) {
      assert.equal(s.agentCalls, 0, "the call left agent.calls");
      assert.equal(s.signalingState, "closed", "the peer connection is closed");
      assert.equal(s.liveLocalTracks, 0, "camera and microphone are stopped");
      assert.equal(s.audioElements, 0, "the remote <audio> element is removed");
      assert.equal(s.remoteParticipants[0].state, "Disconnected");
    }
  });
});

test("Bob rejects: Alice's call ends with 603", { timeout: 60000 }, async () => {
  await resetPages();
  assert.equal(await startCall(alice.page, bobUser.communicationUserId), "None");
  await waitIncoming(bob.page);
  const ended = await bob.page.evaluate(async () => {
    const incoming = window.incoming.shift();
    await incoming.reject();
    return incoming.callEndReason;
  });
  assert.ok(ended, "the rejected IncomingCall reports callEnded");
  const a = await waitState(alice.page, "Disconnected", CONNECT_TIMEOUT_MS);
  assert.equal(a.callEndReason.code, 603, `Alice's end reason ${JSON.stringify(a.callEndReason)}`);
  assert.deepEqual(a.states, ["None", "Connecting", "Ringing", "Disconnected"]);
  assert.equal(a.agentCalls, 0);
});

test("Alice hangs up while ringing: Bob's incoming call ends with 487", { timeout: 60000 }, async () => {
  await resetPages();
  await startCall(alice.page, bobUser.communicationUserId);
  await waitIncoming(bob.page);
  await pollUntil(() => callSummary(alice.page), (s) => s.state === "Ringing", { timeoutMs: 5000, what: "Alice Ringing" });
  await alice.page.evaluate(() => window.call.hangUp());
  const a = await callSummary(alice.page);
  assert.equal(a.state, "Disconnected");
  assert.equal(a.callEndReason.code, 487, `Alice's end reason ${JSON.stringify(a.callEndReason)}`);
  const reason = await pollUntil(() => bob.page.evaluate(() => window.incoming[0]?.endedWith ?? null), (r) => r !== null, {
    timeoutMs: CONNECT_TIMEOUT_MS,
    what: "Bob's incomingCall callEnded",
  });
  assert.equal(reason.code, 487);
});

test("callee never connected: Alice's call ends with 480", { timeout: 60000 }, async () => {
  await resetPages();
  const carol = await demoSignIn(server.httpUrl, "Carol");
  assert.equal(await startCall(alice.page, carol.communicationUserId), "None");
  const a = await waitState(alice.page, "Disconnected", CONNECT_TIMEOUT_MS);
  assert.equal(a.callEndReason.code, 480, `Alice's end reason ${JSON.stringify(a.callEndReason)}`);
  assert.deepEqual(a.states, ["None", "Connecting", "Disconnected"]);
});

test("Bob on two connections: accepting on one ends the other's incoming call with 0/5003", { timeout: 90000 }, async () => {
  await resetPages();
  const second = await bob.context.newPage();
  try {
    await second.goto(`${server.httpUrl}/`);
    await connectAgent(second, bobUser.token, "Bob (second tab)");
    await startCall(alice.page, bobUser.communicationUserId);
    await Promise.all([waitIncoming(bob.page), waitIncoming(second)]);
    await bob.page.evaluate(async () => window.trackCall(await window.incoming.shift().accept({ audio: true, video: false })));
    const reason = await pollUntil(() => second.evaluate(() => window.incoming[0]?.endedWith ?? null), (r) => r !== null, {
      timeoutMs: CONNECT_TIMEOUT_MS,
      what: "the second connection's incomingCall callEnded",
    });
    assert.deepEqual([reason.code, reason.subcode], [0, 5003]);
    await Promise.all([waitState(alice.page, "Connected", CONNECT_TIMEOUT_MS), waitState(bob.page, "Connected", CONNECT_TIMEOUT_MS)]);
    // Bob sends no video (video: false): Alice still gets his audio, Bob gets Alice's audio and video.
    await pollUntil(() => inboundStats(bob.page), (s) => s.audio?.packetsReceived > 50 && s.video?.framesDecoded > 10, {
      timeoutMs: MEDIA_TIMEOUT_MS,
      intervalMs: 500,
      what: "Bob receives Alice's audio and video",
    });
    await pollUntil(() => inboundStats(alice.page), (s) => s.audio?.packetsReceived > 50, { timeoutMs: MEDIA_TIMEOUT_MS, intervalMs: 500, what: "Alice receives Bob's audio" });
    assert.equal((await callSummary(bob.page)).isLocalVideoStarted, false);
    await bob.page.evaluate(() => window.call.hangUp());
    const a = await waitState(alice.page, "Disconnected", CONNECT_TIMEOUT_MS);
    assert.equal(a.callEndReason.code, 0);
  } finally {
    await second.evaluate(() => window.agent?.dispose()).catch(() => {});
    await second.close();
  }
});

test("Alice's socket drops mid-call: Bob's call ends with 0/5010", { timeout: 90000 }, async () => {
  await resetPages();
  await startCall(alice.page, bobUser.communicationUserId);
  await waitIncoming(bob.page);
  await bob.page.evaluate(async () => window.trackCall(await window.incoming.shift().accept({ audio: true, video: true })));
  await Promise.all([waitState(alice.page, "Connected", CONNECT_TIMEOUT_MS), waitState(bob.page, "Connected", CONNECT_TIMEOUT_MS)]);
  // Close the WebSocket under the SDK (as a network drop would), without hanging up.
  await alice.page.evaluate(() => window.agent._ws.close(4000, "test: simulated drop"));
  const a = await waitState(alice.page, "Disconnected", CONNECT_TIMEOUT_MS);
  assert.equal(a.callEndReason.code, 0);
  assert.equal(a.liveLocalTracks, 0);
  const b = await waitState(bob.page, "Disconnected", CONNECT_TIMEOUT_MS);
  assert.deepEqual([b.callEndReason.code, b.callEndReason.subcode], [0, 5010], `Bob's end reason ${JSON.stringify(b.callEndReason)}`);
  assert.equal(await alice.page.evaluate(() => window.agent.connectionState), "Disconnected");
  // Alice signs in again for the tests that follow.
  await connectAgent(alice.page, aliceUser.token, "Alice");
});

test("dispose() closes the socket with 1000", { timeout: 60000 }, async () => {
  await resetPages();
  const closed = await bob.page.evaluate(async () => {
    await window.agent.dispose();
    return { state: window.agent.connectionState, close: window.agent.closeInfo, calls: window.agent.calls.length };
  });
  assert.equal(closed.state, "Disconnected");
  assert.equal(closed.calls, 0);
  assert.equal(closed.close.code, 1000, `close event ${JSON.stringify(closed.close)} (1006 = the server dropped the connection without answering the close frame)`);
});

test("Bob offline after dispose(): Alice's call ends with 480", { timeout: 60000 }, async () => {
  await resetPages();
  await bob.page.evaluate(() => window.agent.dispose());
  await pollUntil(() => demoUsers(server.httpUrl), (users) => users.some((u) => u.communicationUserId === bobUser.communicationUserId && u.online === false), {
    timeoutMs: 5000,
    what: "/demo/users shows Bob offline",
  });
  await startCall(alice.page, bobUser.communicationUserId);
  const a = await waitState(alice.page, "Disconnected", CONNECT_TIMEOUT_MS);
  assert.equal(a.callEndReason.code, 480, `Alice's end reason ${JSON.stringify(a.callEndReason)}`);
});
