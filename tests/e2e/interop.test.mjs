// Acceptance: Chromium, str0m and GStreamer webrtcbin publishers all interoperate in one group call.
//
// Three independent WebRTC stacks join one group call through the server's SFU:
// - Chromium (libwebrtc) through the web SDK, fake camera and microphone;
// - str0m (Rust, full ICE client): examples/str0m_peer.rs, built by `cargo build --examples`;
// - GStreamer webrtcbin (Debian gstreamer1.0-plugins-bad 1.22, libnice, OpenSSL DTLS): tests/interop/gst_peer.py,
//   run with Debian's /usr/bin/python3 (python3-gi, python3-websockets).
// Each publishes Opus audio and VP8 video and receives the two others.
//
// Needs (apt): gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad
// gstreamer1.0-nice gir1.2-gstreamer-1.0 gir1.2-gst-plugins-base-1.0 gir1.2-gst-plugins-bad-1.0 python3-gi
// python3-websockets openssl. Skipped (with the reason) only when `gst-inspect-1.0 webrtcbin` fails.
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { after, before, test } from "node:test";

import { browserSlot, launchBrowser } from "./lib/browser.mjs";
import { RAW_AUDIO, SMALL_VIDEO, connectAgent, joinGroup, statsByParticipant, waitCallState } from "./lib/group.mjs";
import { artifactsDir, demoSignIn, repoRoot, startServer } from "./lib/server.mjs";
import { pollUntil } from "./lib/util.mjs";

/**
 * How long the str0m and GStreamer peers stay in the call (seconds): past the 15 s after which str0m's ICE-lite
 * agent gives up a pair without binding requests, libnice's 25 s keepalive period and the SFU's 30 s idle timeout.
 */
const PEER_SECONDS = 40;
/** GStreamer's videotestsrc frame rate. */
const GST_FPS = 15;
const MEDIA_TIMEOUT_MS = 20000;

const PYTHON = process.env.SWITCHBOARD_E2E_SYSTEM_PYTHON || "/usr/bin/python3";
const GST_PEER = path.join(repoRoot, "tests", "interop", "gst_peer.py");
const STR0M_PEER = path.join(path.resolve(repoRoot, process.env.CARGO_TARGET_DIR || "target"), "debug", "examples", "str0m_peer");

function webrtcbinMissing() {
  const r = spawnSync("gst-inspect-1.0", ["webrtcbin"], { stdio: "ignore" });
  if (r.error) return `gst-inspect-1.0 not runnable (${r.error.code}): install gstreamer1.0-tools gstreamer1.0-plugins-bad gstreamer1.0-nice`;
  if (r.status !== 0) return "gst-inspect-1.0 webrtcbin failed: install gstreamer1.0-plugins-bad gstreamer1.0-nice";
  return false;
}
const skipReason = webrtcbinMissing();

/**
 * Runs a peer process; resolves with its parsed JSON summary (the last stdout line) when it exits 0.
 * stderr goes to target/e2e/interop-<label>.log (and to the test output with SWITCHBOARD_E2E_VERBOSE=1).
 */
function runPeer(label, cmd, args) {
  fs.mkdirSync(artifactsDir, { recursive: true });
  const logPath = path.join(artifactsDir, `interop-${label}.log`);
  const log = fs.createWriteStream(logPath);
  log.write(`$ ${cmd} ${args.join(" ")}\n`);
  const child = spawn(cmd, args, { stdio: ["ignore", "pipe", "pipe"] });
  let stdout = "";
  let tail = "";
  child.stdout.on("data", (c) => (stdout += c));
  child.stderr.on("data", (c) => {
    log.write(c);
    tail = (tail + c).slice(-3000);
    if (process.env.SWITCHBOARD_E2E_VERBOSE === "1") process.stderr.write(`[${label}] ${c}`);
  });
  const done = new Promise((resolve, reject) => {
    child.once("error", (e) => reject(new Error(`${label}: could not start ${cmd}: ${e.message}`)));
    child.once("exit", (code, signal) => {
      log.end();
      const line = stdout.trim().split("\n").pop() || "";
      if (code !== 0) return reject(new Error(`${label} exited with ${code ?? signal}; log ${logPath}:\n${tail}`));
      try {
        resolve(JSON.parse(line));
      } catch {
        reject(new Error(`${label}: last stdout line is not JSON: ${JSON.stringify(line)}; log ${logPath}:\n${tail}`));
      }
    });
  });
  return { child, done, logPath };
}

/** @type {Awaited<ReturnType<typeof startServer>>} */
let server;
let browser;
let releaseSlot = () => {};
const children = [];

before(async () => {
  if (skipReason) return;
  if (!fs.existsSync(STR0M_PEER)) {
    throw new Error(`str0m peer not found at ${STR0M_PEER}: build it with \`cargo build --examples\` (same CARGO_TARGET_DIR as the test)`);
  }
  if (!fs.existsSync(PYTHON)) throw new Error(`${PYTHON} not found: the GStreamer peer needs Debian's python3 with python3-gi`);
  releaseSlot = await browserSlot();
  server = await startServer({ label: "interop" });
  browser = await launchBrowser("chromium");
  await browser.page.goto(`${server.httpUrl}/`);
});

