// Browser-side stand-in for the Switchboard signaling server and SFU, for testing the web SDK's negotiation logic
// (server offers, perfect negotiation with Glare, track mapping, events) without a server. Loaded into a page with
// `await import("/mock_signaling.js")`: it replaces `window.WebSocket` with a fake that talks to an in-page mock
// whose "SFU" is a second RTCPeerConnection per call. Remote participants' media are canvas and oscillator tracks.
//
//   window.mock.sent            every frame the SDK sent, parsed
//   window.mock.glareNext       make the next client `offer` cross a server offer (publishing glareUser's camera)
//                               and fail with Glare (true: at once; "afterAnswer": once the server offer is answered;
//                               "beforeOffer": Glare first, the server offer 300 ms later)
//   window.mock.publish(user, sources)   the SFU adds m-lines for `user` (`["audio","camera","screenShare"]`)
//   window.mock.unpublish(user, source?) the SFU stops them
//   window.mock.event(obj)      sends an event to the SDK
//   window.mock.clientTracks    the `tracks` of the last accepted client offer
//
// Protocol subset: auth, ping, startCall (call connects at once), join, offer, answer, iceCandidate, mute, unmute,
// hangUp. Not a model of the real server's timing.

const ME = "8:acs:mock_me";

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Waits for ICE gathering to finish so the SDP carries the candidates (the real server is ICE-lite, no trickle). */
function gathered(pc) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const check = () => {
      if (pc.iceGatheringState === "complete") {
        pc.removeEventListener("icegatheringstatechange", check);
        resolve();
      }
    };
    pc.addEventListener("icegatheringstatechange", check);
    setTimeout(resolve, 3000);
  });
}

/** An animated canvas video track (its own colour per user, so receivers could tell them apart). */
function canvasTrack(hue, width = 160, height = 120) {
  const canvas = document.createElement("canvas");
  canvas.width = width;
  canvas.height = height;
  const ctx = canvas.getContext("2d");
  let n = 0;
  setInterval(() => {
    n++;
    ctx.fillStyle = `hsl(${hue}, 70%, 50%)`;
    ctx.fillRect(0, 0, width, height);
    ctx.fillStyle = "#fff";
    ctx.fillRect((n * 4) % width, 10, 20, 20);
  }, 66);
  return canvas.captureStream(15).getVideoTracks()[0];
}

let audioContext = null;
function toneTrack(freq) {
  audioContext = audioContext || new AudioContext();
  const osc = audioContext.createOscillator();
  osc.frequency.value = freq;
  const gain = audioContext.createGain();
  gain.gain.value = 0.3;
  const dest = audioContext.createMediaStreamDestination();
  osc.connect(gain).connect(dest);
  osc.start();
  return dest.stream.getAudioTracks()[0];
}

class MockCall {
  constructor(mock, socket, id) {
    this.mock = mock;
    this.socket = socket;
    this.id = id;
    this.pc = new RTCPeerConnection();
    this.pendingCandidates = [];
    /** mid -> {communicationUserId, source, transceiver} */
    this.published = new Map();
    this.offerOutstanding = false;
    this.chain = Promise.resolve();
    this.negotiated = false;
  }
  /** Serialises the SFU's own SDP work. */
  run(step) {
    const p = this.chain.then(step);
    this.chain = p.catch((e) => this.mock.errors.push(`call ${this.id}: ${e.message}`));
    return p;
  }
  async clientOffer(msg) {
    const pc = this.pc;
    await pc.setRemoteDescription({ type: "offer", sdp: msg.sdp });
    for (const c of this.pendingCandidates.splice(0)) await pc.addIceCandidate(c).catch(() => {});
    await pc.setLocalDescription(await pc.createAnswer());
    await gathered(pc);
    this.mock.clientTracks = msg.tracks || null;
    this.negotiated = true;
    return { type: "answer", sdp: pc.localDescription.sdp };
  }
  /** Adds (or stops) m-lines and sends a server offer; resolves once the SDK answered it. */
  async serverOffer(change) {
    const pc = this.pc;
    const added = change(pc) || [];
    await pc.setLocalDescription(await pc.createOffer());
    for (const p of added) this.published.set(p.transceiver.mid, p);
    await gathered(pc);
    this.offerOutstanding = true;
    const answered = new Promise((resolve) => (this.answered = resolve));
    const tracks = [...this.published].map(([mid, p]) => ({ mid, communicationUserId: p.communicationUserId, source: p.source }));
    this.mock.serverOffers.push({ callId: this.id, tracks });
    this.socket._deliver({ type: "offer", callId: this.id, sdp: pc.localDescription.sdp, tracks });
    await answered; // the next server offer waits for this one's answer
  }
  publish(user, sources) {
    const n = this.mock.users.indexOf(user) + 1;
    return this.run(() =>
      this.serverOffer((pc) =>
        sources.map((source) => {
          const track = source === "audio" ? toneTrack(200 + n * 100) : source === "screenShare" ? canvasTrack(200, 320, 180) : canvasTrack(40 * n);
          return { communicationUserId: user, source, transceiver: pc.addTransceiver(track, { direction: "sendonly" }) };
        }),
      ),
    );
  }
  unpublish(user, source) {
    return this.run(() =>
      this.serverOffer(() => {
        for (const [mid, p] of [...this.published]) {
          if (p.communicationUserId === user && (!source || p.source === source)) {
            p.transceiver.stop();
            this.published.delete(mid);
          }
        }
        return [];
      }),
    );
  }
}

