// The web SDK's negotiation logic against an in-page mock of the signaling server and SFU (lib/mock_signaling.js):
// sendonly offers with `tracks`, server offers answered and mapped to participants by mid, screen sharing,
// perfect negotiation with Glare, dominant speakers, call errors, group hang-up. Needs no Switchboard server
// (one Chromium, the SDK from web/sdk/calling.js on disk), so it also pins behaviour the real server rarely
// triggers (a server offer crossing the client's).
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { after, before, test } from "node:test";

import { browserSlot, launchBrowser } from "./lib/browser.mjs";
import { repoRoot } from "./lib/server.mjs";
import { pollUntil } from "./lib/util.mjs";

// localhost: a secure context (getUserMedia), answered by the route below, never by the network.
const ORIGIN = "http://localhost:9";
const FILES = {
  "/": { type: "text/html; charset=utf-8", body: "<!doctype html><title>sdk test</title><body></body>" },
  "/sdk/calling.js": { type: "text/javascript; charset=utf-8", file: path.join(repoRoot, "web", "sdk", "calling.js") },
  "/mock_signaling.js": { type: "text/javascript; charset=utf-8", file: path.join(repoRoot, "tests", "e2e", "lib", "mock_signaling.js") },
};

/** @type {Awaited<ReturnType<typeof launchBrowser>>} */
let browser;
let page;
let releaseSlot = () => {};

before(async () => {
  releaseSlot = await browserSlot();
  browser = await launchBrowser("sdk");
  await browser.context.route(`${ORIGIN}/**`, (route) => {
    const f = FILES[new URL(route.request().url()).pathname];
    if (!f) return route.fulfill({ status: 404, body: "not found" });
    route.fulfill({ status: 200, headers: { "content-type": f.type, "cache-control": "no-cache" }, body: f.file ? fs.readFileSync(f.file) : f.body });
  });
  page = browser.page;
});

after(async () => {
  await browser?.close();
  releaseSlot();
});

/** Fresh page with the mock installed and a connected agent as window.agent. */
async function freshAgent() {
  await page.goto(`${ORIGIN}/`);
  await page.evaluate(async () => {
    await import("/mock_signaling.js");
    const { CallClient } = await import("/sdk/calling.js");
    window.agent = await new CallClient().createCallAgent("mock-token", { displayName: "Me" });
    window.log = [];
    window.track = (call) => {
      window.call = call;
      const log = (what, data) => window.log.push({ what, data, at: Date.now() });
      call.states = [call.state];
      call.on("stateChanged", () => call.states.push(call.state));
      call.on("remoteParticipantsUpdated", ({ added, removed }) => {
        log("remoteParticipantsUpdated", { added: added.map((p) => p.identifier.communicationUserId), removed: removed.map((p) => p.identifier.communicationUserId) });
        added.forEach(window.watch);
      });
      call.on("dominantSpeakersChanged", () => log("dominantSpeakersChanged", call.dominantSpeakers.speakersList.map((s) => s.communicationUserId)));
      call.on("error", (e) => log("error", e));
      call.on("isScreenSharingOnChanged", () => log("isScreenSharingOnChanged", call.isScreenSharingOn));
      call.remoteParticipants.forEach(window.watch);
      return call;
    };
    window.watch = (p) => {
      const who = p.identifier.communicationUserId;
      p.on("videoStreamsUpdated", ({ added, removed }) =>
        window.log.push({ what: "videoStreamsUpdated", data: { who, added: added.map((s) => s.mediaStreamType), removed: removed.map((s) => s.mediaStreamType) } }),
      );
      p.on("isSpeakingChanged", () => window.log.push({ what: "isSpeakingChanged", data: { who, value: p.isSpeaking } }));
    };
    window.animatedCanvasStream = () => {
      const canvas = document.createElement("canvas");
      canvas.width = 320;
      canvas.height = 180;
      const ctx = canvas.getContext("2d");
      let n = 0;
      setInterval(() => {
        ctx.fillStyle = `hsl(${(n += 7) % 360}, 60%, 50%)`;
        ctx.fillRect(0, 0, 320, 180);
      }, 66);
      return canvas.captureStream(15);
    };
  });
}

