// Acceptance: screen sharing in a group call of two Chromium processes. Alice shares an animated canvas
// (`call.startScreenSharing(canvas.captureStream(15))`); Bob gets a second remote video stream of type
// ScreenSharing and decodes it; stopScreenSharing() removes it, and Alice's camera keeps flowing throughout. Then
// both start sharing at once (offers crossing the server's: glare) and each gets the other's share.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { browserSlot, launchBrowser } from "./lib/browser.mjs";
import { RAW_AUDIO, SMALL_VIDEO, connectAgent, groupSummary, joinGroup, statsByParticipant, waitCallState } from "./lib/group.mjs";
import { demoSignIn, startServer } from "./lib/server.mjs";
import { pollUntil } from "./lib/util.mjs";

/** @type {Awaited<ReturnType<typeof startServer>>} */
let server;
let alice;
let bob;
let releaseSlot = () => {};

before(async () => {
  releaseSlot = await browserSlot();
  server = await startServer({ label: "screen_share" });
  const [a, b] = await Promise.all([demoSignIn(server.httpUrl, "Alice"), demoSignIn(server.httpUrl, "Bob")]);
  const [ab, bb] = await Promise.all([launchBrowser("alice-share"), launchBrowser("bob-share")]);
  alice = { name: "Alice", user: a, browser: ab, page: ab.page, id: "" };
  bob = { name: "Bob", user: b, browser: bb, page: bb.page, id: "" };
  await Promise.all([alice, bob].map((p) => p.page.goto(`${server.httpUrl}/`)));
  await Promise.all([alice, bob].map(async (p) => (p.id = await connectAgent(p.page, p.user.token, p.name))));
});

after(async () => {
  await Promise.allSettled([alice?.browser.close(), bob?.browser.close()]);
  await server?.stop();
  releaseSlot();
});