class Mock {
  constructor() {
    this.sent = [];
    this.sockets = [];
    this.calls = new Map();
    this.errors = [];
    this.serverOffers = [];
    this.clientTracks = null;
    this.glareNext = false;
    this.glareUser = "8:acs:mock_carol";
    this.nextCall = 1;
    this.users = ["8:acs:mock_bob", "8:acs:mock_carol", "8:acs:mock_dave", "8:acs:mock_erin"];
    /** Participants of the group call, as join reports them. */
    this.groupParticipants = [{ communicationUserId: "8:acs:mock_bob", displayName: "Bob", state: "Connected", isMuted: false, isSpeaking: false }];
  }
  get call() {
    return [...this.calls.values()].at(-1);
  }
  event(obj) {
    this.sockets.at(-1)._deliver(obj);
  }
  publish(user, sources) {
    return this.call.publish(user, sources);
  }
  unpublish(user, source) {
    return this.call.unpublish(user, source);
  }
  async handle(socket, msg) {
    this.sent.push(msg);
    const reply = (result) => socket._deliver({ type: "response", id: msg.id, ok: true, result });
    const fail = (code, message) => socket._deliver({ type: "response", id: msg.id, ok: false, error: { code, message } });
    const call = msg.callId ? this.calls.get(msg.callId) : null;
    try {
      switch (msg.type) {
        case "auth":
          return reply({ communicationUserId: ME, connectionId: "1", heartbeatIntervalMs: 15000 });
        case "ping":
          return reply({ pong: true });
        case "startCall": {
          const id = `mock-call-${this.nextCall++}`;
          this.calls.set(id, new MockCall(this, socket, id));
          reply({ callId: id });
          socket._deliver({ type: "callStateChanged", callId: id, state: "Ringing" });
          await sleep(50);
          socket._deliver({ type: "participantsUpdated", callId: id, added: [], removed: [], updated: [{ communicationUserId: msg.targets[0].communicationUserId, displayName: "Bob", state: "Connected", isMuted: false }] });
          socket._deliver({ type: "callStateChanged", callId: id, state: "Connected" });
          return;
        }
        case "join": {
          const id = `mock-group-${this.nextCall++}`;
          this.calls.set(id, new MockCall(this, socket, id));
          return reply({ callId: id, participants: this.groupParticipants });
        }
        case "offer": {
          if (!call) return fail("CallNotFound", "no such call");
          if (this.glareNext) {
            // The SFU's own offer (publishing glareUser's camera) is already on the wire when the client's arrives:
            // it goes first, then Glare. With glareNext "afterAnswer" the Glare response waits until the server's
            // offer was answered, which only a client that answers while its own offer is out gets past.
            const mode = this.glareNext;
            this.glareNext = false;
            if (mode === "beforeOffer") {
              // Glare first, the server's offer 300 ms later (it was still being prepared).
              fail("Glare", "the server has an offer outstanding on this call");
              await sleep(300);
              await call.publish(this.glareUser, ["camera"]);
              return;
            }
            const started = call.publish(this.glareUser, ["camera"]);
            while (!call.offerOutstanding) await sleep(5);
            if (mode === "afterAnswer") await started;
            fail("Glare", "the server has an offer outstanding on this call");
            await started;
            return;
          }
          if (call.offerOutstanding) return fail("Glare", "the server has an offer outstanding on this call");
          const answer = await call.run(() => call.clientOffer(msg));
          return reply(answer);
        }
        case "answer": {
          if (!call) return fail("CallNotFound", "no such call");
          if (!call.offerOutstanding) return fail("NoPendingOffer", "no server offer outstanding");
          await call.pc.setRemoteDescription({ type: "answer", sdp: msg.sdp });
          call.offerOutstanding = false;
          reply({});
          call.answered?.();
          return;
        }
        case "iceCandidate": {
          if (!call || !msg.candidate?.candidate) return;
          if (call.pc.remoteDescription) await call.pc.addIceCandidate(msg.candidate).catch(() => {});
          else call.pendingCandidates.push(msg.candidate);
          return;
        }
        case "mute":
        case "unmute":
          return reply({});
        case "hangUp": {
          reply({});
          socket._deliver({ type: "callStateChanged", callId: msg.callId, state: "Disconnected", endReason: { code: 0, subcode: msg.forEveryone ? 5001 : 0, message: "call ended" } });
          call?.pc.close();
          this.calls.delete(msg.callId);
          return;
        }
        default:
          if (msg.id !== undefined) fail("BadMessage", `unknown type ${msg.type}`);
      }
    } catch (e) {
      this.errors.push(`${msg.type}: ${e.message}`);
      if (msg.id !== undefined) fail("Internal", e.message);
    }
  }
}

class FakeWebSocket extends EventTarget {
  constructor(url) {
    super();
    this.url = url;
    this.readyState = 0;
    window.mock.sockets.push(this);
    setTimeout(() => {
      this.readyState = 1;
      this.dispatchEvent(new Event("open"));
    }, 0);
  }
  send(text) {
    if (this.readyState !== 1) throw new Error("not open");
    const msg = JSON.parse(text);
    setTimeout(() => window.mock.handle(this, msg), 0);
  }
  close(code = 1000, reason = "") {
    if (this.readyState >= 2) return;
    this.readyState = 3;
    setTimeout(() => this.dispatchEvent(new CloseEvent("close", { code, reason })), 0);
  }
  /** Server -> SDK frame. */
  _deliver(obj) {
    if (this.readyState !== 1) return;
    this.dispatchEvent(new MessageEvent("message", { data: JSON.stringify(obj) }));
  }
}

window.mock = new Mock();
window.WebSocket = FakeWebSocket;
