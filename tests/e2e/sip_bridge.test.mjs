// Issue 5, acceptance 2: a phone (sipp, Debian `sip-tester`, as the carrier's UAC) calls a number routed to a browser
// user. The browser gets `incomingCall` with the caller's number, accepts; the gateway bridges G.711 <-> Opus through
// the SFU. Run 1: sipp plays g711a.pcap then RFC 4733 digit "1" (dtmf_2833_1.pcap), and hangs up with BYE. Run 2:
// digit "1" by SIP INFO, and the browser hangs up (the gateway's BYE ends sipp's scenario). In both, the browser's
// sendDtmf("5") must reach sipp as RFC 4733 event 5 (three end packets), captured on loopback with tcpdump, and the
// browser's microphone (Chromium's fake beep) must reach sipp as PCMA with energy.
//
// Run 3 (acceptance 3, a real phone): baresip calls in, the browser (its microphone a speech-band WAV) answers; hold and
// resume from baresip keep the call (nothing is sent to it while on hold), and baresip's recording of what it heard has
// speech-band energy.
//
// Needs sipp, tcpdump (root) and baresip besides Chromium; scripts/test installs them.
// Run: cd tests/e2e && node --test sip_bridge.test.mjs
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { after, before, describe, test } from "node:test";

import { browserSlot, launchBrowser } from "./lib/browser.mjs";
import { demoSignIn, freePorts, repoRoot, sipSection, startServer } from "./lib/server.mjs";
import { pollUntil, sleep } from "./lib/util.mjs";

const NUMBER = "+15550100";
const CALLER = "+15550999";
/** Payload types sipp's offer uses (tests/sip/bridge_*.xml). */
const PCMA = 8;
const TELEPHONE_EVENT = 101;

/** @type {Awaited<ReturnType<typeof startServer>>} */
let server;
let browser;
let releaseSlot = () => {};
let bob;
let sipPort;
let rtpMin;
let dataDir;

function have(bin) {
  return spawnSync("sh", ["-c", `command -v ${bin}`]).status === 0;
}

/** Starts a tcpdump of every UDP datagram the gateway sends from its RTP range. */
async function startCapture(tag) {
  const file = path.join(os.tmpdir(), `sb-bridge-${process.pid}-${tag}.pcap`);
  const child = spawn("tcpdump", ["-i", "lo", "-n", "-U", "-w", file, `udp and src portrange ${rtpMin}-${rtpMin + 99}`], {
    stdio: ["ignore", "ignore", "pipe"],
  });
  let err = "";
  child.stderr.on("data", (d) => (err += d));
  // tcpdump says "listening on lo" once capturing.
  await pollUntil(async () => err, (e) => e.includes("listening on"), { timeoutMs: 10000, what: "tcpdump to start" });
  return {
    async stop() {
      await sleep(500);
      child.kill("SIGINT");
      await new Promise((resolve) => child.once("exit", resolve));
      const data = fs.readFileSync(file);
      fs.rmSync(file, { force: true });
      return parseRtp(data);
    },
    kill() {
      child.kill("SIGKILL");
      fs.rmSync(file, { force: true });
    },
  };
}

