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