after(async () => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill("SIGKILL");
  await browser?.close();
  await server?.stop();
  releaseSlot();
});

test("Chromium, str0m and GStreamer webrtcbin publishers interoperate in one group call", { skip: skipReason, timeout: 180000 }, async () => {
  const groupId = crypto.randomUUID();
  // A demo name maps to one identity: signing the names in here tells the test the ids the peers will have.
  const chromium = await demoSignIn(server.httpUrl, "Chromium");
  const str0m = await demoSignIn(server.httpUrl, "Str0m");
  const gst = await demoSignIn(server.httpUrl, "Gstreamer");

  await connectAgent(browser.page, chromium.token, "Chromium");
  await joinGroup(browser.page, groupId, { audio: RAW_AUDIO, video: SMALL_VIDEO });
  await waitCallState(browser.page, "Connected", 10000);

  const common = ["--server", server.httpUrl, "--group-id", groupId, "--duration", String(PEER_SECONDS)];
  const str0mRun = runPeer("str0m", STR0M_PEER, [...common, "--name", "Str0m"]);
  const gstRun = runPeer("gstreamer", PYTHON, [GST_PEER, ...common, "--name", "Gstreamer"]);
  children.push(str0mRun.child, gstRun.child);
  // Surface an early crash of a peer instead of waiting for the media timeout.
  const peersDone = Promise.all([str0mRun.done, gstRun.done]);
  peersDone.catch(() => {});
  const startedAt = Date.now();

  // Chromium: decodes the GStreamer camera, receives audio packets from both others.
  const enough = (s) =>
    s[gst.communicationUserId]?.camera?.framesDecoded > 30 &&
    s[gst.communicationUserId]?.audio?.packetsReceived > 50 &&
    s[str0m.communicationUserId]?.audio?.packetsReceived > 50;
  const chromeStats = await Promise.race([
    pollUntil(() => statsByParticipant(browser.page), enough, {
      timeoutMs: MEDIA_TIMEOUT_MS,
      intervalMs: 500,
      what: "Chromium: > 30 decoded GStreamer camera frames and > 50 audio packets from GStreamer and from str0m",
    }),
    peersDone.then(() => {
      throw new Error("the peers exited before Chromium had their media");
    }),
  ]);
  console.log(`Chromium media from both peers ${Date.now() - startedAt} ms after they started`);
  for (const [who, id] of [["GStreamer", gst.communicationUserId], ["str0m", str0m.communicationUserId]]) {
    const s = chromeStats[id];
    console.log(
      `Chromium <- ${who}: audio ${s.audio?.packetsReceived} packets, camera ${s.camera?.packetsReceived} packets ` +
        `${s.camera?.framesDecoded ?? 0} frames decoded ${s.camera?.frameWidth ?? "-"}x${s.camera?.frameHeight ?? "-"}`,
    );
  }

  const [str0mOut, gstOut] = await peersDone;
  console.log(`str0m peer: ${JSON.stringify(str0mOut)}`);
  console.log(`GStreamer peer: ${JSON.stringify(gstOut)}`);
  assert.equal(str0mOut.id, str0m.communicationUserId, "the str0m peer has the identity of the name Str0m");
  assert.equal(gstOut.id, gst.communicationUserId, "the GStreamer peer has the identity of the name Gstreamer");

  // GStreamer decoded > 30 frames of Chromium's camera.
  const gstFromChrome = gstOut.received[chromium.communicationUserId];
  assert.ok(gstFromChrome?.video > 30, `GStreamer decoded ${gstFromChrome?.video} video frames from Chromium (want > 30)`);
  assert.ok(gstFromChrome?.audio > 0, `GStreamer decoded ${gstFromChrome?.audio} audio buffers from Chromium`);

  // str0m received audio and video frames from both others.
  for (const [who, id] of [["Chromium", chromium.communicationUserId], ["GStreamer", gst.communicationUserId]]) {
    const r = str0mOut.received[id];
    assert.ok(r?.audio > 0 && r?.video > 0, `str0m received ${JSON.stringify(r)} frames from ${who} (want audio and video)`);
  }
  // Debian 12's libnice 0.1.21 sends no consent checks once connected (only a binding indication every 25 s), and
  // the server's ICE-lite str0m gives up a pair that sent no binding request for 15 s; the SFU keeps such a peer
  // while its datagrams arrive. The GStreamer video must reach str0m for (nearly) the whole run, not ~15 s of it.
  const gstVideoAtStr0m = str0mOut.received[gst.communicationUserId]?.video ?? 0;
  const expected = GST_FPS * PEER_SECONDS;
  console.log(
    `str0m got ${gstVideoAtStr0m} GStreamer video frames in ${PEER_SECONDS} s ` +
      `(~${(gstVideoAtStr0m / GST_FPS).toFixed(1)} s of ${GST_FPS} fps video)`,
  );
  assert.ok(
    gstVideoAtStr0m > 0.8 * expected,
    `str0m got ${gstVideoAtStr0m} GStreamer video frames, want > 80 % of ${expected} (${GST_FPS} fps for ${PEER_SECONDS} s)`,
  );
  assert.deepEqual(str0mOut.errors, [], "str0m peer: no signaling errors");
  assert.deepEqual(gstOut.errors, [], "GStreamer peer: no signaling or pipeline errors");
});