/** The RTP packets of a pcap file (Ethernet, Linux cooked v1/v2 or raw IPv4 link types; IPv4/UDP only). */
function parseRtp(buf) {
  const le = buf.readUInt32LE(0) === 0xa1b2c3d4 || buf.readUInt32LE(0) === 0xa1b23c4d;
  const u32 = (o) => (le ? buf.readUInt32LE(o) : buf.readUInt32BE(o));
  const linkType = u32(20);
  const linkLen = { 1: 14, 113: 16, 276: 20, 101: 0, 228: 0 }[linkType];
  assert.notEqual(linkLen, undefined, `pcap link type ${linkType} not handled`);
  const out = [];
  for (let o = 24; o + 16 <= buf.length; ) {
    const caplen = u32(o + 8);
    const pkt = buf.subarray(o + 16, o + 16 + caplen);
    o += 16 + caplen;
    const ip = pkt.subarray(linkLen);
    if (ip.length < 28 || ip[0] >> 4 !== 4 || ip[9] !== 17) continue;
    const udp = ip.subarray((ip[0] & 0x0f) * 4);
    const srcPort = udp.readUInt16BE(0);
    const rtp = udp.subarray(8);
    if (rtp.length < 12 || rtp[0] >> 6 !== 2 || srcPort % 2 !== 0) continue;
    const cc = rtp[0] & 0x0f;
    let start = 12 + 4 * cc;
    if (rtp[0] & 0x10) start += 4 + 4 * rtp.readUInt16BE(start + 2);
    out.push({ pt: rtp[1] & 0x7f, marker: Boolean(rtp[1] & 0x80), timestamp: rtp.readUInt32BE(4), payload: rtp.subarray(start) });
  }
  return out;
}

/** G.711 A-law byte -> linear sample (ITU-T G.711). */
function alawDecode(a) {
  a ^= 0x55;
  let t = (a & 0x0f) << 4;
  const seg = (a & 0x70) >> 4;
  if (seg === 0) t += 8;
  else if (seg === 1) t += 0x108;
  else t = (t + 0x108) << (seg - 1);
  return a & 0x80 ? t : -t;
}

/** What the capture says about the gateway -> phone direction. */
function summarize(packets) {
  const audio = packets.filter((p) => p.pt === PCMA);
  let energy = 0;
  for (const p of audio) for (const b of p.payload) energy += Math.abs(alawDecode(b));
  const events = packets
    .filter((p) => p.pt === TELEPHONE_EVENT && p.payload.length >= 4)
    .map((p) => ({ event: p.payload[0], end: Boolean(p.payload[1] & 0x80), timestamp: p.timestamp, marker: p.marker }));
  return { audioPackets: audio.length, meanAbs: audio.length ? energy / (audio.length * 160) : 0, events };
}

/** Runs sipp with a scenario of tests/sip against the gateway; resolves with its exit code and stderr. */
function runSipp(scenario, sippPort) {
  const cwd = fs.mkdtempSync(path.join(os.tmpdir(), "sb-bridge-sipp-"));
  const child = spawn(
    "sipp",
    [
      `127.0.0.1:${sipPort}`,
      "-sf", path.join(repoRoot, "tests", "sip", scenario),
      "-s", NUMBER,
      "-i", "127.0.0.1",
      "-p", String(sippPort),
      "-mp", String(sippPort + 2),
      "-m", "1", "-l", "1", "-nd",
      "-timeout", "90s", "-timeout_error",
      "-trace_err",
    ],
    { cwd, stdio: ["ignore", "ignore", "pipe"] },
  );
  let stderr = "";
  child.stderr.on("data", (d) => (stderr += d));
  const done = new Promise((resolve) =>
    child.once("exit", (code) => {
      const errLog = fs.readdirSync(cwd).filter((f) => f.endsWith("_errors.log"));
      for (const f of errLog) stderr += fs.readFileSync(path.join(cwd, f), "utf8");
      fs.rmSync(cwd, { recursive: true, force: true });
      resolve({ code, stderr });
    }),
  );
  return { done, kill: () => child.kill("SIGKILL") };
}

/** Connects the SDK in the page as window.agent; incoming calls are kept in window.incoming. */
function connectAgent(page, token) {
  return page.evaluate(async (token) => {
    const { CallClient } = await import("/sdk/calling.js");
    const agent = await new CallClient().createCallAgent(token, { displayName: "Bob" });
    window.agent = agent;
    window.incoming = [];
    agent.on("incomingCall", ({ incomingCall }) => window.incoming.push(incomingCall));
    return agent.communicationUserId;
  }, token);
}