/** Plain-data view of window.call and the mock. */
function summary() {
  return page.evaluate(async () => {
    const call = window.call;
    const report = await call.getStats();
    const inbound = {};
    report.forEach((s) => {
      if (s.type === "inbound-rtp") inbound[s.trackIdentifier] = { kind: s.kind, packetsReceived: s.packetsReceived, framesDecoded: s.framesDecoded };
    });
    return {
      id: call.id,
      state: call.state,
      states: call.states,
      callEndReason: call.callEndReason ?? null,
      isScreenSharingOn: call.isScreenSharingOn,
      signalingState: call.peerConnection?.signalingState ?? null,
      participants: call.remoteParticipants.map((p) => ({
        id: p.identifier.communicationUserId,
        displayName: p.displayName,
        state: p.state,
        isSpeaking: p.isSpeaking,
        videoStreams: p.videoStreams.map((s) => {
          const track = s.mediaStream.getVideoTracks()[0];
          return { id: s.id, type: s.mediaStreamType, isAvailable: s.isAvailable, framesDecoded: track ? inbound[track.id]?.framesDecoded ?? 0 : 0 };
        }),
      })),
      remoteTracks: call.remoteTracks.map((t) => ({ mid: t.mid, who: t.communicationUserId, source: t.source, packets: inbound[t.track.id]?.packetsReceived ?? 0 })),
      audioElements: [...document.querySelectorAll("audio[data-switchboard-call]")].map((el) => el.dataset.userId),
      sent: window.mock.sent.filter((m) => m.type !== "iceCandidate" && m.type !== "ping").map((m) => ({ type: m.type, tracks: m.tracks, forEveryone: m.forEveryone, sdpDirections: m.sdp ? [...m.sdp.matchAll(/^a=(sendonly|recvonly|sendrecv|inactive)\r?$/gm)].map((x) => x[1]) : undefined, sdpPorts: m.sdp ? [...m.sdp.matchAll(/^m=\w+ (\d+)/gm)].map((x) => Number(x[1])) : undefined })),
      clientTracks: window.mock.clientTracks,
      mockErrors: window.mock.errors,
      log: window.log,
    };
  });
}

const BOB = "8:acs:mock_bob";
const CAROL = "8:acs:mock_carol";
const DAVE = "8:acs:mock_dave";
const ERIN = "8:acs:mock_erin";

