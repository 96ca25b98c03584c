// The calling page at "/", driven like a person would: type a name, sign in, pick the other person, Call,
// Accept, see and hear each other, Mute, Camera off/on, Hang up. Saves target/e2e/calling-page.png.
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { after, before, test } from "node:test";

import { browserSlot, launchBrowser } from "./lib/browser.mjs";
import { artifactsDir, startServer } from "./lib/server.mjs";
import { inboundStats, pollUntil } from "./lib/util.mjs";

/** @type {Awaited<ReturnType<typeof startServer>>} */
let server;
/** @type {Awaited<ReturnType<typeof launchBrowser>>} */
let alice;
/** @type {Awaited<ReturnType<typeof launchBrowser>>} */
let bob;
let releaseSlot = () => {};

before(async () => {
  releaseSlot = await browserSlot();
  server = await startServer({ label: "calling_page" });
  [alice, bob] = await Promise.all([launchBrowser("alice-page"), launchBrowser("bob-page")]);
});

after(async () => {
  await Promise.allSettled([alice?.close(), bob?.close()]);
  await server?.stop();
  releaseSlot();
});

/** Types a name and signs in; returns the id the page shows. */
async function signIn(page, name) {
  await page.goto(`${server.httpUrl}/`);
  await page.getByLabel("Your name").fill(name);
  await page.locator("#signin").click();
  await page.locator("#my-id").filter({ hasText: /^8:acs:/ }).waitFor({ timeout: 15000 });
  assert.equal(await page.locator("#signin-error").isVisible(), false);
  return (await page.locator("#my-id").textContent()).trim();
}

/** The page's #state: its data-state attribute and text. */
function stateOf(page) {
  return page.locator("#state").evaluate((el) => ({ state: el.dataset.state, text: el.textContent }));
}

function waitState(page, state, timeoutMs) {
  return pollUntil(() => stateOf(page), (s) => s.state === state, { timeoutMs, intervalMs: 200, what: `#state data-state=${state}` });
}

/** In the page: how much the <video> has shown, and the luminance spread of its current frame. */
function videoFrameInfo(page, selector) {
  return page.locator(selector).evaluate((video) => {
    const info = {
      readyState: video.readyState,
      width: video.videoWidth,
      height: video.videoHeight,
      frames: typeof video.getVideoPlaybackQuality === "function" ? video.getVideoPlaybackQuality().totalVideoFrames : -1,
      lumaStdDev: 0,
      lumaMean: 0,
    };
    if (!info.width || !info.height) return info;
    const canvas = document.createElement("canvas");
    canvas.width = info.width;
    canvas.height = info.height;
    const ctx = canvas.getContext("2d", { willReadFrequently: true });
    ctx.drawImage(video, 0, 0, info.width, info.height);
    const { data } = ctx.getImageData(0, 0, info.width, info.height);
    let sum = 0;
    let sumSq = 0;
    const n = data.length / 4;
    for (let i = 0; i < data.length; i += 4) {
      const y = 0.299 * data[i] + 0.587 * data[i + 1] + 0.114 * data[i + 2];
      sum += y;
      sumSq += y * y;
    }
    info.lumaMean = sum / n;
    info.lumaStdDev = Math.sqrt(Math.max(0, sumSq / n - info.lumaMean * info.lumaMean));
    return info;
  });
}

