// Issue 5, acceptance 1: a Chromium participant calls +15550100 through the web SDK
// (`agent.startCall([{ phoneNumber }])`); a sipp UAS acting as the carrier (tests/sip/carrier_407_uas.xml) challenges
// the INVITE with 407, checks the digest answer, rings, answers, and plays g711a.pcap. The browser goes Connecting ->
// Ringing -> Connected, receives more than 100 audio packets with energy, hangs up, and the gateway's BYE ends sipp's
// scenario (exit code 0).
//
// The digest answer is also recomputed here from the INVITE captured on loopback (tcpdump): sipp's verifyauth reads
// only `Authorization`, not `Proxy-Authorization`.
//
// Needs sipp and tcpdump (root) besides Chromium; scripts/test installs them.
// Run: cd tests/e2e && node --test sip_outbound.test.mjs
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import crypto from "node:crypto";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, before, describe, test } from "node:test";

import { browserSlot, launchBrowser } from "./lib/browser.mjs";
import { demoSignIn, freePorts, repoRoot, sipSection, startServer } from "./lib/server.mjs";
import { pollUntil } from "./lib/util.mjs";

/** @type {Awaited<ReturnType<typeof startServer>>} */
let server;
let browser;
let releaseSlot = () => {};
let carrierPort;
let configDir;

const tools = ["sipp", "tcpdump"].every((b) => spawnSync("sh", ["-c", `command -v ${b}`]).status === 0);

/** Captures on loopback the UDP datagrams sent to the carrier's SIP port; stop() returns their payloads as text. */
async function captureSip() {
  const file = path.join(os.tmpdir(), `sb-outbound-${process.pid}.pcap`);
  const child = spawn("tcpdump", ["-i", "lo", "-n", "-U", "-w", file, `udp and dst port ${carrierPort}`], { stdio: ["ignore", "ignore", "pipe"] });
  let err = "";
  child.stderr.on("data", (d) => (err += d));
  await pollUntil(async () => err, (e) => e.includes("listening on"), { timeoutMs: 10000, what: "tcpdump to start" });
  return {
    async stop() {
      child.kill("SIGINT");
      await new Promise((resolve) => child.once("exit", resolve));
      const buf = fs.readFileSync(file);
      fs.rmSync(file, { force: true });
      const le = buf.readUInt32LE(0) === 0xa1b2c3d4;
      const u32 = (o) => (le ? buf.readUInt32LE(o) : buf.readUInt32BE(o));
      const linkLen = { 1: 14, 113: 16, 276: 20 }[u32(20)] ?? 14;
      const out = [];
      for (let o = 24; o + 16 <= buf.length; ) {
        const caplen = u32(o + 8);
        const ip = buf.subarray(o + 16 + linkLen, o + 16 + caplen);
        o += 16 + caplen;
        if (ip.length < 28 || ip[0] >> 4 !== 4 || ip[9] !== 17) continue;
        out.push(ip.subarray((ip[0] & 0x0f) * 4 + 8).toString("latin1"));
      }
      return out;
    },
    kill: () => child.kill("SIGKILL"),
  };
}

