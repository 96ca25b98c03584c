// Known server limit, kept as a `todo` test until the server fixes it: a participant who stays in a group call
// while another joins and leaves again and again. Every join adds two m-lines (audio, camera) to the stayer's
// session and every leave only stops them (port 0), so the SDP of each renegotiation grows by ~3.4 KB per
// join/leave cycle (~2.7 KB per video m-line: the server offers VP8 and six H.264 variants, each with rtx). Around
// the 17th cycle the stayer's `answer` passes 64 KiB and the server closes its socket with 1009 ("frame larger
// than 64 KiB"), ending every call of that connection (0/5010). The same happens with ~16 participants at once.
// Fixes on the server side: offer only the forwarded codec on server-added m-lines, reuse stopped m-line slots for
// new tracks, and/or allow larger `offer`/`answer` frames.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { browserSlot, launchBrowser } from "./lib/browser.mjs";
import { connectAgent, groupSummary, joinGroup, statsByParticipant } from "./lib/group.mjs";
import { demoSignIn, startServer } from "./lib/server.mjs";
import { pollUntil, sleep } from "./lib/util.mjs";

const CYCLES = 24;
const TINY_VIDEO = { width: 160, height: 120, frameRate: 10 };

let server;
let stayer;
let visitor;
let releaseSlot = () => {};

before(async () => {
  releaseSlot = await browserSlot();
  server = await startServer({ label: "group_churn" });
  const [su, vu] = await Promise.all([demoSignIn(server.httpUrl, "Stayer"), demoSignIn(server.httpUrl, "Visitor")]);
  const [sb, vb] = await Promise.all([launchBrowser("stayer"), launchBrowser("visitor")]);
  stayer = { user: su, browser: sb, page: sb.page, id: "" };
  visitor = { user: vu, browser: vb, page: vb.page, id: "" };
  await Promise.all([stayer, visitor].map((p) => p.page.goto(`${server.httpUrl}/`)));
  stayer.id = await connectAgent(stayer.page, su.token, "Stayer");
  visitor.id = await connectAgent(visitor.page, vu.token, "Visitor");
});

after(async () => {
  await Promise.allSettled([stayer?.browser.close(), visitor?.browser.close()]);
  await server?.stop();
  releaseSlot();
});

test(
  `a participant stays connected while another joins and leaves ${CYCLES} times`,
  { timeout: 300000, todo: "server: SDP grows ~3.4 KB per join/leave until the answer exceeds the 64 KiB frame limit (1009)" },
  async () => {
    await stayer.page.evaluate(() => {
      window.sdpSizes = [];
      const ws = window.agent._ws;
      const send = ws.send.bind(ws);
      ws.send = (text) => {
        const type = JSON.parse(text).type;
        if (type === "offer" || type === "answer") window.sdpSizes.push(text.length);
        return send(text);
      };
    });
    const groupId = crypto.randomUUID();
    await joinGroup(stayer.page, groupId, { audio: true, video: TINY_VIDEO });
    for (let i = 1; i <= CYCLES; i++) {
      await joinGroup(visitor.page, groupId, { audio: true, video: TINY_VIDEO });
      const s = await pollUntil(
        async () => ({ stats: await statsByParticipant(stayer.page), summary: await groupSummary(stayer.page) }),
        (x) => x.summary.state === "Disconnected" || x.stats[visitor.id]?.camera?.framesDecoded > 2,
        { timeoutMs: 10000, intervalMs: 250, what: `cycle ${i}: the stayer decodes the visitor` },
      );
      const largest = Math.max(...(await stayer.page.evaluate(() => window.sdpSizes)));
      assert.equal(s.summary.state, "Connected", `cycle ${i}: the stayer's call ended (${JSON.stringify(s.summary.callEndReason)}); largest SDP frame sent ${largest} B`);
      await visitor.page.evaluate(() => window.call.hangUp());
      await sleep(200);
    }
  },
);
