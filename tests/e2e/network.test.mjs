// Acceptance: simulcast under bad network conditions. A publisher sends its 1280x720 camera as three layers; two
// subscribers ask for 1280x720. Only Alice's downlink (server media port -> her candidate port, on lo) is impaired,
// Bob is the control whose flow must stay untouched.
// - Bandwidth: Alice's downlink limited to 300 kbit/s (tc tbf) -> she is moved to the lowest layer and keeps
//   decoding; the limit lifted -> she is back on the top layer within 10 s.
// - Loss: 5 % random loss on Alice's downlink (nftables numgen) -> her nackCount rises, her decoded frame rate stays
//   >= 50 % of the lossless rate measured just before, and the publisher's PLI count stays within the SFU's keyframe
//   request throttle (one per 500 ms per layer).
// Needs root and the Debian packages nftables and iproute2 (see lib/netem.mjs). Three Chromium processes.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { browserSlot, launchBrowser } from "./lib/browser.mjs";
import { RAW_AUDIO, connectAgent, joinGroup, waitCallState } from "./lib/group.mjs";
import { removeOwnImpairments, removeStaleImpairments, requireNetTools, udpLoss, udpRateLimit } from "./lib/netem.mjs";
import { demoSignIn, startServer } from "./lib/server.mjs";
import { pollUntil, sleep } from "./lib/util.mjs";

const MEDIA_TIMEOUT_MS = 20000;
const DOWN_WITHIN_MS = 30000;
const CLIMB_WITHIN_MS = 10000;
const RATE_LIMIT = "300kbit";
const LOSS_PERCENT = 5;
const MEASURE_MS = 8000;
/** The SFU's KEYFRAME_REQUEST_INTERVAL (src/sfu/throttle.rs). */
const PLI_INTERVAL_MS = 500;

/** @type {Awaited<ReturnType<typeof startServer>>} */
let server;
/** @type {{name: string, browser: any, user: any, id: string}[]} */
let people = [];
let releaseSlot = () => {};
/** Impairments installed now, removed in `after` even when a test failed half-way. */
const installed = new Set();

before(async () => {
  requireNetTools();
  process.once("exit", removeOwnImpairments);
  releaseSlot = await browserSlot();
  removeStaleImpairments();
  server = await startServer({ label: "network" });
  people = ["Pub", "Alice", "Bob"].map((name) => ({ name, browser: null, user: null, id: "" }));
  for (const p of people) p.user = await demoSignIn(server.httpUrl, p.name);
  for (const p of people) p.browser = await launchBrowser(p.name.toLowerCase());
  await Promise.all(people.map((p) => p.browser.page.goto(`${server.httpUrl}/`)));
  await Promise.all(people.map(async (p) => (p.id = await connectAgent(p.browser.page, p.user.token, p.name))));
});

after(async () => {
  for (const i of installed) i.remove();
  installed.clear();
  removeOwnImpairments();
  await Promise.allSettled(people.map((p) => p.browser?.close()));
  await server?.stop();
  releaseSlot();
});

/** Installs an impairment and tracks it for `after`; returns it. */
function install(impairment) {
  installed.add(impairment);
  return impairment;
}
function uninstall(impairment) {
  impairment.remove();
  installed.delete(impairment);
}

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

/** In the page: the publisher's outbound video layers (rid, frameWidth, pliCount, nackCount). */
function outboundLayers(page) {
  return page.evaluate(async () => {
    const report = await window.call.getStats();
    const layers = [];
    report.forEach((s) => {
      if (s.type === "outbound-rtp" && s.kind === "video")
        layers.push({ rid: s.rid, frameWidth: s.frameWidth ?? 0, pliCount: s.pliCount ?? 0, nackCount: s.nackCount ?? 0, active: s.active });
    });
    return layers;
  });
}
const pliSum = (layers) => layers.reduce((n, l) => n + l.pliCount, 0);