/** Checks a Proxy-Authorization value against RFC 2617 (MD5, qop=auth) for INVITE with the carrier's password. */
function digestValid(header, password) {
  const p = {};
  for (const m of header.matchAll(/(\w+)=(?:"([^"]*)"|([^,\s]+))/g)) p[m[1]] = m[2] ?? m[3];
  const md5 = (x) => crypto.createHash("md5").update(x).digest("hex");
  const ha1 = md5(`${p.username}:${p.realm}:${password}`);
  const ha2 = md5(`INVITE:${p.uri}`);
  const expected = p.qop ? md5(`${ha1}:${p.nonce}:${p.nc}:${p.cnonce}:${p.qop}:${ha2}`) : md5(`${ha1}:${p.nonce}:${ha2}`);
  return { ok: expected === p.response, params: p };
}

/** Starts sipp as the carrier (UAS); resolves with its exit code and error log when the call is over. */
function startCarrier() {
  const cwd = fs.mkdtempSync(path.join(os.tmpdir(), "sb-outbound-sipp-"));
  const child = spawn(
    "sipp",
    [
      "-sf", path.join(repoRoot, "tests", "sip", "carrier_407_uas.xml"),
      "-i", "127.0.0.1",
      "-p", String(carrierPort),
      "-mp", String(carrierPort + 2),
      "-m", "1", "-nd",
      "-timeout", "90s", "-timeout_error",
      "-trace_err",
    ],
    { cwd, stdio: ["ignore", "ignore", "pipe"] },
  );
  let stderr = "";
  child.stderr.on("data", (d) => (stderr += d));
  const done = new Promise((resolve) =>
    child.once("exit", (code) => {
      for (const f of fs.readdirSync(cwd).filter((f) => f.endsWith("_errors.log"))) stderr += fs.readFileSync(path.join(cwd, f), "utf8");
      fs.rmSync(cwd, { recursive: true, force: true });
      resolve({ code, stderr });
    }),
  );
  return { done, kill: () => child.kill("SIGKILL") };
}

describe("SIP gateway: a browser calls a phone number", { skip: !tools && "sipp missing (scripts/test installs it)" }, () => {
  before(async () => {
    releaseSlot = await browserSlot();
    const [sipPort] = await freePorts(1);
    carrierPort = 26000 + (process.pid % 500) * 4;
    const rtpMin = 35000 + (process.pid % 40) * 100;
    configDir = fs.mkdtempSync(path.join(os.tmpdir(), "switchboard-e2e-sip-outbound-"));
    const config = path.join(configDir, "switchboard.toml");
    fs.writeFileSync(
      config,
      `${sipSection(sipPort, rtpMin)}[[sip.trunks]]
name = "carrier"
address = "127.0.0.1:${carrierPort}"
allow = ["127.0.0.1"]
username = "carrier"
password = "s3cret"
caller_id = "+15550999"
codecs = ["PCMA", "PCMU"]
prefixes = ["+1"]
keepalive_secs = 0
`,
    );
    server = await startServer({ label: "sip_outbound", extraArgs: ["--config", config] });
    const alice = await demoSignIn(server.httpUrl, "alice");
    browser = await launchBrowser("alice");
    await browser.page.goto(`${server.httpUrl}/`);
    await browser.page.evaluate(async (token) => {
      const { CallClient } = await import("/sdk/calling.js");
      window.agent = await new CallClient().createCallAgent(token, { displayName: "Alice" });
    }, alice.token);
  });

  after(async () => {
    await browser?.close();
    await server?.stop();
    if (configDir) fs.rmSync(configDir, { recursive: true, force: true });
    releaseSlot();
  });

  test("407 digest answered, Ringing then Connected, the carrier's audio heard, the browser's hang-up sends BYE", async () => {
    const page = browser.page;
    const capture = await captureSip();
    const carrier = startCarrier();
    try {
      await page.evaluate(() => {
        const call = window.agent.startCall([{ phoneNumber: "+15550100" }], { audio: true, video: false });
        window.call = call;
        call.states = [call.state];
        call.on("stateChanged", () => call.states.push(call.state));
      });
      await page.waitForFunction(() => window.call.state === "Connected", null, { timeout: 20000, polling: 100 });
      const remote = await page.evaluate(() => JSON.parse(JSON.stringify(window.call.remoteParticipants.map((p) => p.identifier))));
      assert.deepEqual(remote, [{ kind: "phoneNumber", phoneNumber: "+15550100", rawId: "4:+15550100" }]);
      const heard = await pollUntil(
        () =>
          page.evaluate(async () => {
            const report = await window.call.getStats();
            let out = { packetsReceived: 0, totalAudioEnergy: 0 };
            report.forEach((s) => {
              if (s.type === "inbound-rtp" && s.kind === "audio") out = { packetsReceived: s.packetsReceived ?? 0, totalAudioEnergy: s.totalAudioEnergy ?? 0 };
            });
            return out;
          }),
        (s) => s.packetsReceived > 100 && s.totalAudioEnergy > 0,
        { timeoutMs: 15000, what: "more than 100 audio packets with energy from the carrier" },
      );
      console.log(`browser heard the carrier: ${JSON.stringify(heard)}`);
      const states = await page.evaluate(() => window.call.states);
      assert.ok(states.includes("Ringing"), `Ringing before Connected: ${states}`);
      assert.ok(states.indexOf("Ringing") < states.indexOf("Connected"), `${states}`);
      await page.evaluate(() => window.call.hangUp());
      const { code, stderr } = await carrier.done;
      assert.equal(code, 0, `carrier scenario failed (digest refused, or no BYE?):\n${stderr}`);
      assert.equal(await page.evaluate(() => window.call.callEndReason.code), 0);
    } catch (e) {
      capture.kill();
      throw e;
    } finally {
      carrier.kill();
    }
    const sent = await capture.stop();
    // Distinct INVITEs: a UDP retransmission (RFC 3261 timer A, 500 ms, when the 407 or the 100 Trying is slow on a
    // loaded machine) repeats the same bytes and is the same transaction.
    const invites = [...new Set(sent.filter((m) => m.startsWith("INVITE ")))];
    assert.equal(invites.length, 2, `the INVITE, then the one with credentials (CSeq: ${invites.map((m) => m.split("\r\n").find((l) => /^cseq:/i.test(l))).join(", ")})`);
    const auth = invites[1].split("\r\n").find((l) => l.toLowerCase().startsWith("proxy-authorization:"));
    assert.ok(auth, "the second INVITE answers the 407 with Proxy-Authorization");
    const { ok, params } = digestValid(auth.slice(auth.indexOf(":") + 1), "s3cret");
    assert.ok(ok, `the digest response is right for the trunk's password: ${JSON.stringify(params)}`);
    assert.equal(params.username, "carrier");
    assert.ok(!digestValid(auth.slice(auth.indexOf(":") + 1), "wrong").ok, "and wrong for another password");
  });
});