test("share an animated canvas, then stop", { timeout: 180000 }, async () => {
  const groupId = crypto.randomUUID();
  await joinGroup(alice.page, groupId, { audio: RAW_AUDIO, video: SMALL_VIDEO });
  await waitCallState(alice.page, "Connected", 10000);
  await joinGroup(bob.page, groupId, { audio: RAW_AUDIO, video: SMALL_VIDEO });
  await pollUntil(() => statsByParticipant(bob.page), (s) => s[alice.id]?.camera?.framesDecoded > 20, { timeoutMs: 15000, intervalMs: 500, what: "Bob decodes Alice's camera" });
  await pollUntil(() => statsByParticipant(alice.page), (s) => s[bob.id]?.camera?.framesDecoded > 20, { timeoutMs: 15000, intervalMs: 500, what: "Alice decodes Bob's camera" });

  // Alice shares a 640x360 canvas that changes every frame.
  await alice.page.evaluate(async () => {
    const canvas = document.createElement("canvas");
    canvas.width = 640;
    canvas.height = 360;
    const ctx = canvas.getContext("2d");
    let n = 0;
    window.shareTimer = setInterval(() => {
      n++;
      ctx.fillStyle = `hsl(${(n * 5) % 360}, 60%, 45%)`;
      ctx.fillRect(0, 0, 640, 360);
      ctx.fillStyle = "#fff";
      ctx.font = "48px sans-serif";
      ctx.fillText(`slide ${n}`, 40 + (n % 200), 200);
    }, 66);
    window.shareStream = canvas.captureStream(15);
    await window.call.startScreenSharing(window.shareStream);
  });
  let a = await groupSummary(alice.page);
  assert.equal(a.isScreenSharingOn, true);
  assert.deepEqual(a.events.filter((e) => e.what === "isScreenSharingOn").map((e) => e.value), [true]);

  // Bob: a second stream of Alice's, ScreenSharing, decoded at the canvas size, with frames rising.
  const s = await pollUntil(() => groupSummary(bob.page), (s) => s.participants[0]?.videoStreams.some((v) => v.type === "ScreenSharing"), {
    timeoutMs: 10000,
    intervalMs: 200,
    what: "Bob sees Alice's ScreenSharing stream",
  });
  assert.deepEqual(s.participants[0].videoStreams.map((v) => v.type), ["Video", "ScreenSharing"]);
  assert.ok(s.events.some((e) => e.what === "videoStreamsUpdated" && e.who === alice.id && e.added.includes("ScreenSharing")));
  const first = await pollUntil(() => statsByParticipant(bob.page), (st) => st[alice.id]?.screenShare?.framesDecoded > 10, {
    timeoutMs: 15000,
    intervalMs: 500,
    what: "Bob decodes Alice's screen share",
  });
  const share = first[alice.id].screenShare;
  console.log(`Bob decodes the share: ${share.framesDecoded} frames ${share.frameWidth}x${share.frameHeight}; camera ${first[alice.id].camera.frameWidth}x${first[alice.id].camera.frameHeight}`);
  assert.ok(Math.abs(share.frameWidth / share.frameHeight - 16 / 9) < 0.1, `the screen share is the 16:9 canvas, not the camera (${share.frameWidth}x${share.frameHeight})`);
  await pollUntil(() => statsByParticipant(bob.page), (st) => st[alice.id].screenShare.framesDecoded > share.framesDecoded + 15, {
    timeoutMs: 10000,
    intervalMs: 500,
    what: "Bob's decoded screen-share frames keep rising",
  });
  await pollUntil(() => groupSummary(bob.page), (s) => s.participants[0].videoStreams.find((v) => v.type === "ScreenSharing")?.isAvailable === true, {
    timeoutMs: 5000,
    what: "the ScreenSharing stream isAvailable",
  });

  // Alice stops: Bob's ScreenSharing stream is removed; her camera keeps flowing.
  const stoppedAt = Date.now();
  await alice.page.evaluate(() => window.call.stopScreenSharing());
  a = await groupSummary(alice.page);
  assert.equal(a.isScreenSharingOn, false);
  const after = await pollUntil(
    () => groupSummary(bob.page),
    (s) => s.events.some((e) => e.what === "videoStreamsUpdated" && e.who === alice.id && e.removed.includes("ScreenSharing")),
    { timeoutMs: 10000, intervalMs: 100, what: "Bob gets videoStreamsUpdated removed ScreenSharing" },
  );
  console.log(`screen share removed at Bob ${after.events.find((e) => e.what === "videoStreamsUpdated" && e.removed.includes("ScreenSharing")).at - stoppedAt} ms after stopScreenSharing()`);
  assert.deepEqual(after.participants[0].videoStreams.map((v) => v.type), ["Video"]);
  const cam = (await statsByParticipant(bob.page))[alice.id].camera.framesDecoded;
  await pollUntil(() => statsByParticipant(bob.page), (st) => st[alice.id].camera.framesDecoded > cam + 15, { timeoutMs: 10000, intervalMs: 500, what: "Alice's camera still decoded at Bob" });
  for (const p of [alice, bob]) {
    const sum = await groupSummary(p.page);
    assert.equal(sum.signalingState, "stable", `${p.name}: negotiation settled`);
    assert.deepEqual(sum.events.filter((e) => e.what === "error"), [], `${p.name}: no call errors`);
  }

  // Both start sharing at the same moment: each one's offer tends to cross the server's offer bringing the
  // other's share (glare, resolved by the SDK as the polite peer). Both shares arrive; negotiation settles.
  await Promise.all(
    [alice, bob].map((p) =>
      p.page.evaluate(() => {
        if (!window.shareStream) {
          const canvas = document.createElement("canvas");
          canvas.width = 640;
          canvas.height = 360;
          const ctx = canvas.getContext("2d");
          let n = 0;
          setInterval(() => {
            ctx.fillStyle = `hsl(${(n += 9) % 360}, 50%, 40%)`;
            ctx.fillRect(0, 0, 640, 360);
          }, 66);
          window.shareStream = canvas.captureStream(15);
        }
        return window.call.startScreenSharing(window.shareStream);
      }),
    ),
  );
  for (const [p, other] of [[alice, bob], [bob, alice]]) {
    await pollUntil(() => statsByParticipant(p.page), (st) => st[other.id]?.screenShare?.framesDecoded > 10, { timeoutMs: 15000, intervalMs: 500, what: `${p.name} decodes ${other.name}'s share` });
  }
  for (const p of [alice, bob]) {
    const sum = await groupSummary(p.page);
    const counts = await p.page.evaluate(() => window.call._negotiationCounts);
    console.log(`${p.name}: negotiation ${JSON.stringify(counts)}`);
    assert.equal(sum.signalingState, "stable", `${p.name}: negotiation settled`);
    assert.equal(sum.isScreenSharingOn, true);
    assert.deepEqual(sum.participants[0].videoStreams.map((v) => v.type), ["Video", "ScreenSharing"], `${p.name}: the other's camera and share`);
    assert.deepEqual(sum.events.filter((e) => e.what === "error"), [], `${p.name}: no call errors`);
  }
  await alice.page.evaluate(() => window.call.hangUp());
  await pollUntil(() => groupSummary(bob.page), (s) => s.participants.length === 0, { timeoutMs: 5000, what: "Alice gone at Bob" });
  await bob.page.evaluate(() => window.call.hangUp());
});