/**
 * In the page: inbound-rtp of participant `who`'s camera (found by the SDK's mid mapping) and the selected candidate
 * pair's local and remote ports.
 */
function camera(page, who) {
  return page.evaluate(async (who) => {
    const call = window.call;
    const t = call.remoteTracks.find((r) => r.communicationUserId === who && r.source === "camera");
    const report = await call.getStats();
    let pairId = null;
    const videos = [];
    report.forEach((s) => {
      if (s.type === "inbound-rtp" && s.kind === "video") videos.push(s);
      if (s.type === "transport" && s.selectedCandidatePairId) pairId = s.selectedCandidatePairId;
    });
    // By mid, else by track id; of several entries (an m-line's earlier SSRC), the one that received the most.
    const most = (list) => list.sort((a, b) => (b.packetsReceived ?? 0) - (a.packetsReceived ?? 0))[0] ?? null;
    const inbound = t ? most(videos.filter((s) => String(s.mid) === t.mid)) || most(videos.filter((s) => s.trackIdentifier === t.track.id)) : null;
    if (!pairId) report.forEach((s) => s.type === "candidate-pair" && s.nominated && s.state === "succeeded" && (pairId = s.id));
    const pair = pairId ? report.get(pairId) : null;
    const local = pair ? report.get(pair.localCandidateId) : null;
    const remote = pair ? report.get(pair.remoteCandidateId) : null;
    return {
      at: Date.now(),
      framesDecoded: inbound?.framesDecoded ?? 0,
      frameWidth: inbound?.frameWidth ?? 0,
      nackCount: inbound?.nackCount ?? 0,
      pliCount: inbound?.pliCount ?? 0,
      packetsLost: inbound?.packetsLost ?? 0,
      packetsReceived: inbound?.packetsReceived ?? 0,
      local: local ? { type: local.candidateType, address: local.address, port: local.port, protocol: local.protocol } : null,
      remote: remote ? { type: remote.candidateType, address: remote.address, port: remote.port } : null,
      mid: t?.mid ?? null,
      inbound: videos.map((s) => `mid ${s.mid} ssrc ${s.ssrc} packets ${s.packetsReceived} frames ${s.framesDecoded}`).join("; "),
    };
  }, who);
}

/** Frames decoded per second by `page` from `who` over `ms`, with the first and last samples. */
async function decodeRate(page, who, ms) {
  const a = await camera(page, who);
  await sleep(ms);
  const b = await camera(page, who);
  return { fps: ((b.framesDecoded - a.framesDecoded) * 1000) / (b.at - a.at), a, b };
}

/** Joins the three, waits for both subscribers to decode the top layer; returns the publisher's layer widths. */
async function setUpCall() {
  const groupId = crypto.randomUUID();
  const [pub, alice, bob] = people;
  await joinGroup(pub.browser.page, groupId, { audio: RAW_AUDIO, video: true, simulcast: true });
  await waitCallState(pub.browser.page, "Connected", 10000);
  await Promise.all([alice, bob].map((p) => joinGroup(p.browser.page, groupId, { audio: RAW_AUDIO, video: false })));
  const layers = await pollUntil(() => outboundLayers(pub.browser.page), (l) => l.length === 3 && l.some((x) => x.frameWidth >= 640), {
    timeoutMs: MEDIA_TIMEOUT_MS,
    intervalMs: 500,
    what: "publisher sending three layers",
  });
  console.log("publisher layers:", JSON.stringify(layers));
  await Promise.all(
    [alice, bob].map((p) =>
      pollUntil(
        () => prefer(p.browser.page, pub.id, 1280, 720).then(() => true, () => false),
        (ok) => ok,
        { timeoutMs: MEDIA_TIMEOUT_MS, intervalMs: 200, what: `${p.name}: camera stream of the publisher` },
      ),
    ),
  );
  for (const p of [alice, bob]) {
    const c = await pollUntil(() => camera(p.browser.page, pub.id), (c) => c.framesDecoded > 30 && c.frameWidth >= 640, {
      timeoutMs: MEDIA_TIMEOUT_MS,
      intervalMs: 500,
      what: `${p.name} decoding a layer >= 640 wide`,
    });
    console.log(`${p.name}:`, JSON.stringify(c));
  }
}

