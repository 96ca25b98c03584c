// One SEPARATE headless Chromium process per participant (own user-data-dir), with fake camera and microphone.
//
//   const alice = await launchBrowser("alice");
//   await alice.page.goto(server.httpUrl + "/");
//   ...
//   await alice.close();
//
// Chromium: $CHROMIUM_PATH or /usr/bin/chromium. Page console errors/warnings and uncaught exceptions are printed
// to the test output with the participant's label. Test files take `browserSlot()` so that one file (at most four
// browsers) runs at a time, whatever the test runner's concurrency.
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { chromium } from "playwright-core";

export const CHROMIUM_ARGS = [
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--use-fake-device-for-media-stream",
  "--use-fake-ui-for-media-stream",
  "--autoplay-policy=no-user-gesture-required",
];

/**
 * Launches a Chromium process with a fresh profile and returns its first page.
 * @param {string} label shown before forwarded console lines
 * @param {{ extraArgs?: string[], verbose?: boolean }} [options] `verbose` forwards every console line
 * @returns {Promise<{ label: string, context: import("playwright-core").BrowserContext, page: import("playwright-core").Page, close: () => Promise<void> }>}
 */
export async function launchBrowser(label, options = {}) {
  const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), `switchboard-e2e-chromium-${label}-`));
  const verbose = options.verbose || process.env.SWITCHBOARD_E2E_VERBOSE === "1";
  let context;
  try {
    context = await chromium.launchPersistentContext(userDataDir, {
      executablePath: process.env.CHROMIUM_PATH || "/usr/bin/chromium",
      headless: true,
      args: [
        ...CHROMIUM_ARGS,
        // Responses fulfilled by a route have no IP address space; Chromium would then block the page's WebSocket to
        // 127.0.0.1 under Local Network Access checks.
        ...(process.env.SWITCHBOARD_E2E_WEB_DIR ? ["--disable-features=LocalNetworkAccessChecks"] : []),
        ...(options.extraArgs || []),
      ],
      permissions: ["camera", "microphone"],
      viewport: { width: 1100, height: 800 },
      timeout: 60000,
    });
  } catch (e) {
    fs.rmSync(userDataDir, { recursive: true, force: true });
    throw e;
  }
  if (process.env.SWITCHBOARD_E2E_WEB_DIR) await serveWebFromDisk(context, process.env.SWITCHBOARD_E2E_WEB_DIR);
  const page = context.pages()[0] || (await context.newPage());
  page.setDefaultTimeout(30000);
  page.on("console", (msg) => {
    const type = msg.type();
    if (verbose || type === "error" || type === "warning") {
      const loc = msg.location();
      const where = loc && loc.url ? ` (${loc.url.replace(/^https?:\/\/[^/]+/, "")}:${loc.lineNumber})` : "";
      console.error(`[${label} console.${type}] ${msg.text()}${where}`);
    }
  });
  page.on("pageerror", (err) => console.error(`[${label} pageerror] ${err.stack || err.message}`));
  page.on("requestfailed", (req) => {
    const failure = req.failure();
    if (failure && failure.errorText !== "net::ERR_ABORTED") console.error(`[${label} requestfailed] ${req.method()} ${req.url()}: ${failure.errorText}`);
  });
  let closing = null;
  const close = () => {
    if (closing) return closing;
    closing = (async () => {
      try {
        await Promise.race([context.close(), new Promise((resolve) => setTimeout(resolve, 20000))]);
      } finally {
        fs.rmSync(userDataDir, { recursive: true, force: true, maxRetries: 3, retryDelay: 200 });
      }
    })();
    return closing;
  };
  return { label, context, page, close };
}

/** The files the server embeds from web/ at compile time, by URL path. */
const WEB_FILES = { "/": "index.html", "/app.js": "app.js", "/app.css": "app.css", "/sdk/calling.js": "sdk/calling.js" };
const WEB_TYPES = { ".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8" };

/**
 * Development aid (SWITCHBOARD_E2E_WEB_DIR=../../web): answers the page and SDK requests from the working tree instead
 * of the files embedded in the server binary, so web/ edits can be tried without rebuilding. Everything else
 * (demo API, signaling, media) still goes to the server. Not for CI: the real tests must exercise the server.
 */
async function serveWebFromDisk(context, dir) {
  const root = path.resolve(dir);
  console.error(`[e2e] serving ${Object.keys(WEB_FILES).join(" ")} from ${root} (SWITCHBOARD_E2E_WEB_DIR)`);
  await context.route(
    (url) => Object.hasOwn(WEB_FILES, url.pathname),
    (route) => {
      const file = path.join(root, WEB_FILES[new URL(route.request().url()).pathname]);
      route.fulfill({ status: 200, headers: { "content-type": WEB_TYPES[path.extname(file)], "cache-control": "no-cache" }, body: fs.readFileSync(file) });
    },
  );
}

const LOCK_DIR = path.join(os.tmpdir(), "switchboard-e2e-browsers.lock");

/** True when process `pid` is alive. */
function alive(pid) {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return e.code === "EPERM";
  }
}

/**
 * Waits until no other test process holds the browser slot, then takes it (a lock directory holding our pid;
 * a lock whose owner died is taken over). Returns the release function.
 * @param {number} [timeoutMs]
 * @returns {Promise<() => void>}
 */
export async function browserSlot(timeoutMs = 15 * 60 * 1000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      fs.mkdirSync(LOCK_DIR);
      fs.writeFileSync(path.join(LOCK_DIR, "pid"), String(process.pid));
      let released = false;
      const release = () => {
        if (released) return;
        released = true;
        fs.rmSync(LOCK_DIR, { recursive: true, force: true });
      };
      process.once("exit", release);
      return release;
    } catch (e) {
      if (e.code !== "EEXIST") throw e;
    }
    let owner = NaN;
    try {
      owner = Number(fs.readFileSync(path.join(LOCK_DIR, "pid"), "utf8"));
    } catch {}
    const stat = fs.statSync(LOCK_DIR, { throwIfNoEntry: false });
    const stale = Number.isFinite(owner) ? !alive(owner) : stat && Date.now() - stat.mtimeMs > 10000;
    if (stale) {
      fs.rmSync(LOCK_DIR, { recursive: true, force: true });
      continue;
    }
    if (Date.now() > deadline) throw new Error(`browser slot still held by pid ${owner} after ${timeoutMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, 500));
  }
}