test("a 1:1 video call through the calling page", { timeout: 240000 }, async () => {
  const aliceId = await signIn(alice.page, "Alice");
  const bobId = await signIn(bob.page, "Bob");
  assert.notEqual(aliceId, bobId);

  // Alice picks Bob from the people list (refreshed every 3 s).
  const bobEntry = alice.page.locator("#people button", { hasText: "Bob" });
  await bobEntry.waitFor({ timeout: 15000 });
  await pollUntil(() => bobEntry.textContent(), (t) => /online/.test(t) && !/offline/.test(t), { timeoutMs: 10000, what: "Bob listed online" });
  await bobEntry.click();
  assert.equal(await alice.page.locator("#callee").inputValue(), bobId);
  await alice.page.locator("#call").click();

  // Bob sees the incoming call banner and accepts.
  await bob.page.locator("#accept").waitFor({ state: "visible", timeout: 15000 });
  assert.match(await bob.page.locator("#incoming-text").textContent(), /Alice/);
  assert.match((await stateOf(alice.page)).state, /^(Connecting|Ringing)$/);
  await bob.page.locator("#accept").click();
  await bob.page.locator("#incoming").waitFor({ state: "hidden", timeout: 5000 });

  const [sa, sb] = await Promise.all([waitState(alice.page, "Connected", 15000), waitState(bob.page, "Connected", 15000)]);
  assert.match(sa.text, /Connected/);
  assert.match(sa.text, /Bob/);
  assert.match(sb.text, /Connected/);
  assert.match(sb.text, /Alice/);

  // Both decode the other's video and receive audio.
  for (const p of [alice, bob]) {
    await pollUntil(() => inboundStats(p.page, "app"), (s) => s.audio?.packetsReceived > 100 && s.video?.framesDecoded > 30, {
      timeoutMs: 20000,
      intervalMs: 500,
      what: `${p.label}: audio packets and decoded video`,
    });
    const remote = await pollUntil(() => videoFrameInfo(p.page, "#remote-video"), (v) => v.readyState >= 2 && v.width > 0 && v.frames > 30, {
      timeoutMs: 15000,
      intervalMs: 500,
      what: `${p.label}: #remote-video playing`,
    });
    assert.ok(remote.lumaStdDev > 5, `${p.label}: #remote-video is not blank (luma std dev ${remote.lumaStdDev.toFixed(1)})`);
    const local = await pollUntil(() => videoFrameInfo(p.page, "#local-video"), (v) => v.readyState >= 2 && v.width > 0, {
      timeoutMs: 10000,
      what: `${p.label}: #local-video playing`,
    });
    assert.ok(local.lumaStdDev > 5, `${p.label}: #local-video is not blank (luma std dev ${local.lumaStdDev.toFixed(1)})`);
    assert.equal(await p.page.locator("#remote-placeholder").isVisible(), false, `${p.label}: no placeholder over live video`);
  }

  fs.mkdirSync(artifactsDir, { recursive: true });
  const shot = path.join(artifactsDir, "calling-page.png");
  await alice.page.screenshot({ path: shot, fullPage: true });
  assert.ok(fs.statSync(shot).size > 10000, "screenshot written");
  console.log(`screenshot: ${shot}`);

  // Mute: the button flips and Bob's page labels Alice as muted.
  await alice.page.locator("#mute").click();
  await pollUntil(() => alice.page.locator("#mute").textContent(), (t) => t === "Unmute", { timeoutMs: 5000, what: "#mute says Unmute" });
  assert.equal(await alice.page.locator("#mute").getAttribute("aria-pressed"), "true");
  await pollUntil(() => bob.page.locator("#remote-label").textContent(), (t) => /muted/.test(t), { timeoutMs: 5000, what: "Bob's page shows Alice muted" });
  await alice.page.locator("#mute").click();
  await pollUntil(() => bob.page.locator("#remote-label").textContent(), (t) => !/muted/.test(t), { timeoutMs: 5000, what: "Bob's page shows Alice unmuted" });

  // Camera off: Alice's self-view empties and Bob's page shows the camera-off placeholder; then on again.
  await alice.page.locator("#camera").click();
  await pollUntil(() => alice.page.locator("#camera").textContent(), (t) => t === "Camera on", { timeoutMs: 5000, what: "#camera says Camera on" });
  assert.equal(await alice.page.locator("#local-video").evaluate((v) => v.srcObject), null);
  await bob.page.locator("#remote-placeholder").waitFor({ state: "visible", timeout: 10000 });
  await alice.page.locator("#camera").click();
  await pollUntil(() => alice.page.locator("#camera").textContent(), (t) => t === "Camera off", { timeoutMs: 10000, what: "#camera says Camera off" });
  await bob.page.locator("#remote-placeholder").waitFor({ state: "hidden", timeout: 15000 });

  // Hang up: both pages show the ended state; controls are disabled again.
  await alice.page.locator("#hangup").click();
  const [ea, eb] = await Promise.all([waitState(alice.page, "Disconnected", 10000), waitState(bob.page, "Disconnected", 10000)]);
  assert.match(ea.text, /ended/);
  assert.match(eb.text, /ended/);
  assert.match(await bob.page.locator("#end-reason").textContent(), /code 0\)/);
  for (const p of [alice, bob]) {
    assert.equal(await p.page.locator("#hangup").isDisabled(), true);
    assert.equal(await p.page.locator("#call").isEnabled(), true);
  }
});

/** Signs in unless the page already is. Returns the page's id. */
async function ensureSignedIn(page, name) {
  const visible = await page.locator("#me-panel").isVisible().catch(() => false);
  if (!visible) return signIn(page, name);
  return (await page.locator("#my-id").textContent()).trim();
}

/** In the page: how many frames the tile's <video> has shown and whether it is blank. */
function tileVideo(page, selector) {
  return videoFrameInfo(page, `${selector} video`);
}

