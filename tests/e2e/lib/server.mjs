// Starts a Switchboard server for one test file: fresh data dir, free ports, waits for /healthz.
//
//   const server = await startServer({ label: "one_to_one" });
//   ... fetch(server.httpUrl + "/demo/users") ...
//   await server.stop();
//
// Binary: $SWITCHBOARD_BIN, else ${CARGO_TARGET_DIR:-target}/debug/switchboard (relative to the repository root).
// The server's stdout/stderr go to target/e2e/<label>-server.log; set SWITCHBOARD_E2E_VERBOSE=1 to also echo them.
import { spawn } from "node:child_process";
import dgram from "node:dgram";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

/** The repository root (tests/e2e/lib -> ../../..). */
export const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..", "..");
/** Where tests put artifacts (screenshots, server logs). */
export const artifactsDir = path.join(repoRoot, "target", "e2e");

/** @returns {string} absolute path of the server binary */
export function serverBinary() {
  if (process.env.SWITCHBOARD_BIN) return path.resolve(repoRoot, process.env.SWITCHBOARD_BIN);
  const targetDir = path.resolve(repoRoot, process.env.CARGO_TARGET_DIR || "target");
  return path.join(targetDir, "debug", "switchboard");
}

/** Binds TCP port 0 on 127.0.0.1 and returns the port the OS picked (after closing it). */
function freeTcpPort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on("error", reject);
    srv.listen({ port: 0, host: "127.0.0.1", exclusive: true }, () => {
      const { port } = /** @type {net.AddressInfo} */ (srv.address());
      srv.close(() => resolve(port));
    });
  });
}

/** True when `port` can be bound for UDP on all interfaces right now. */
function udpPortFree(port) {
  return new Promise((resolve) => {
    const sock = dgram.createSocket("udp4");
    sock.once("error", () => {
      sock.close();
      resolve(false);
    });
    sock.bind({ port, address: "0.0.0.0", exclusive: true }, () => sock.close(() => resolve(true)));
  });
}

/**
 * Picks `n` distinct free ports (the media port must also be free for UDP).
 * @param {number} n
 * @returns {Promise<number[]>}
 */
export async function freePorts(n) {
  const ports = new Set();
  for (let tries = 0; ports.size < n && tries < 50; tries++) {
    const port = await freeTcpPort();
    if (ports.has(port)) continue;
    if (!(await udpPortFree(port))) continue;
    ports.add(port);
  }
  if (ports.size < n) throw new Error("could not find free ports");
  return [...ports];
}

/**
 * Media workers every test server runs (`--media-workers`): two, whatever the machine's cores, so that rooms land
 * on different workers and ports in every run. Worker i listens on the media port + i.
 */
export const MEDIA_WORKERS = 2;

/**
 * A UDP port p such that p .. p + count - 1 are all free and none is in `taken`.
 * @param {number} count
 * @param {number[]} taken
 * @returns {Promise<number>}
 */
async function freeUdpRange(count, taken) {
  for (let tries = 0; tries < 50; tries++) {
    const first = await freeTcpPort();
    if (first + count - 1 > 65535) continue;
    const range = Array.from({ length: count }, (_, i) => first + i);
    if (range.some((p) => taken.includes(p))) continue;
    let free = true;
    for (const p of range) free = free && (await udpPortFree(p));
    if (free) return first;
  }
  throw new Error(`could not find ${count} consecutive free UDP ports`);
}

/**
 * The environment for the server: ours, less the variables meant for this harness. The server reads
 * `SWITCHBOARD_*` variables as configuration and refuses unknown keys, so SWITCHBOARD_BIN and
 * SWITCHBOARD_E2E_* must not reach it.
 */