let callReady = null;
/** The call of both tests, set up once (the second test also works alone, e.g. with --test-name-pattern). */
const ensureCall = () => (callReady ||= setUpCall());

/** The widths of the layers now: lowest and top (from the publisher's outbound-rtp). */
async function layerWidths() {
  const l = (await outboundLayers(people[0].browser.page)).filter((x) => x.frameWidth > 0);
  const widths = l.map((x) => x.frameWidth).sort((a, b) => a - b);
  return { lowest: widths[0], top: widths[widths.length - 1] };
}

/**
 * Alice's flow: the server media port of the call's worker -> her selected local candidate port; checked against
 * the remote candidate. The server runs several media workers (one port each) and the call's room is on one of them.
 */
async function aliceFlow() {
  const [pub, alice] = people;
  const c = await camera(alice.browser.page, pub.id);
  assert.ok(c.local && c.remote, `Alice has a selected candidate pair: ${JSON.stringify(c)}`);
  assert.equal(c.local.protocol, "udp", `Alice's media goes over UDP: ${JSON.stringify(c.local)}`);
  assert.ok(
    server.mediaPorts.includes(c.remote.port),
    `Alice's remote candidate is one of the server's media ports ${server.mediaPorts}: ${JSON.stringify(c.remote)}`,
  );
  const sport = c.remote.port;
  console.log(`Alice's flow: server :${sport} -> ${c.local.type} ${c.local.address}:${c.local.port}`);
  return { sport, dport: c.local.port };
}

