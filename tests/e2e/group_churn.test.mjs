// A participant stays in a group call while another joins and leaves again and again. The SFU must recycle the
// m-lines of departed tracks (they become inactive spares, reused by the next track of the same kind), so the
// stayer's SDP stays bounded: without that every cycle added ~3.4 KB and around the 17th the stayer's `answer`
// passed the 64 KiB frame limit (close 1009). Each cycle must decode new frames from the visitor on the reused mid.
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
  { timeout: 300000 },
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
    let decodedBefore = 0;
    for (let i = 1; i <= CYCLES; i++) {
      await joinGroup(visitor.page, groupId, { audio: true, video: TINY_VIDEO });
      const floor = decodedBefore;
      const s = await pollUntil(
        async () => ({ stats: await statsByParticipant(stayer.page), summary: await groupSummary(stayer.page) }),
        // A reused mid keeps its receiver (and its stats): count only frames decoded in this cycle.
        (x) => x.summary.state === "Disconnected" || x.stats[visitor.id]?.camera?.framesDecoded > floor + 2,
        { timeoutMs: 10000, intervalMs: 250, what: `cycle ${i}: the stayer decodes the visitor` },
      );
      const largest = Math.max(...(await stayer.page.evaluate(() => window.sdpSizes)));
      assert.equal(s.summary.state, "Connected", `cycle ${i}: the stayer's call ended (${JSON.stringify(s.summary.callEndReason)}); largest SDP frame sent ${largest} B`);
      assert.ok(largest < 16384, `cycle ${i}: SDP frames must stay bounded, largest so far ${largest} B`);
      decodedBefore = s.stats[visitor.id].camera.framesDecoded;
      await visitor.page.evaluate(() => window.call.hangUp());
      await sleep(200);
    }
  },
);