function serverEnv() {
  const env = { ...process.env };
  for (const key of Object.keys(env)) {
    if (key === "SWITCHBOARD_BIN" || key.startsWith("SWITCHBOARD_E2E_")) delete env[key];
  }
  return env;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Starts the server.
 * `dataDir` reuses a data directory (its identities and keys), which is then kept at stop; without it a fresh one is
 * made and removed at stop. `mediaPort` is media worker 0's port; `mediaPorts` lists every worker's (a room's
 * clients use its worker's).
 * @param {{ label?: string, startTimeoutMs?: number, extraArgs?: string[], env?: Record<string,string>, dataDir?: string }} [options]
 * @returns {Promise<{ httpUrl: string, httpPort: number, httpsPort: number, mediaPort: number, mediaPorts: number[], dataDir: string, logPath: string, stop: () => Promise<void> }>}
 */
/**
 * The `[sip]` section of a test config: the gateway on loopback `sipPort` (no TLS), RTP on the 100 ports from
 * `rtpMin`. Trunks and numbers follow it in the caller's TOML.
 */
export function sipSection(sipPort, rtpMin) {
  return `[sip]
port = ${sipPort}
tls_port = 0
bind = "127.0.0.1"
rtp_port_min = ${rtpMin}
rtp_port_max = ${rtpMin + 99}
`;
}

export async function startServer(options = {}) {
  const label = options.label || "e2e";
  const bin = serverBinary();
  if (!fs.existsSync(bin)) {
    throw new Error(`server binary not found at ${bin}: build it (cargo build) or set SWITCHBOARD_BIN`);
  }
  const ownDataDir = !options.dataDir;
  const dataDir = options.dataDir || fs.mkdtempSync(path.join(os.tmpdir(), `switchboard-e2e-${label}-`));
  const [httpPort, httpsPort] = await freePorts(2);
  const mediaPort = await freeUdpRange(MEDIA_WORKERS, [httpPort, httpsPort]);
  const mediaPorts = Array.from({ length: MEDIA_WORKERS }, (_, i) => mediaPort + i);
  const args = [
    "serve",
    "--data-dir", dataDir,
    "--http-port", String(httpPort),
    "--https-port", String(httpsPort),
    "--media-port", String(mediaPort),
    "--media-workers", String(MEDIA_WORKERS),
    ...(options.extraArgs || []),
  ];
  fs.mkdirSync(artifactsDir, { recursive: true });
  const logPath = path.join(artifactsDir, `${label}-server.log`);
  const log = fs.createWriteStream(logPath);
  log.write(`$ ${bin} ${args.join(" ")}\n`);
  const verbose = process.env.SWITCHBOARD_E2E_VERBOSE === "1";
  /** The last lines of output, shown when the server fails to start. */
  let tail = "";
  const child = spawn(bin, args, {
    cwd: dataDir,
    env: { RUST_LOG: "info", ...serverEnv(), ...(options.env || {}) },
    stdio: ["ignore", "pipe", "pipe"],
  });
  const onOutput = (chunk) => {
    log.write(chunk);
    tail = (tail + chunk.toString()).slice(-4000);
    if (verbose) process.stderr.write(`[server ${label}] ${chunk}`);
  };
  child.stdout.on("data", onOutput);
  child.stderr.on("data", onOutput);
  /** @type {Promise<{code: number|null, signal: string|null}>} */
  const exited = new Promise((resolve) => child.once("exit", (code, signal) => resolve({ code, signal })));
  let exitInfo = null;
  exited.then((info) => (exitInfo = info));
  child.once("error", (e) => {
    tail += `\nspawn error: ${e.message}`;
  });

  const httpUrl = `http://127.0.0.1:${httpPort}`;
  const deadline = Date.now() + (options.startTimeoutMs || 60000);
  let lastError = "";
  for (;;) {
    if (exitInfo) {
      log.end();
      throw new Error(`server exited during start-up (${JSON.stringify(exitInfo)}); log ${logPath}:\n${tail}`);
    }
    try {
      const res = await fetch(`${httpUrl}/healthz`, { signal: AbortSignal.timeout(2000) });
      await res.arrayBuffer().catch(() => {});
      if (res.status === 200) break;
      lastError = `status ${res.status}`;
    } catch (e) {
      lastError = e.cause?.code || e.message;
    }
    if (Date.now() > deadline) {
      child.kill("SIGKILL");
      await exited;
      log.end();
      throw new Error(`server did not answer GET /healthz with 200 (${lastError}); log ${logPath}:\n${tail}`);
    }
    await sleep(200);
  }

  let stopping = null;
  const stop = () => {
    if (stopping) return stopping;
    stopping = (async () => {
      if (!exitInfo) {
        child.kill("SIGTERM");
        const result = await Promise.race([exited, sleep(10000).then(() => null)]);
        if (!result) {
          log.write("\n[e2e] server did not exit within 10 s of SIGTERM: SIGKILL\n");
          child.kill("SIGKILL");
          await exited;
        }
      }
      await new Promise((resolve) => log.end(resolve));
      if (ownDataDir && process.env.SWITCHBOARD_E2E_KEEP !== "1") fs.rmSync(dataDir, { recursive: true, force: true });
      return exitInfo;
    })();
    return stopping;
  };
  return { httpUrl, httpPort, httpsPort, mediaPort, mediaPorts, dataDir, logPath, stop };
}

/**
 * Signs a demo user in: POST /demo/signin {name}.
 * @param {string} httpUrl
 * @param {string} name
 * @returns {Promise<{name: string, communicationUserId: string, token: string, expiresOn: string}>}
 */
export async function demoSignIn(httpUrl, name) {
  const res = await fetch(`${httpUrl}/demo/signin`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ name }),
  });
  const text = await res.text();
  if (res.status !== 200) throw new Error(`POST /demo/signin {"name":${JSON.stringify(name)}} -> ${res.status} ${text}`);
  const body = JSON.parse(text);
  for (const key of ["communicationUserId", "token"]) {
    if (typeof body[key] !== "string" || !body[key]) throw new Error(`POST /demo/signin response lacks ${key}: ${text}`);
  }
  return body;
}

/**
 * GET /demo/users.
 * @param {string} httpUrl
 * @returns {Promise<{name: string, communicationUserId: string, online: boolean}[]>}
 */
export async function demoUsers(httpUrl) {
  const res = await fetch(`${httpUrl}/demo/users`);
  const text = await res.text();
  if (res.status !== 200) throw new Error(`GET /demo/users -> ${res.status} ${text}`);
  return JSON.parse(text).users;
}