// How the SFU gets there is in sfu::downlink, sfu::backlog and sfu::simulcast (docs/protocol.md,
// setPreferredVideoSize): congestion is an estimate falling below the rate sent, or the pacer queue backing up while
// TWCC feedback shows loss (a queue without loss is the estimate still ramping up: the control subscriber was once
// pulled down by it right after the call started); probes every second after a 2 s hold unless the last second's
// TWCC loss is 2 % or more (receiver reports, which repeat an old fraction lost for seconds, held probing 1–3 s
// after the lift); restarts of an estimator below the rate sent, not lifted by probes or with loss since the last
// probe (2, then 3 s apart at most) or whose probe result str0m's loss controller pulled back; while a switch down
// is pending and str0m's pacer queue holds more than 300 ms of video, the subscriber's frames are dropped at the
// SFU, and it resumes at a keyframe of the lower layer once the queue drained. The cap is lifted once str0m's
// unsmoothed estimate (not its 3 s average, which took 2–4 s to climb) covers the preferred layers and 1 s of
// padding up to their rate shows no loss (a probe once overstated the shaped link); Alice then goes straight to the
// top layer. A dynacast-paused layer counts at least twice the rate of the one below (one run switched Alice under
// the cap to a middle layer paused at its start-up rate).
// History: before the backlog gate, 2.7–20 frames/s under the cap and climb-back 3.7–9.1 s; with it, 12–25 frames/s
// and 3.4–7.3 s. Now, eight runs in a row on the 2-core machine (three beside a looping cargo clippy, load 2–4):
// Alice on the lowest layer 4.1–8.3 s after the cap, 14–21 frames/s decoded there, back on the top layer 2.3–3.7 s
// after the lift (3.4, 2.3, 2.4, 3.7, 3.2; loaded 2.6, 3.2, 3.3), Bob never constrained (an earlier build of this,
// without the pulled-back restart, also passed eight in a row at 1.7–5.9 s). No longer `todo`.
test("bandwidth: a subscriber limited to 300 kbit/s gets the lowest layer, and climbs back when the limit is lifted", { timeout: 240000 }, async () => {
  await ensureCall();
  const [pub, alice, bob] = people;
  const flow = await aliceFlow();
  const bob0 = await camera(bob.browser.page, pub.id);

  const started = Date.now();
  const cap = install(udpRateLimit({ ...flow, rate: RATE_LIMIT }));
  console.log(`limit on at ${new Date(started).toISOString()} (server log time)`);
  let down;
  try {
    // Moved to the lowest layer (the publisher's smallest width now: CPU adaptation may scale layers).
    down = await pollUntil(
      async () => ({ c: await camera(alice.browser.page, pub.id), w: await layerWidths() }),
      ({ c, w }) => c.frameWidth > 0 && c.frameWidth === w.lowest,
      { timeoutMs: DOWN_WITHIN_MS, intervalMs: 250, what: `Alice on the lowest layer under ${RATE_LIMIT}` },
    );
    console.log(`Alice on the lowest layer ${Date.now() - started} ms after the limit:`, JSON.stringify(down.c), JSON.stringify(down.w));
    // And keeps decoding there (the first second after the switch may still drain the queue of the larger layer).
    const kept = await pollUntil(
      () => camera(alice.browser.page, pub.id),
      (c) => c.framesDecoded >= down.c.framesDecoded + 20,
      { timeoutMs: 8000, intervalMs: 250, what: `Alice decoding 20 more frames under ${RATE_LIMIT}` },
    );
    const keptFps = ((kept.framesDecoded - down.c.framesDecoded) * 1000) / (kept.at - down.c.at);
    console.log(`Alice under ${RATE_LIMIT}: ${keptFps.toFixed(1)} frames/s decoded, width ${kept.frameWidth}`);
    assert.equal(kept.frameWidth, down.w.lowest, `Alice stays on the lowest layer: ${JSON.stringify(kept)}`);

    // The filter took Alice's flow, and only it: Bob (same server port, other client port) keeps his top layer.
    const counters = cap.counters();
    console.log("tc counters:", JSON.stringify(counters));
    assert.ok(counters.packets > 100, `the tc filter matched Alice's flow: ${JSON.stringify(counters)}`);
    // Bob's 60 frames are waited for (up to 8 s, the cap still on) rather than sampled now: when Alice is down and
    // decoding quickly, the window since bob0 can be shorter than 60 frames of a loaded publisher.
    const bob1 = await pollUntil(
      () => camera(bob.browser.page, pub.id),
      (c) => c.framesDecoded > bob0.framesDecoded + 60,
      { timeoutMs: 8000, intervalMs: 250, what: "Bob decoding 60 more frames while Alice is capped" },
    );
    assert.ok(bob1.frameWidth >= 640, `Bob unaffected: ${JSON.stringify({ bob0, bob1 })}`);
  } finally {
    uninstall(cap);
  }

  // Polled past the 10 s for the report: the widths Alice decodes after the lift, and when the top layer came.
  const lifted = Date.now();
  console.log(`limit lifted at ${new Date(lifted).toISOString()}`);
  const steps = [];
  const up = await pollUntil(
    async () => ({ c: await camera(alice.browser.page, pub.id), w: await layerWidths() }),
    ({ c, w }) => {
      if (steps.at(-1)?.width !== c.frameWidth) steps.push({ ms: c.at - lifted, width: c.frameWidth });
      return c.frameWidth === w.top && c.frameWidth >= 640;
    },
    { timeoutMs: 3 * CLIMB_WITHIN_MS, intervalMs: 250, what: "Alice back on the top layer after the limit was lifted" },
  );
  const climbMs = up.c.at - lifted;
  console.log(`Alice back on the top layer ${climbMs} ms after the limit was lifted; widths: ${JSON.stringify(steps)}`);
  assert.ok(climbMs <= CLIMB_WITHIN_MS, `Alice back on the top layer within ${CLIMB_WITHIN_MS} ms of the lift: took ${climbMs} ms (${JSON.stringify(steps)})`);
  assert.ok(up.c.framesDecoded > down.c.framesDecoded, "Alice's decoder kept its count");
});