test("group call: sendonly offer with tracks, server offers map media to participants, screen share, glare, events", { timeout: 120000 }, async () => {
  await freshAgent();
  const initial = await page.evaluate(() => {
    const call = window.track(window.agent.join({ groupId: "5b2f8a1e-0c47-4c55-9a8e-6f1d3b2a9c10" }, { audio: true, video: { width: 320, height: 240, frameRate: 15 } }));
    return { state: call.state, isGroupCall: call.isGroupCall };
  });
  assert.deepEqual(initial, { state: "Connecting", isGroupCall: true });

  // Connected with the participants of the join result; the first offer sends only our own media.
  let s = await pollUntil(summary, (s) => s.state === "Connected" && s.clientTracks !== null && s.signalingState === "stable", { timeoutMs: 10000, what: "Connected and first offer answered" });
  assert.deepEqual(s.participants.map((p) => [p.id, p.displayName, p.state]), [[BOB, "Bob", "Connected"]]);
  const firstOffer = s.sent.find((m) => m.type === "offer");
  assert.deepEqual(firstOffer.tracks, [{ mid: "0", source: "audio" }, { mid: "1", source: "camera" }]);
  assert.deepEqual(firstOffer.sdpDirections, ["sendonly", "sendonly"], "the client offers only what it sends");

  // The SFU adds Bob's audio and camera: answered, mapped to Bob, decoded, played.
  await page.evaluate((bob) => window.mock.publish(bob, ["audio", "camera"]), BOB);
  s = await pollUntil(summary, (s) => s.participants[0]?.videoStreams[0]?.framesDecoded > 10 && s.participants[0].videoStreams[0].isAvailable, {
    timeoutMs: 15000,
    intervalMs: 300,
    what: "Bob's camera decoded and available",
  });
  assert.equal(s.sent.filter((m) => m.type === "answer").length, 1);
  assert.deepEqual(s.participants[0].videoStreams.map((v) => v.type), ["Video"]);
  assert.deepEqual(s.audioElements, [BOB], "one hidden <audio> for Bob");
  assert.deepEqual(s.remoteTracks.map((t) => [t.who, t.source]).sort(), [[BOB, "audio"], [BOB, "camera"]]);
  await pollUntil(summary, (s) => s.remoteTracks.find((t) => t.source === "audio")?.packets > 20, { timeoutMs: 10000, what: "Bob's audio packets" });

  // Our screen share: a third sendonly m-line labelled screenShare; stopping it rejects that m-line.
  await page.evaluate(() => window.call.startScreenSharing(window.animatedCanvasStream()));
  s = await summary();
  assert.equal(s.isScreenSharingOn, true);
  let offers = s.sent.filter((m) => m.type === "offer");
  assert.deepEqual(offers.at(-1).tracks, [{ mid: "0", source: "audio" }, { mid: "1", source: "camera" }, { mid: offers.at(-1).tracks[2]?.mid, source: "screenShare" }]);
  assert.equal(s.signalingState, "stable");
  await page.evaluate(() => window.call.stopScreenSharing());
  s = await summary();
  assert.equal(s.isScreenSharingOn, false);
  offers = s.sent.filter((m) => m.type === "offer");
  assert.deepEqual(offers.at(-1).tracks.map((t) => t.source), ["audio", "camera"], "the stopped share is no longer listed");
  assert.ok(offers.at(-1).sdpPorts.includes(0), `the stopped m-line is rejected (port 0): ${offers.at(-1).sdpPorts}`);
  assert.deepEqual(s.log.filter((e) => e.what === "isScreenSharingOnChanged").map((e) => e.data), [true, false]);

  // Bob shares his screen: a second stream of type ScreenSharing; unpublished: removed.
  await page.evaluate((bob) => window.mock.publish(bob, ["screenShare"]), BOB);
  s = await pollUntil(summary, (s) => s.participants[0].videoStreams[1]?.framesDecoded > 5, { timeoutMs: 10000, intervalMs: 300, what: "Bob's screen share decoded" });
  assert.deepEqual(s.participants[0].videoStreams.map((v) => v.type), ["Video", "ScreenSharing"]);
  await page.evaluate((bob) => window.mock.unpublish(bob, "screenShare"), BOB);
  s = await pollUntil(summary, (s) => s.participants[0].videoStreams.length === 1, { timeoutMs: 5000, what: "Bob's screen share removed" });
  const bobStreamEvents = s.log.filter((e) => e.what === "videoStreamsUpdated" && e.data.who === BOB).map((e) => e.data);
  assert.deepEqual(bobStreamEvents, [
    { who: BOB, added: ["Video"], removed: [] },
    { who: BOB, added: ["ScreenSharing"], removed: [] },
    { who: BOB, added: [], removed: ["ScreenSharing"] },
  ]);

  // Glare: Carol joins; the SFU's offer with her camera crosses our next offer. The SDK (polite) applies the
  // server's offer (implicit rollback), answers it, and offers again after the Glare error.
  await page.evaluate((carol) => {
    window.mock.event({ type: "participantsUpdated", callId: window.call.id, added: [{ communicationUserId: carol, displayName: "Carol", state: "Connected", isMuted: false }], removed: [], updated: [] });
    window.mock.glareNext = true;
  }, CAROL);
  const before = (await summary()).sent.length;
  await page.evaluate(() => window.call.startScreenSharing(window.animatedCanvasStream()));
  s = await pollUntil(summary, (s) => s.signalingState === "stable" && s.participants.find((p) => p.id === CAROL)?.videoStreams[0]?.framesDecoded > 5, {
    timeoutMs: 15000,
    intervalMs: 300,
    what: "after glare: stable, Carol's camera decoded",
  });
  assert.deepEqual(s.sent.slice(before).map((m) => m.type), ["offer", "answer", "offer"], "offer (Glare), answer to the server's offer, offer again");
  assert.deepEqual(s.clientTracks.map((t) => t.source), ["audio", "camera", "screenShare"], "the re-sent offer carries the share");
  assert.equal(s.isScreenSharingOn, true);
  assert.deepEqual(s.mockErrors, []);

  // Glare where the server answers our offer only after its own offer was answered: the SDK must answer the
  // server's offer while its own offer is still out (the polite peer's implicit rollback), not wait for the error.
  // Dave's media comes before the server announces Dave: it is attached when he is added.
  await page.evaluate((dave) => {
    window.mock.glareUser = dave;
    window.mock.glareNext = "afterAnswer";
  }, DAVE);
  const before2 = (await summary()).sent.length;
  await page.evaluate(() => window.call.stopScreenSharing());
  assert.ok(!(await summary()).remoteTracks.some((t) => t.who === DAVE), "no participant Dave yet: his track waits");
  await page.evaluate((dave) => {
    window.mock.event({ type: "participantsUpdated", callId: window.call.id, added: [{ communicationUserId: dave, displayName: "Dave", state: "Connected", isMuted: false }], removed: [], updated: [] });
  }, DAVE);
  s = await pollUntil(summary, (s) => s.signalingState === "stable" && s.participants.find((p) => p.id === DAVE)?.videoStreams[0]?.framesDecoded > 5, {
    timeoutMs: 15000,
    intervalMs: 300,
    what: "after the second glare: stable, Dave's camera decoded",
  });
  assert.deepEqual(s.sent.slice(before2).map((m) => m.type), ["offer", "answer", "offer"]);
  assert.deepEqual(s.clientTracks.map((t) => t.source), ["audio", "camera"]);
  assert.equal(s.isScreenSharingOn, false);
  await page.evaluate(async (dave) => {
    window.mock.event({ type: "participantsUpdated", callId: window.call.id, added: [], removed: [{ communicationUserId: dave }], updated: [] });
    await window.mock.unpublish(dave);
  }, DAVE);

  // Glare answered before the server's offer is even sent: the SDK waits for that offer, answers it, offers again.
  await page.evaluate((erin) => {
    window.mock.event({ type: "participantsUpdated", callId: window.call.id, added: [{ communicationUserId: erin, displayName: "Erin", state: "Connected", isMuted: false }], removed: [], updated: [] });
    window.mock.glareUser = erin;
    window.mock.glareNext = "beforeOffer";
  }, ERIN);
  const before3 = (await summary()).sent.length;
  await page.evaluate(() => window.call.startScreenSharing(window.animatedCanvasStream()));
  s = await pollUntil(summary, (s) => s.signalingState === "stable" && s.participants.find((p) => p.id === ERIN)?.videoStreams[0]?.framesDecoded > 5, {
    timeoutMs: 15000,
    intervalMs: 300,
    what: "after Glare-before-offer: stable, Erin's camera decoded",
  });
  assert.deepEqual(s.sent.slice(before3).map((m) => m.type), ["offer", "answer", "offer"], "no blind re-offers while the server's offer is on its way");
  assert.deepEqual(s.clientTracks.map((t) => t.source), ["audio", "camera", "screenShare"]);
  await page.evaluate(async (erin) => {
    window.mock.event({ type: "participantsUpdated", callId: window.call.id, added: [], removed: [{ communicationUserId: erin }], updated: [] });
    await window.mock.unpublish(erin);
  }, ERIN);

  // Dominant speakers, server-reported isSpeaking, and call errors.
  await page.evaluate(({ bob, carol }) => {
    const callId = window.call.id;
    window.mock.event({ type: "dominantSpeakersChanged", callId, speakers: [carol, bob] });
    window.mock.event({ type: "participantsUpdated", callId, added: [], removed: [], updated: [{ communicationUserId: carol, displayName: "Carol", state: "Connected", isMuted: false, isSpeaking: true }] });
    window.mock.event({ type: "error", callId, error: { code: "CodecUnsupported", message: "H.264 only is not forwarded" } });
  }, { bob: BOB, carol: CAROL });
  s = await summary();
  assert.deepEqual(s.log.filter((e) => e.what === "dominantSpeakersChanged").map((e) => e.data), [[CAROL, BOB]]);
  assert.equal(await page.evaluate(() => window.call.dominantSpeakers.timestamp instanceof Date), true);
  assert.equal(s.participants.find((p) => p.id === CAROL).isSpeaking, true);
  assert.deepEqual(s.log.filter((e) => e.what === "error").map((e) => e.data.code), ["CodecUnsupported"]);

  // Carol leaves: removed, her media detached.
  await page.evaluate((carol) => window.mock.event({ type: "participantsUpdated", callId: window.call.id, added: [], removed: [{ communicationUserId: carol }], updated: [] }), CAROL);
  s = await summary();
  assert.deepEqual(s.participants.map((p) => p.id), [BOB]);
  assert.ok(!s.remoteTracks.some((t) => t.who === CAROL));
  assert.deepEqual(s.log.filter((e) => e.what === "remoteParticipantsUpdated").map((e) => e.data), [
    { added: [BOB], removed: [] }, // from the join result
    { added: [CAROL], removed: [] },
    { added: [DAVE], removed: [] },
    { added: [], removed: [DAVE] },
    { added: [ERIN], removed: [] },
    { added: [], removed: [ERIN] },
    { added: [], removed: [CAROL] },
  ]);

  // End for everyone.
  await page.evaluate(() => window.call.hangUp({ forEveryone: true }));
  s = await summary();
  assert.equal(s.state, "Disconnected");
  assert.deepEqual([s.callEndReason.code, s.callEndReason.subcode], [0, 5001]);
  assert.equal(s.sent.filter((m) => m.type === "hangUp").at(-1).forEveryone, true);
  assert.deepEqual(s.audioElements, []);
  assert.equal(await page.evaluate(() => window.agent.calls.length), 0);
});