test("a group call through the calling page: join by id, tiles, screen share, end for all", { timeout: 240000 }, async () => {
  const aliceId = await ensureSignedIn(alice.page, "Alice");
  const bobId = await ensureSignedIn(bob.page, "Bob");

  // Alice makes a new group id and joins; Bob joins with the same id.
  await alice.page.locator("#new-group").click();
  const groupId = await alice.page.locator("#group-id").inputValue();
  assert.match(groupId, /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
  await alice.page.locator("#join").click();
  await waitState(alice.page, "Connected", 15000);
  assert.equal(await alice.page.locator("#join").isDisabled(), true, "no second join while in a call");
  assert.match(new URL(alice.page.url()).search, new RegExp(`group=${groupId}`), "the page address carries the group id");
  await bob.page.locator("#group-id").fill(groupId);
  await bob.page.locator("#join").click();
  const [sa, sb] = await Promise.all([
    pollUntil(() => stateOf(alice.page), (s) => s.state === "Connected" && /1 other/.test(s.text), { timeoutMs: 15000, what: "Alice: in a group call with 1 other" }),
    waitState(bob.page, "Connected", 15000),
  ]);
  assert.match(sb.text, /group call/);
  console.log(`group page states: ${sa.text} | ${sb.text}`);

  // Tiles: each sees the other's camera, labelled with the name and a speaking indicator.
  for (const [p, otherId, otherName] of [[alice, bobId, "Bob"], [bob, aliceId, "Alice"]]) {
    const tile = `#grid .tile[data-user-id="${otherId}"][data-kind="camera"]`;
    await p.page.locator(tile).waitFor({ timeout: 15000 });
    const v = await pollUntil(() => tileVideo(p.page, tile), (v) => v.readyState >= 2 && v.frames > 20, { timeoutMs: 20000, intervalMs: 500, what: `${p.label}: ${otherName}'s tile playing` });
    assert.ok(v.lumaStdDev > 5, `${p.label}: ${otherName}'s tile is not blank`);
    assert.match(await p.page.locator(`${tile} .label`).textContent(), new RegExp(otherName));
    assert.equal(await p.page.locator(`${tile} .speaking-indicator`).count(), 1);
    assert.match(await p.page.locator(tile).getAttribute("data-speaking"), /^(true|false)$/);
    assert.equal(await p.page.locator("#remote-video").isVisible(), false, `${p.label}: the 1:1 view is hidden in a group call`);
    assert.equal(await p.page.locator("#leave").isVisible(), true);
    assert.equal(await p.page.locator("#end-for-all").isVisible(), true);
    assert.equal(await p.page.locator("#hangup").isVisible(), false);
  }

  // Alice shares her screen (getDisplayMedia, auto-accepted by the fake media UI): Bob gets a larger tile.
  await alice.page.locator("#share-screen").click();
  await pollUntil(() => alice.page.locator("#share-screen").textContent(), (t) => t === "Stop sharing", { timeoutMs: 10000, what: "#share-screen says Stop sharing" });
  const screenTile = `#grid .tile.screen[data-user-id="${aliceId}"]`;
  await bob.page.locator(screenTile).waitFor({ timeout: 15000 });
  await pollUntil(() => tileVideo(bob.page, screenTile), (v) => v.readyState >= 2 && v.frames > 5, { timeoutMs: 20000, intervalMs: 500, what: "Bob: Alice's screen tile playing" });
  const sizes = await bob.page.evaluate((sel) => {
    const screen = document.querySelector(sel).getBoundingClientRect();
    const camera = document.querySelector("#grid .tile.camera").getBoundingClientRect();
    return { screen: screen.width, camera: camera.width };
  }, screenTile);
  assert.ok(sizes.screen > sizes.camera, `the screen tile is larger (${sizes.screen} vs ${sizes.camera})`);
  fs.mkdirSync(artifactsDir, { recursive: true });
  await bob.page.screenshot({ path: path.join(artifactsDir, "group-call-page.png"), fullPage: true });
  await alice.page.locator("#share-screen").click();
  await bob.page.locator(screenTile).waitFor({ state: "detached", timeout: 15000 });

  // End for all (Alice is the organizer): both calls end; Bob's page says the organizer ended it.
  await alice.page.locator("#end-for-all").click();
  await Promise.all([waitState(alice.page, "Disconnected", 10000), waitState(bob.page, "Disconnected", 10000)]);
  assert.match(await bob.page.locator("#end-reason").textContent(), /organizer ended the call for everyone/);
  for (const p of [alice, bob]) {
    assert.equal(await p.page.locator("#grid .tile").count(), 0, `${p.label}: the grid is cleared`);
    assert.equal(await p.page.locator("#join").isEnabled(), true);
    assert.equal(await p.page.locator("#hangup").isVisible(), true, `${p.label}: 1:1 controls are back`);
  }
});