/** Waits for the incoming call, checks the caller, accepts with audio; records dtmfReceived tones in call.tones. */
async function acceptPhoneCall(page) {
  await page.waitForFunction(() => window.incoming.length > 0, null, { timeout: 20000, polling: 100 });
  const caller = await page.evaluate(() => JSON.parse(JSON.stringify(window.incoming[0].callerInfo.identifier)));
  assert.deepEqual(caller, { kind: "phoneNumber", phoneNumber: CALLER, rawId: `4:${CALLER}` });
  await page.evaluate(async () => {
    const call = await window.incoming.shift().accept({ audio: true, video: false });
    window.call = call;
    call.tones = [];
    call.states = [call.state];
    call.on("stateChanged", () => call.states.push(call.state));
    call.on("dtmfReceived", ({ tone }) => call.tones.push(tone));
  });
}

/** The call's inbound audio counters. */
function audioIn(page) {
  return page.evaluate(async () => {
    const report = await window.call.getStats();
    let out = { packetsReceived: 0, totalAudioEnergy: 0 };
    report.forEach((s) => {
      if (s.type === "inbound-rtp" && s.kind === "audio") {
        out = { packetsReceived: s.packetsReceived ?? 0, totalAudioEnergy: s.totalAudioEnergy ?? 0 };
      }
    });
    return out;
  });
}

const tools = have("sipp") && have("tcpdump") && have("baresip");

/** A 16-bit mono PCM WAV. */
function wav(samples, rate) {
  const b = Buffer.alloc(44 + samples.length * 2);
  b.write("RIFF", 0);
  b.writeUInt32LE(36 + samples.length * 2, 4);
  b.write("WAVEfmt ", 8);
  b.writeUInt32LE(16, 16);
  b.writeUInt16LE(1, 20);
  b.writeUInt16LE(1, 22);
  b.writeUInt32LE(rate, 24);
  b.writeUInt32LE(rate * 2, 28);
  b.writeUInt16LE(2, 32);
  b.writeUInt16LE(16, 34);
  b.write("data", 36);
  b.writeUInt32LE(samples.length * 2, 40);
  samples.forEach((v, i) => b.writeInt16LE(v, 44 + i * 2));
  return b;
}

/** Samples of a 16-bit PCM WAV (its `data` chunk) and its rate. */
function readWav(buf) {
  const rate = buf.readUInt32LE(24);
  for (let o = 12; o + 8 <= buf.length; ) {
    const len = buf.readUInt32LE(o + 4);
    if (buf.toString("latin1", o, o + 4) === "data") {
      const end = Math.min(buf.length, o + 8 + len);
      const out = [];
      for (let i = o + 8; i + 1 < end; i += 2) out.push(buf.readInt16LE(i) / 32768);
      return { samples: out, rate };
    }
    o += 8 + len + (len & 1);
  }
  return { samples: [], rate };
}

/** 3 s of a speech-band signal at 48 kHz: 300-2500 Hz partials with a 4 Hz syllable-like envelope. */
function speechLike() {
  const rate = 48000;
  const out = [];
  for (let i = 0; i < rate * 3; i++) {
    const t = i / rate;
    const env = 0.5 + 0.5 * Math.sin(2 * Math.PI * 4 * t);
    const v = [300, 700, 1200, 2500].reduce((a, f) => a + Math.sin(2 * Math.PI * f * t), 0) / 4;
    out.push(Math.round(0.5 * env * v * 32767));
  }
  return wav(out, rate);
}

/** Power of `samples` at `freq` (Goertzel). */
function goertzel(samples, rate, freq) {
  const w = (2 * Math.PI * freq) / rate;
  const c = 2 * Math.cos(w);
  let s1 = 0;
  let s2 = 0;
  for (const x of samples) {
    const s0 = x + c * s1 - s2;
    s2 = s1;
    s1 = s0;
  }
  return s1 * s1 + s2 * s2 - c * s1 * s2;
}