test("1:1 call: sendonly offer, the other side's media arrives by server offer; camera off keeps the m-line", { timeout: 60000 }, async () => {
  await freshAgent();
  assert.equal(await page.evaluate((bob) => window.track(window.agent.startCall([{ communicationUserId: bob }], { audio: true, video: true })).state, BOB), "None");
  let s = await pollUntil(summary, (s) => s.state === "Connected" && s.clientTracks !== null && s.signalingState === "stable", { timeoutMs: 10000, what: "Connected, offer answered" });
  assert.deepEqual(s.states, ["None", "Connecting", "Ringing", "Connected"]);
  await page.evaluate((bob) => window.mock.publish(bob, ["audio", "camera"]), BOB);
  s = await pollUntil(summary, (s) => s.participants[0].videoStreams[0]?.isAvailable === true, { timeoutMs: 10000, intervalMs: 300, what: "Bob's video available" });
  assert.deepEqual(s.audioElements, [BOB]);
  const offersBefore = s.sent.filter((m) => m.type === "offer").length;
  await page.evaluate(() => window.call.stopVideo());
  await page.evaluate(() => window.call.startVideo());
  s = await summary();
  assert.equal(s.sent.filter((m) => m.type === "offer").length, offersBefore, "camera off/on needs no renegotiation");
  await page.evaluate(() => window.call.hangUp());
  s = await summary();
  assert.equal(s.state, "Disconnected");
  assert.deepEqual(s.audioElements, []);
});
