// Acceptance: a group call of four separate Chromium processes through the web SDK and the server's SFU.
// Everyone receives everyone else's audio and camera (mapped to the right participant), the participant lists
// agree, a leaver is seen as removed within 2 s, and the organizer ends the call for everyone.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { browserSlot, launchBrowser } from "./lib/browser.mjs";
import { RAW_AUDIO, connectAgent, groupSummary, joinGroup, statsByParticipant, waitCallState } from "./lib/group.mjs";
import { demoSignIn, startServer } from "./lib/server.mjs";
import { pollUntil } from "./lib/util.mjs";

const MEDIA_TIMEOUT_MS = 15000;
const REMOVED_WITHIN_MS = 2000;

// Each participant sends its own frame shape, so a receiver can tell whose video a stream really carries
// (CPU adaptation may scale a stream down, but keeps its aspect ratio).
const PEOPLE = [
  { name: "Alice", video: { width: { exact: 320 }, height: { exact: 240 }, frameRate: 15 } }, // 4:3
  { name: "Bob", video: { width: { exact: 320 }, height: { exact: 180 }, frameRate: 15 } }, // 16:9
  { name: "Carol", video: { width: { exact: 240 }, height: { exact: 240 }, frameRate: 15 } }, // 1:1
  { name: "Dave", video: { width: { exact: 180 }, height: { exact: 240 }, frameRate: 15 } }, // 3:4
];
const aspect = (v) => v.width.exact / v.height.exact;

/** @type {Awaited<ReturnType<typeof startServer>>} */
let server;
/** @type {{name: string, video: object, browser: Awaited<ReturnType<typeof launchBrowser>>, user: any, id: string}[]} */
let people = [];
let releaseSlot = () => {};

before(async () => {
  releaseSlot = await browserSlot();
  server = await startServer({ label: "group_call" });
  people = PEOPLE.map((p) => ({ ...p, browser: null, user: null, id: "" }));
  for (const p of people) p.user = await demoSignIn(server.httpUrl, p.name);
  // Four Chromium processes (the most this suite runs at once), started two at a time.
  for (let i = 0; i < people.length; i += 2) {
    await Promise.all(people.slice(i, i + 2).map(async (p) => (p.browser = await launchBrowser(p.name.toLowerCase()))));
  }
  await Promise.all(people.map((p) => p.browser.page.goto(`${server.httpUrl}/`)));
  await Promise.all(people.map(async (p) => (p.id = await connectAgent(p.browser.page, p.user.token, p.name))));
});

after(async () => {
  await Promise.allSettled(people.map((p) => p.browser?.close()));
  await server?.stop();
  releaseSlot();
});