test("loss: 5 % loss on a subscriber's path -> NACKs, video keeps decoding, PLIs within the throttle", { timeout: 180000 }, async () => {
  await ensureCall();
  const [pub, alice] = people;
  // A lossless run first, on whatever layer Alice gets now.
  await pollUntil(() => camera(alice.browser.page, pub.id), (c) => c.frameWidth >= 640, {
    timeoutMs: MEDIA_TIMEOUT_MS,
    intervalMs: 250,
    what: "Alice on a large layer before the lossless run",
  });
  const lossless = await decodeRate(alice.browser.page, pub.id, MEASURE_MS);
  console.log(`lossless: ${lossless.fps.toFixed(1)} frames/s, nackCount ${lossless.a.nackCount} -> ${lossless.b.nackCount}`);
  assert.ok(lossless.fps > 5, `Alice decodes without loss: ${JSON.stringify(lossless)}`);

  const flow = await aliceFlow();
  const layersBefore = await outboundLayers(pub.browser.page);
  const started = Date.now();
  const loss = install(udpLoss({ ...flow, percent: LOSS_PERCENT }));
  let lossy;
  let counters;
  try {
    await sleep(1000);
    lossy = await decodeRate(alice.browser.page, pub.id, MEASURE_MS);
    counters = loss.counters();
  } finally {
    uninstall(loss);
  }
  const layersAfter = await outboundLayers(pub.browser.page);
  const elapsed = Date.now() - started;
  console.log(`${LOSS_PERCENT} % loss: ${lossy.fps.toFixed(1)} frames/s, width ${lossy.a.frameWidth} -> ${lossy.b.frameWidth}, ` +
    `nackCount ${lossy.a.nackCount} -> ${lossy.b.nackCount}, packetsLost ${lossy.a.packetsLost} -> ${lossy.b.packetsLost}, ` +
    `subscriber PLIs ${lossy.a.pliCount} -> ${lossy.b.pliCount}; nft ${JSON.stringify(counters)}`);

  const dropRatio = counters.dropped / counters.matched;
  assert.ok(counters.matched > 200, `the nft rule matched Alice's flow: ${JSON.stringify(counters)}`);
  assert.ok(dropRatio > 0.02 && dropRatio < 0.1, `about ${LOSS_PERCENT} % dropped: ${JSON.stringify(counters)}`);
  assert.ok(lossy.b.nackCount > lossy.a.nackCount, `Alice's nackCount rises under loss: ${JSON.stringify(lossy)}`);
  assert.ok(lossy.fps >= 0.5 * lossless.fps, `decoded rate under loss ${lossy.fps.toFixed(1)} >= 50 % of lossless ${lossless.fps.toFixed(1)}`);

  const plis = pliSum(layersAfter) - pliSum(layersBefore);
  const allowed = layersAfter.length * Math.ceil(elapsed / PLI_INTERVAL_MS);
  console.log(`publisher PLIs over ${elapsed} ms of loss: ${plis} (throttle allows ${allowed}); per layer ` +
    JSON.stringify(layersAfter.map((l) => ({ rid: l.rid, pli: l.pliCount - (layersBefore.find((b) => b.rid === l.rid)?.pliCount ?? 0) }))));
  assert.ok(plis <= allowed, `publisher PLIs ${plis} within the throttle (${allowed} over ${elapsed} ms)`);
  // Per layer too: no layer got more than one request per interval.
  for (const l of layersAfter) {
    const d = l.pliCount - (layersBefore.find((b) => b.rid === l.rid)?.pliCount ?? 0);
    assert.ok(d <= Math.ceil(elapsed / PLI_INTERVAL_MS), `layer ${l.rid}: ${d} PLIs over ${elapsed} ms`);
  }
});
