// Acceptance: dominant speaker in a group call of two Chromium processes, one capturing recorded speech and one
// capturing silence (`--use-file-for-fake-audio-capture`). Within 2 s of the speaker's media connecting, both
// see the speaker first in `dominantSpeakersChanged`, and `isSpeaking` follows (the speaker's is true, the silent
// one's stays false). The WAV files are made here with espeak-ng and sox (Debian packages).
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, before, test } from "node:test";

import { browserSlot, launchBrowser } from "./lib/browser.mjs";
import { RAW_AUDIO, SMALL_VIDEO, connectAgent, groupSummary, joinGroup, waitCallState } from "./lib/group.mjs";
import { demoSignIn, startServer } from "./lib/server.mjs";
import { pollUntil, sleep } from "./lib/util.mjs";

const DOMINANT_WITHIN_MS = 2000;

const SPEECH =
  "Good morning everyone, thank you for joining the weekly planning call. " +
  "Today we will review the release schedule, talk about the open issues, and agree on the next steps. " +
  "Please keep your microphones muted unless you are speaking.";

/** Runs a command; throws with its output when it fails. */
function run(cmd, args) {
  const r = spawnSync(cmd, args, { encoding: "utf8" });
  if (r.error) throw new Error(`${cmd} not runnable (${r.error.code}): install the Debian packages espeak-ng and sox`);
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(" ")} exited ${r.status}: ${r.stderr}`);
  return r.stdout;
}

/** Makes speech.wav (espeak-ng, resampled to 48 kHz mono 16-bit, normalised) and silence.wav in `dir`. */
function makeWavs(dir) {
  const raw = path.join(dir, "speech-raw.wav");
  const speech = path.join(dir, "speech.wav");
  const silence = path.join(dir, "silence.wav");
  run("espeak-ng", ["-s", "165", "-w", raw, SPEECH]);
  run("sox", [raw, "-r", "48000", "-c", "1", "-b", "16", speech, "norm", "-3"]);
  run("sox", ["-n", "-r", "48000", "-c", "1", "-b", "16", silence, "trim", "0.0", "5.0"]);
  const seconds = Number(run("sox", ["--i", "-D", speech]).trim());
  assert.ok(seconds > 5, `speech.wav is ${seconds} s long`);
  return { speech, silence };
}

let server;
let tmp;
let speaker;
let silent;
let releaseSlot = () => {};

before(async () => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), "switchboard-e2e-speech-"));
  const wavs = makeWavs(tmp);
  releaseSlot = await browserSlot();
  server = await startServer({ label: "dominant_speaker" });
  const [su, qu] = await Promise.all([demoSignIn(server.httpUrl, "Speaker"), demoSignIn(server.httpUrl, "Quiet")]);
  const [sb, qb] = await Promise.all([
    launchBrowser("speaker", { extraArgs: [`--use-file-for-fake-audio-capture=${wavs.speech}`] }),
    launchBrowser("quiet", { extraArgs: [`--use-file-for-fake-audio-capture=${wavs.silence}`] }),
  ]);
  speaker = { name: "Speaker", user: su, browser: sb, page: sb.page, id: "" };
  silent = { name: "Quiet", user: qu, browser: qb, page: qb.page, id: "" };
  await Promise.all([speaker, silent].map((p) => p.page.goto(`${server.httpUrl}/`)));
  await Promise.all([speaker, silent].map(async (p) => (p.id = await connectAgent(p.page, p.user.token, p.name))));
});

after(async () => {
  await Promise.allSettled([speaker?.browser.close(), silent?.browser.close()]);
  await server?.stop();
  releaseSlot();
  if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
});

/** In the page: records when the call's peer connection first reaches "connected" (window.connectedAt). */
function watchConnected(page) {
  return page.evaluate(() => {
    window.connectedAt = 0;
    const timer = setInterval(() => {
      if (window.call?.peerConnection?.connectionState === "connected") {
        window.connectedAt = Date.now();
        clearInterval(timer);
      }
    }, 20);
  });
}

test("the speaker is the dominant speaker for both, and isSpeaking follows", { timeout: 180000 }, async () => {
  const groupId = crypto.randomUUID();
  // The quiet one is in the call with media first; then the speaker joins.
  await joinGroup(silent.page, groupId, { audio: RAW_AUDIO, video: SMALL_VIDEO });
  await watchConnected(silent.page);
  await waitCallState(silent.page, "Connected", 10000);
  await pollUntil(() => silent.page.evaluate(() => window.connectedAt), (t) => t > 0, { timeoutMs: 15000, what: "Quiet's media connected" });

  await joinGroup(speaker.page, groupId, { audio: RAW_AUDIO, video: SMALL_VIDEO });
  await watchConnected(speaker.page);
  const mediaAt = await pollUntil(() => speaker.page.evaluate(() => window.connectedAt), (t) => t > 0, { timeoutMs: 15000, what: "Speaker's media connected" });

  // Both get dominantSpeakersChanged with the speaker first, within 2 s of the speaker's media connecting.
  for (const p of [speaker, silent]) {
    const s = await pollUntil(
      () => groupSummary(p.page),
      (s) => s.events.some((e) => e.what === "dominantSpeakers" && e.list[0] === speaker.id),
      { timeoutMs: 10000, intervalMs: 100, what: `${p.name}: dominantSpeakersChanged with Speaker first` },
    );
    const first = s.events.find((e) => e.what === "dominantSpeakers" && e.list[0] === speaker.id);
    const lists = s.events.filter((e) => e.what === "dominantSpeakers").map((e) => `${e.at - mediaAt} ms: [${e.list.map((id) => (id === speaker.id ? "Speaker" : id === silent.id ? "Quiet" : id)).join(", ")}]`);
    console.log(`${p.name}: dominant speakers ${lists.join("; ")}`);
    assert.ok(first.at - mediaAt <= DOMINANT_WITHIN_MS, `${p.name}: Speaker first ${first.at - mediaAt} ms after media connected (limit ${DOMINANT_WITHIN_MS})`);
    assert.equal(s.dominantSpeakers[0], speaker.id, `${p.name}: call.dominantSpeakers.speakersList[0]`);
  }

  // isSpeaking follows: Quiet sees Speaker speaking; Speaker never sees Quiet speaking.
  const q = await pollUntil(() => groupSummary(silent.page), (s) => s.participants.find((r) => r.id === speaker.id)?.isSpeaking === true, {
    timeoutMs: 5000,
    intervalMs: 100,
    what: "Quiet sees Speaker isSpeaking",
  });
  const speakingAt = q.events.find((e) => e.what === "isSpeaking" && e.who === speaker.id && e.value).at;
  const serverReported = await silent.page.evaluate(() => window.call._serverSpeaking);
  console.log(`Quiet sees Speaker isSpeaking ${speakingAt - mediaAt} ms after media connected (${serverReported ? "reported by the server" : "local audio-level estimate"})`);
  await sleep(3000);
  const sp = await groupSummary(speaker.page);
  assert.equal(sp.participants.find((r) => r.id === silent.id).isSpeaking, false);
  assert.deepEqual(sp.events.filter((e) => e.what === "isSpeaking" && e.who === silent.id && e.value), [], "Quiet is never reported speaking");
  const dominantNow = await Promise.all([speaker, silent].map((p) => groupSummary(p.page).then((s) => s.dominantSpeakers[0])));
  assert.deepEqual(dominantNow, [speaker.id, speaker.id], "Speaker stays the dominant speaker");

  await Promise.all([speaker, silent].map((p) => p.page.evaluate(() => window.call.hangUp())));
});
