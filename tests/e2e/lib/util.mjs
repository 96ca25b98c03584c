// Small helpers shared by the e2e tests.

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Calls `probe` until `check(value)` is true or the time is up; returns the last value.
 * Throws (with the last value in the message) on timeout.
 * @template T
 * @param {() => Promise<T>} probe
 * @param {(value: T) => boolean} check
 * @param {{ timeoutMs: number, intervalMs?: number, what: string }} options
 * @returns {Promise<T>}
 */
export async function pollUntil(probe, check, { timeoutMs, intervalMs = 250, what }) {
  const start = Date.now();
  let value;
  let lastError = null;
  for (;;) {
    try {
      value = await probe();
      lastError = null;
      if (check(value)) return value;
    } catch (e) {
      lastError = e;
    }
    if (Date.now() - start > timeoutMs) {
      const detail = lastError ? `last error: ${lastError.message}` : `last value: ${JSON.stringify(value)}`;
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}; ${detail}`);
    }
    await sleep(intervalMs);
  }
}

/**
 * In-page: the inbound-rtp counters and the selected candidate pair of `window[callVar]` (a SDK Call), or of
 * the calling page's current call when callVar is "app".
 * @param {import("playwright-core").Page} page
 * @param {string} [callVar]
 */
export function inboundStats(page, callVar = "call") {
  return page.evaluate(async (callVar) => {
    const call = callVar === "app" ? window.switchboardApp?.call : window[callVar];
    if (!call) return { error: "no call" };
    const report = await call.getStats();
    const out = { audio: null, video: null, outbound: {}, pair: null, pcState: call.peerConnection?.connectionState ?? null };
    report.forEach((s) => {
      if (s.type === "inbound-rtp") {
        out[s.kind] = {
          packetsReceived: s.packetsReceived ?? 0,
          bytesReceived: s.bytesReceived ?? 0,
          framesDecoded: s.framesDecoded,
          audioLevel: s.audioLevel,
          frameWidth: s.frameWidth,
        };
      }
      if (s.type === "outbound-rtp") out.outbound[s.kind] = { packetsSent: s.packetsSent ?? 0, framesEncoded: s.framesEncoded };
      if (s.type === "candidate-pair" && s.nominated && s.state === "succeeded") {
        const l = report.get(s.localCandidateId);
        const r = report.get(s.remoteCandidateId);
        out.pair = `${l?.candidateType} ${l?.address}:${l?.port} <-> ${r?.candidateType} ${r?.address}:${r?.port}`;
      }
    });
    return out;
  }, callVar);
}
