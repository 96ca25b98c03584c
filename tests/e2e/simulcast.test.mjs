// Acceptance: simulcast through the SFU. A publisher sends its 1280x720 camera as three layers (rids q/h/f at
// 1/4, 1/2 and full size); subscriber A asks for 1280x720 and gets a large layer, subscriber B asks for 320x180 and
// gets the small one, then asks for 1280x720 and gets a large layer within 3 s while its decoder keeps going, with
// few keyframe requests (PLI) reaching the publisher for the switch. Three Chromium processes.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { browserSlot, launchBrowser } from "./lib/browser.mjs";
import { RAW_AUDIO, connectAgent, joinGroup, statsByParticipant, waitCallState } from "./lib/group.mjs";
import { demoSignIn, startServer } from "./lib/server.mjs";
import { pollUntil } from "./lib/util.mjs";

const MEDIA_TIMEOUT_MS = 20000;
const SWITCH_WITHIN_MS = 3000;

/** @type {Awaited<ReturnType<typeof startServer>>} */
let server;
/** @type {{name: string, browser: any, user: any, id: string}[]} */
let people = [];
let releaseSlot = () => {};

before(async () => {
  releaseSlot = await browserSlot();
  server = await startServer({ label: "simulcast" });
  people = ["Pub", "Alice", "Bob"].map((name) => ({ name, browser: null, user: null, id: "" }));
  for (const p of people) p.user = await demoSignIn(server.httpUrl, p.name);
  for (const p of people) p.browser = await launchBrowser(p.name.toLowerCase());
  await Promise.all(people.map((p) => p.browser.page.goto(`${server.httpUrl}/`)));
  await Promise.all(people.map(async (p) => (p.id = await connectAgent(p.browser.page, p.user.token, p.name))));
});

after(async () => {
  await Promise.allSettled(people.map((p) => p.browser?.close()));
  await server?.stop();
  releaseSlot();
});

/** In the page: setPreferredSize on the camera stream of participant `who`. */
function prefer(page, who, width, height) {
  return page.evaluate(
    async ({ who, width, height }) => {
      const p = window.call.remoteParticipants.find((r) => r.identifier.communicationUserId === who);
      const stream = p?.videoStreams.find((s) => s.mediaStreamType === "Video");
      if (!stream) throw new Error("no camera stream yet");
      await stream.setPreferredSize({ width, height });
    },
    { who, width, height },
  );
}

/** In the page: the publisher's outbound video layers (rid, frameWidth, pliCount). */
function outboundLayers(page) {
  return page.evaluate(async () => {
    const report = await window.call.getStats();
    const layers = [];
    report.forEach((s) => {
      if (s.type === "outbound-rtp" && s.kind === "video") layers.push({ rid: s.rid, frameWidth: s.frameWidth ?? 0, pliCount: s.pliCount ?? 0, active: s.active });
    });
    return layers;
  });
}

const camera = async (page, who) => (await statsByParticipant(page))[who]?.camera;