describe("SIP gateway: a phone call bridged to a browser", { skip: !tools && "sipp or tcpdump missing (scripts/test installs them)" }, () => {
  before(async () => {
    releaseSlot = await browserSlot();
    // The number's route names the identity, so it must exist before the gateway starts: a first run makes it.
    dataDir = fs.mkdtempSync(path.join(os.tmpdir(), "switchboard-e2e-sip-bridge-"));
    const first = await startServer({ label: "sip_bridge_setup", dataDir });
    const bobFirst = await demoSignIn(first.httpUrl, "bob");
    await first.stop();
    [sipPort] = await freePorts(1);
    rtpMin = 31000 + (process.pid % 40) * 100;
    const config = path.join(dataDir, "switchboard.toml");
    fs.writeFileSync(
      config,
      `${sipSection(sipPort, rtpMin)}[[sip.trunks]]
name = "local"
address = "127.0.0.1:5070"
allow = ["127.0.0.1"]
keepalive_secs = 0
[[sip.numbers]]
number = "${NUMBER}"
user = "${bobFirst.communicationUserId}"
`,
    );
    server = await startServer({ label: "sip_bridge", dataDir, extraArgs: ["--config", config] });
    bob = await demoSignIn(server.httpUrl, "bob");
    assert.equal(bob.communicationUserId, bobFirst.communicationUserId);
    // Bob's microphone is a speech-band signal (looped by Chromium), so what a phone hears can be checked.
    fs.writeFileSync(path.join(dataDir, "speech.wav"), speechLike());
    browser = await launchBrowser("bob", { extraArgs: [`--use-file-for-fake-audio-capture=${path.join(dataDir, "speech.wav")}`] });
    await browser.page.goto(`${server.httpUrl}/`);
    await connectAgent(browser.page, bob.token);
  });

  after(async () => {
    await browser?.close();
    await server?.stop();
    if (dataDir) fs.rmSync(dataDir, { recursive: true, force: true });
    releaseSlot();
  });

  test("RFC 4733: caller's number shown, phone audio heard, digit 1 received once, sendDtmf(5) reaches the phone, phone's BYE ends the call", async () => {
    const page = browser.page;
    const capture = await startCapture("rfc4733");
    const sipp = runSipp("bridge_rfc4733.xml", 25000 + (process.pid % 500) * 8);
    try {
      await acceptPhoneCall(page);
      const heard = await pollUntil(
        () => audioIn(page),
        (s) => s.packetsReceived > 100 && s.totalAudioEnergy > 0,
        { timeoutMs: 15000, what: "more than 100 audio packets with energy from the phone" },
      );
      console.log(`browser heard the phone: ${JSON.stringify(heard)}`);
      await page.waitForFunction(() => window.call.tones.length > 0, null, { timeout: 15000, polling: 100 });
      // A key press sends several RFC 4733 packets (and three end packets): it must count once.
      await sleep(1500);
      assert.deepEqual(await page.evaluate(() => window.call.tones), ["1"]);
      await page.evaluate(() => window.call.sendDtmf("5"));
      // sipp hangs up after its 8 s pause: the call ends normally in the browser.
      await page.waitForFunction(() => window.call.state === "Disconnected", null, { timeout: 20000, polling: 100 });
      assert.equal(await page.evaluate(() => window.call.callEndReason.code), 0);
      const { code, stderr } = await sipp.done;
      assert.equal(code, 0, `sipp scenario failed:\n${stderr}`);
    } catch (e) {
      capture.kill();
      throw e;
    } finally {
      sipp.kill();
    }
    const wire = summarize(await capture.stop());
    console.log(`gateway -> phone: ${wire.audioPackets} PCMA packets (mean |sample| ${wire.meanAbs.toFixed(0)}), events ${JSON.stringify(wire.events)}`);
    assert.ok(wire.audioPackets > 50, `the browser's audio reached the phone: ${wire.audioPackets} PCMA packets`);
    assert.ok(wire.meanAbs > 0, "the browser's audio has energy at the phone");
    const fives = wire.events.filter((e) => e.event === 5);
    assert.ok(fives.length >= 3, `RFC 4733 event 5 on the wire: ${JSON.stringify(wire.events)}`);
    assert.equal(fives.filter((e) => e.end).length, 3, "three end packets");
    assert.equal(new Set(fives.map((e) => e.timestamp)).size, 1, "one timestamp for the whole event");
    assert.ok(fives[0].marker, "the event's first packet has the marker bit");
    assert.ok(wire.events.every((e) => e.event === 5), "no other event was sent");
  });

  test("baresip calls in, the browser answers: hold/resume from baresip keeps the call, and its recording has speech-band energy from the browser's audio file", async () => {
    const page = browser.page;
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "sb-bridge-baresip-"));
    const out = path.join(dir, "out");
    fs.mkdirSync(out);
    // baresip sends silence (no audio source file) and records what it hears (sndfile: *-dec.wav).
    fs.writeFileSync(path.join(dir, "silence.wav"), wav(new Array(8000 * 12).fill(0), 8000));
    const port = 27000 + (process.pid % 500) * 4;
    fs.writeFileSync(
      path.join(dir, "config"),
      [
        "poll_method\tepoll",
        `sip_listen\t127.0.0.1:${port}`,
        "sip_transports\tudp",
        "call_local_timeout\t120",
        "audio_player\taubridge,nil",
        `audio_source\taufile,${path.join(dir, "silence.wav")}`,
        "audio_alert\taubridge,nil",
        "ausrc_srate\t8000",
        "ausrc_channels\t1",
        `rtp_ports\t${port + 10}-${port + 30}`,
        "net_interface\t127.0.0.1",
        "module_path\t/usr/lib/baresip/modules",
        "module\tg711.so",
        "module\taufile.so",
        "module\taubridge.so",
        "module\tsndfile.so",
        "module_tmp\taccount.so",
        "module_app\tmenu.so",
        "module_app\tctrl_tcp.so",
        `ctrl_tcp_listen\t127.0.0.1:${port + 2}`,
        `snd_path\t${out}`,
        "",
      ].join("\n"),
    );
    fs.writeFileSync(path.join(dir, "accounts"), `<sip:${CALLER}@127.0.0.1:${port};transport=udp>;regint=0;audio_codecs=PCMU,PCMA\n`);
    fs.writeFileSync(path.join(dir, "contacts"), "");
    const child = spawn("baresip", ["-f", dir, "-e", `/dial sip:${NUMBER}@127.0.0.1:${sipPort}`, "-t", "14"], {
      stdio: ["ignore", "pipe", "ignore"],
    });
    let log = "";
    child.stdout.on("data", (d) => (log += d));
    const exited = new Promise((resolve) => child.once("exit", resolve));
    /** Sends a command to baresip's ctrl_tcp module (netstring-framed JSON). */
    const ctrl = (command) =>
      new Promise((resolve, reject) => {
        const body = JSON.stringify({ command, params: "", token: "t" });
        // baresip keeps the control connection open: give it 200 ms to act, then close it.
        const sock = net.connect(port + 2, "127.0.0.1", () =>
          sock.write(`${body.length}:${body},`, () =>
            setTimeout(() => {
              sock.destroy();
              resolve();
            }, 200),
          ),
        );
        sock.on("error", reject);
      });
    /** RTP packets the gateway sent so far (all calls). */
    const sent = async () => {
      const text = await (await fetch(`${server.httpUrl}/metrics`)).text();
      const line = text.split("\n").find((l) => l.startsWith("switchboard_sip_rtp_packets_total") && l.includes('direction="sent"'));
      return line ? Number(line.split(" ").pop()) : 0;
    };
    try {
      await acceptPhoneCall(page);
      await sleep(2500);
      await ctrl("hold");
      await sleep(500);
      const holdStart = await sent();
      await sleep(1500);
      const onHold = (await sent()) - holdStart;
      await ctrl("resume");
      await sleep(300);
      const resumed = await sent();
      await sleep(1500);
      const afterResume = (await sent()) - resumed;
      console.log(`baresip hold/resume: ${onHold} RTP packets to it in 1.5 s on hold, ${afterResume} in 1.5 s after resume`);
      assert.equal(onHold, 0, "nothing is sent to a phone that put the call on hold (answered recvonly)");
      assert.ok(afterResume >= 50, `the browser's audio flows again after resume: ${afterResume}`);
      assert.equal(await page.evaluate(() => window.call.state), "Connected", "the browser's call went on");
      await Promise.race([exited, sleep(30000)]);
      assert.equal(log.match(/Call established/g)?.length, 1, `one call, kept through hold/resume:\n${log}`);
      // baresip's sndfile recording covers the call up to the hold here (it does not record again after the resume;
      // the RTP count above shows the audio flowing again): take every recording, analyse the longest.
      const recs = fs.readdirSync(out).filter((f) => f.endsWith("-dec.wav"));
      assert.ok(recs.length > 0, `baresip recorded what it heard: ${fs.readdirSync(out)}\n${log}`);
      const heard = recs.map((f) => readWav(fs.readFileSync(path.join(out, f))));
      const rate = heard[0].rate;
      const total = heard.reduce((a, h) => a + h.samples.length, 0);
      const { samples } = heard.reduce((a, h) => (h.samples.length > a.samples.length ? h : a));
      // The last second of the longest recording: loud enough, and in the speech band.
      const tail = samples.slice(-rate);
      const rms = Math.sqrt(tail.reduce((a, x) => a + x * x, 0) / Math.max(1, tail.length));
      const band = [300, 700, 1200, 2500].reduce((a, f) => a + goertzel(tail, rate, f), 0);
      const off = [150, 3700].reduce((a, f) => a + goertzel(tail, rate, f), 0);
      console.log(`baresip heard ${total} samples at ${rate} Hz in ${recs.length} recording(s); last second: RMS ${rms.toFixed(4)}, speech-band/off-band power ${(band / Math.max(off, 1e-9)).toFixed(1)}`);
      assert.ok(total >= 1.5 * rate, `at least 1.5 s heard (the 2.5 s before the hold), got ${total} samples`);
      assert.ok(tail.length >= rate, `a recording of at least 1 s, got ${tail.length} samples`);
      assert.ok(rms > 0.01, `RMS ${rms} of what baresip heard`);
      assert.ok(band > 20 * off, `speech-band partials dominate: ${band} vs ${off}`);
      await page.waitForFunction(() => window.call.state === "Disconnected", null, { timeout: 20000, polling: 100 });
    } finally {
      child.kill("SIGKILL");
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  test("SIP INFO: digit 1 received once, sendDtmf(5) reaches the phone, the browser's hang-up sends BYE", async () => {
    const page = browser.page;
    const capture = await startCapture("info");
    const sipp = runSipp("bridge_info.xml", 25004 + (process.pid % 500) * 8);
    try {
      await acceptPhoneCall(page);
      await page.waitForFunction(() => window.call.tones.length > 0, null, { timeout: 15000, polling: 100 });
      await sleep(1000);
      assert.deepEqual(await page.evaluate(() => window.call.tones), ["1"]);
      await page.evaluate(() => window.call.sendDtmf("5"));
      await sleep(1000);
      await page.evaluate(() => window.call.hangUp());
      const { code, stderr } = await sipp.done;
      assert.equal(code, 0, `sipp scenario failed (no BYE from the gateway?):\n${stderr}`);
    } catch (e) {
      capture.kill();
      throw e;
    } finally {
      sipp.kill();
    }
    const wire = summarize(await capture.stop());
    console.log(`gateway -> phone: ${wire.audioPackets} PCMA packets, events ${JSON.stringify(wire.events)}`);
    const fives = wire.events.filter((e) => e.event === 5);
    assert.equal(fives.filter((e) => e.end).length, 3, `RFC 4733 event 5 with three end packets: ${JSON.stringify(wire.events)}`);
  });
});