test("four participants in one group call", { timeout: 240000 }, async () => {
  const groupId = crypto.randomUUID();
  const [alice, bob, carol, dave] = people;
  const options = (p) => ({ audio: RAW_AUDIO, video: p.video });

  // Alice joins first (the organizer), then the others at once.
  assert.equal(await joinGroup(alice.browser.page, groupId, options(alice)), "Connecting", "join returns the Call synchronously in Connecting");
  const a0 = await waitCallState(alice.browser.page, "Connected", 10000);
  assert.deepEqual(a0.participants, [], "Alice is alone at first");
  await Promise.all([bob, carol, dave].map((p) => joinGroup(p.browser.page, groupId, options(p))));
  const joinedAt = Date.now();

  // Participant lists agree: everyone sees the other three, Connected, with their names.
  const summaries = await Promise.all(
    people.map((p) =>
      pollUntil(() => groupSummary(p.browser.page), (s) => s?.state === "Connected" && s.participants.length === 3, {
        timeoutMs: 10000,
        intervalMs: 200,
        what: `${p.name}: Connected with 3 remote participants`,
      }),
    ),
  );
  const callIds = new Set(summaries.map((s) => s.id));
  assert.equal(callIds.size, 1, `one call id for everyone: ${[...callIds]}`);
  for (const [i, p] of people.entries()) {
    const expected = people.filter((o) => o !== p).map((o) => [o.id, o.name, "Connected"]).sort();
    const seen = summaries[i].participants.map((r) => [r.id, r.displayName, r.state]).sort();
    assert.deepEqual(seen, expected, `${p.name}'s participant list`);
  }

  // Media: each receives audio packets and decodes > 30 frames of each other participant's camera, mapped to
  // the right participant (the frame shape tells whose camera it is).
  const enough = (p) => (stats) =>
    people.filter((o) => o !== p).every((o) => stats[o.id]?.audio?.packetsReceived > 50 && stats[o.id]?.camera?.framesDecoded > 30);
  const results = await Promise.all(
    people.map((p) =>
      pollUntil(() => statsByParticipant(p.browser.page), enough(p), {
        timeoutMs: MEDIA_TIMEOUT_MS,
        intervalMs: 500,
        what: `${p.name}: audio packets > 50 and > 30 decoded camera frames from each of the other three`,
      }),
    ),
  );
  console.log(`all media flowing ${Date.now() - joinedAt} ms after the last three joined`);
  for (const [i, p] of people.entries()) {
    for (const o of people.filter((x) => x !== p)) {
      const cam = results[i][o.id].camera;
      const ratio = cam.frameWidth / cam.frameHeight;
      console.log(`${p.name} <- ${o.name}: audio ${results[i][o.id].audio.packetsReceived} packets (mid ${results[i][o.id].audio.mid}), camera ${cam.framesDecoded} frames ${cam.frameWidth}x${cam.frameHeight} (mid ${cam.mid})`);
      assert.ok(Math.abs(ratio - aspect(o.video)) / aspect(o.video) < 0.08, `${p.name}: the stream mapped to ${o.name} is ${cam.frameWidth}x${cam.frameHeight}, not ${o.name}'s shape`);
      assert.equal(cam.byTrackId, true, `${p.name}: stats mid and track id agree for ${o.name}'s camera`);
    }
    const s = await groupSummary(p.browser.page);
    assert.deepEqual(s.audioElements.slice().sort(), people.filter((o) => o !== p).map((o) => o.id).sort(), `${p.name}: one hidden <audio> per other participant`);
    for (const r of s.participants) assert.deepEqual(r.videoStreams.map((v) => v.type), ["Video"], `${p.name}: ${r.displayName} has one camera stream`);
    assert.deepEqual(s.events.filter((e) => e.what === "error"), [], `${p.name}: no call errors`);
  }

  // Dave leaves: the other three see him removed within 2 s, with his media.
  const leftAt = Date.now();
  await dave.browser.page.evaluate(() => window.call.hangUp());
  const d = await groupSummary(dave.browser.page);
  assert.equal(d.state, "Disconnected");
  assert.equal(d.callEndReason.code, 0);
  for (const p of [alice, bob, carol]) {
    const s = await pollUntil(
      () => groupSummary(p.browser.page),
      (s) => s.events.some((e) => e.what === "remoteParticipantsUpdated" && e.removed.includes(dave.id)),
      { timeoutMs: 5000, intervalMs: 100, what: `${p.name} sees Dave removed` },
    );
    const removedAt = s.events.find((e) => e.what === "remoteParticipantsUpdated" && e.removed.includes(dave.id)).at;
    console.log(`${p.name} saw Dave removed ${removedAt - leftAt} ms after hangUp()`);
    assert.ok(removedAt - leftAt <= REMOVED_WITHIN_MS, `${p.name} saw Dave removed after ${removedAt - leftAt} ms (limit ${REMOVED_WITHIN_MS})`);
    assert.deepEqual(s.participants.map((r) => r.id).sort(), people.filter((o) => o !== p && o !== dave).map((o) => o.id).sort());
    assert.ok(!s.audioElements.includes(dave.id), `${p.name}: Dave's <audio> is gone`);
  }

  // Media keeps flowing between the three.
  for (const p of [alice, bob, carol]) {
    const before = await statsByParticipant(p.browser.page);
    await pollUntil(
      () => statsByParticipant(p.browser.page),
      (now) => [alice, bob, carol].filter((o) => o !== p).every((o) => now[o.id]?.camera?.framesDecoded > before[o.id].camera.framesDecoded + 10),
      { timeoutMs: 10000, intervalMs: 500, what: `${p.name} still decodes the two others after Dave left` },
    );
  }

  // Alice (the organizer) ends the call for everyone: Bob's and Carol's calls end with code 0 (subcode 5001).
  await alice.browser.page.evaluate(() => window.call.hangUp({ forEveryone: true }));
  const a = await groupSummary(alice.browser.page);
  assert.equal(a.state, "Disconnected");
  assert.equal(a.callEndReason.code, 0);
  for (const p of [bob, carol]) {
    const s = await waitCallState(p.browser.page, "Disconnected", 5000);
    assert.equal(s.callEndReason.code, 0, `${p.name}'s end reason ${JSON.stringify(s.callEndReason)}`);
    assert.equal(s.callEndReason.subcode, 5001, `${p.name}'s end reason ${JSON.stringify(s.callEndReason)}`);
    assert.equal(s.agentCalls, 0);
    assert.deepEqual(s.audioElements, []);
  }
});