test("subscribers get the simulcast layer of their size and switch at a keyframe", { timeout: 180000 }, async () => {
  const groupId = crypto.randomUUID();
  const [pub, alice, bob] = people;
  await joinGroup(pub.browser.page, groupId, { audio: RAW_AUDIO, video: true, simulcast: true });
  await waitCallState(pub.browser.page, "Connected", 10000);
  await Promise.all([alice, bob].map((p) => joinGroup(p.browser.page, groupId, { audio: RAW_AUDIO, video: false })));

  // The publisher sends three layers (each encoding already, so the middle one is known by width), the top one
  // at least 640 wide.
  const layers = await pollUntil(() => outboundLayers(pub.browser.page), (l) => l.length === 3 && l.every((x) => x.frameWidth > 0) && l.some((x) => x.frameWidth >= 640), {
    timeoutMs: MEDIA_TIMEOUT_MS,
    intervalMs: 500,
    what: "publisher sending three layers",
  });
  console.log("publisher layers:", JSON.stringify(layers));

  // Preferences, as soon as each subscriber has the publisher's camera stream.
  await Promise.all(
    [
      [alice, 1280, 720],
      [bob, 320, 180],
    ].map(([p, w, h]) =>
      pollUntil(
        () => prefer(p.browser.page, pub.id, w, h).then(() => true, () => false),
        (ok) => ok,
        { timeoutMs: MEDIA_TIMEOUT_MS, intervalMs: 200, what: `${p.name}: camera stream of the publisher` },
      ),
    ),
  );

  const a = await pollUntil(() => camera(alice.browser.page, pub.id), (c) => c?.framesDecoded > 30 && c.frameWidth >= 640, {
    timeoutMs: MEDIA_TIMEOUT_MS,
    intervalMs: 500,
    what: "Alice decoding a layer >= 640 wide",
  });
  const b = await pollUntil(() => camera(bob.browser.page, pub.id), (c) => c?.framesDecoded > 30 && c.frameWidth > 0 && c.frameWidth <= 320, {
    timeoutMs: MEDIA_TIMEOUT_MS,
    intervalMs: 500,
    what: "Bob decoding a layer <= 320 wide",
  });
  console.log("Alice:", JSON.stringify(a), "Bob:", JSON.stringify(b));
  // Bob stays on the small layer (no stray switch up).
  await new Promise((r) => setTimeout(r, 1000));
  const b1 = await camera(bob.browser.page, pub.id);
  assert.ok(b1.frameWidth <= 320, `Bob still gets the small layer: ${JSON.stringify(b1)}`);

  // Dynacast: nobody watches the middle layer, so the publisher is asked to pause it (3 s unwatched).
  const widths = layers.map((l) => l.frameWidth).sort((x, y) => x - y);
  const middleRid = layers.find((l) => l.frameWidth === widths[1]).rid;
  const paused = await pollUntil(() => outboundLayers(pub.browser.page), (l) => l.find((x) => x.rid === middleRid)?.active === false, {
    timeoutMs: 8000,
    intervalMs: 250,
    what: `the unwatched middle layer (rid ${middleRid}) paused at the publisher`,
  });
  console.log("publisher layers after dynacast:", JSON.stringify(paused));
  assert.ok(paused.filter((x) => x.active !== false).length === 2, `the two watched layers stay active: ${JSON.stringify(paused)}`);

  // Bob switches up.
  const pliBefore = (await outboundLayers(pub.browser.page)).reduce((n, l) => n + l.pliCount, 0);
  const switchAt = Date.now();
  await prefer(bob.browser.page, pub.id, 1280, 720);
  const b2 = await pollUntil(() => camera(bob.browser.page, pub.id), (c) => c.frameWidth >= 640, {
    timeoutMs: SWITCH_WITHIN_MS,
    intervalMs: 100,
    what: "Bob decoding a layer >= 640 wide after asking for 1280x720",
  });
  console.log(`Bob switched in ${Date.now() - switchAt} ms:`, JSON.stringify(b2));
  assert.ok(b2.framesDecoded >= b1.framesDecoded, "Bob's decoder kept its count");
  const b3 = await pollUntil(() => camera(bob.browser.page, pub.id), (c) => c.framesDecoded > b2.framesDecoded + 20, {
    timeoutMs: 5000,
    intervalMs: 250,
    what: "Bob decoding frames after the switch",
  });
  assert.ok(b3.frameWidth >= 640, `Bob keeps the large layer: ${JSON.stringify(b3)}`);
  const pliAfter = (await outboundLayers(pub.browser.page)).reduce((n, l) => n + l.pliCount, 0);
  console.log(`publisher PLIs for the switch: ${pliAfter - pliBefore}`);
  assert.ok(pliAfter - pliBefore <= 3, `at most 3 keyframe requests for the switch, got ${pliAfter - pliBefore}`);
  const a2 = await camera(alice.browser.page, pub.id);
  assert.ok(a2.frameWidth >= 640 && a2.framesDecoded > a.framesDecoded, `Alice unaffected: ${JSON.stringify(a2)}`);

  // Both now want the middle size: the paused layer is resumed and both move to it.
  const resumeAt = Date.now();
  await Promise.all([alice, bob].map((p) => prefer(p.browser.page, pub.id, widths[1], Math.round((widths[1] * 9) / 16))));
  for (const p of [alice, bob]) {
    const c = await pollUntil(() => camera(p.browser.page, pub.id), (c) => c.frameWidth === widths[1], {
      timeoutMs: SWITCH_WITHIN_MS + 2000,
      intervalMs: 100,
      what: `${p.name} on the resumed middle layer (${widths[1]} wide)`,
    });
    console.log(`${p.name} on the resumed middle layer ${Date.now() - resumeAt} ms after asking`);
    assert.ok(c.framesDecoded > 0);
  }
  const resumed = await outboundLayers(pub.browser.page);
  assert.notEqual(resumed.find((x) => x.rid === middleRid)?.active, false, `middle layer active again: ${JSON.stringify(resumed)}`);
});
