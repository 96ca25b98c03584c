// Network impairments for ONE UDP flow on the loopback interface (everything in the e2e tests runs on this host):
// random loss with nftables, a rate limit with tc. The kernel here has no sch_netem, hence these two tools.
//
//   requireNetTools();                                  // throws naming the Debian packages when nft/tc are missing
//   removeStaleImpairments();                           // leftovers of earlier crashed runs
//   const loss = await udpLoss({ sport: server.mediaPort, dport: 50123, percent: 5 });
//   ... loss.counters() -> { matched, dropped } ...
//   await loss.remove();
//   const cap = await udpRateLimit({ sport: server.mediaPort, dport: 50123, rate: "300kbit" });
//   ... cap.counters() -> { packets, bytes, dropped } ...
//   await cap.remove();
//
// Both match `udp sport S udp dport D` only (server media port -> one browser's candidate port), so other flows on
// lo, including other tests', are untouched: the loss rule lives in its own nftables table `sb_e2e_<pid>` (input
// hook: a drop on the output hook makes the sender's sendto() fail with EPERM instead of a silent loss), and the
// rate limit is a root `htb` qdisc on lo (handle 5b0e:) without a default class, so every other packet takes its
// direct queue unshaped; a u32 filter sends the one flow to a class holding a tbf. (This kernel has no sch_prio,
// sch_netem or act_police; htb, tbf, pfifo and cls_u32 are there.) Runs as root (the tests do).
// Every impairment records its owner pid; `removeStaleImpairments` deletes those whose owner is gone.
import { execFileSync, spawnSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";

const TABLE_PREFIX = "sb_e2e_";
/** Major handle of our root qdisc on lo ("sb e2e"); tc has no names, so the handle marks it as ours. */
const QDISC_HANDLE = "5b0e";
/** Handle of the tbf under it. */
const TBF_HANDLE = "5b14";
const TC_OWNER_FILE = path.join(os.tmpdir(), "switchboard-e2e-netem-lo.pid");

const TOOLS = [
  { cmd: "nft", args: ["--version"], pkg: "nftables" },
  { cmd: "tc", args: ["-V"], pkg: "iproute2" },
];

/** Resolves a tool in PATH or the sbin directories (root's PATH may lack them). */
function tool(cmd) {
  for (const dir of [...(process.env.PATH || "").split(":"), "/usr/sbin", "/sbin"]) {
    if (!dir) continue;
    const p = path.join(dir, cmd);
    try {
      fs.accessSync(p, fs.constants.X_OK);
      return p;
    } catch {}
  }
  return null;
}

/**
 * Throws a clear error unless `nft` and `tc` are installed and usable (root; nf_tables, sch_htb, sch_tbf and cls_u32
 * in the kernel). Names the Debian packages to install.
 */
export function requireNetTools() {
  const missing = TOOLS.filter((t) => !tool(t.cmd) || spawnSync(tool(t.cmd), t.args, { stdio: "ignore" }).status !== 0);
  if (missing.length) {
    throw new Error(
      `network impairment tests need ${missing.map((t) => `\`${t.cmd}\``).join(" and ")}: install the Debian package(s) ` +
        `${missing.map((t) => t.pkg).join(" ")} (apt-get install -y nftables iproute2)`,
    );
  }
  if (process.getuid && process.getuid() !== 0) throw new Error("network impairment tests must run as root (nft/tc change the host's loopback)");
}

function run(cmd, args, input) {
  try {
    return execFileSync(tool(cmd) || cmd, args, { input, encoding: "utf8", stdio: ["pipe", "pipe", "pipe"] });
  } catch (e) {
    throw new Error(`${cmd} ${args.join(" ")} failed: ${(e.stderr || e.message).toString().trim()}`);
  }
}

function tryRun(cmd, args) {
  return spawnSync(tool(cmd) || cmd, args, { encoding: "utf8" });
}

function alive(pid) {
  if (!Number.isInteger(pid) || pid <= 0) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return e.code === "EPERM";
  }
}

function checkPort(name, port) {
  if (!Number.isInteger(port) || port <= 0 || port > 65535) throw new Error(`${name}: bad UDP port ${port}`);
}

/** Our root qdisc on lo, if any: `{ owner }` (owner pid, NaN when unknown) or null. */
function ourQdisc() {
  const out = tryRun("tc", ["qdisc", "show", "dev", "lo", "root"]).stdout || "";
  if (!new RegExp(`^qdisc htb ${QDISC_HANDLE}: root`, "m").test(out)) return null;
  let owner = NaN;
  try {
    owner = Number(fs.readFileSync(TC_OWNER_FILE, "utf8"));
  } catch {}
  return { owner };
}

/**
 * Removes impairments left by earlier runs that died before their clean-up: nftables tables `sb_e2e_<pid>` whose
 * pid is gone, and our root qdisc on lo (handle 5b0e:) when its owner is gone. Returns what it removed.
 */
export function removeStaleImpairments() {
  const removed = [];
  const tables = tryRun("nft", ["list", "tables"]).stdout || "";
  for (const m of tables.matchAll(new RegExp(`^table (\\w+) (${TABLE_PREFIX}(\\d+)(?:_\\w+)?)$`, "gm"))) {
    const [, family, name, pid] = m;
    if (Number(pid) === process.pid || alive(Number(pid))) continue;
    if (tryRun("nft", ["delete", "table", family, name]).status === 0) removed.push(`nft table ${family} ${name}`);
  }
  const q = ourQdisc();
  if (q && (q.owner === process.pid || !alive(q.owner))) {
    if (tryRun("tc", ["qdisc", "del", "dev", "lo", "root", "handle", `${QDISC_HANDLE}:`]).status === 0) removed.push(`tc qdisc ${QDISC_HANDLE}: on lo`);
    fs.rmSync(TC_OWNER_FILE, { force: true });
  }
  if (removed.length) console.log(`[netem] removed leftovers of earlier runs: ${removed.join(", ")}`);
  return removed;
}

let tableSeq = 0;

/**
 * Drops `percent` % of the UDP packets from port `sport` to port `dport` arriving on lo, at random.
 * @param {{ sport: number, dport: number, percent: number }} flow
 * @returns {{ table: string, counters: () => { matched: number, dropped: number }, remove: () => void }}
 */
export function udpLoss({ sport, dport, percent }) {
  checkPort("sport", sport);
  checkPort("dport", dport);
  if (!(percent > 0 && percent < 100)) throw new Error(`loss percent ${percent} out of (0, 100)`);
  const table = `${TABLE_PREFIX}${process.pid}_${++tableSeq}`;
  // `matched` counts every packet of the flow, `dropped` those numgen picked. Priority -300: before anything else
  // on the input hook (conntrack sits at -200), so the drop looks like a loss on the wire.
  run(
    "nft",
    ["-f", "-"],
    `table inet ${table} {
  chain input {
    type filter hook input priority -300; policy accept;
    iifname "lo" udp sport ${sport} udp dport ${dport} counter name matched jump lossy
  }
  chain lossy {
    numgen random mod 100 < ${Math.round(percent)} counter name dropped drop
  }
  counter matched { }
  counter dropped { }
}
`,
  );
  let removed = false;
  return {
    table,
    counters() {
      const json = JSON.parse(run("nft", ["-j", "list", "counters", "table", "inet", table]));
      const out = { matched: 0, dropped: 0 };
      for (const item of json.nftables || []) if (item.counter && item.counter.name in out) out[item.counter.name] = item.counter.packets;
      return out;
    },
    remove() {
      if (removed) return;
      removed = true;
      tryRun("nft", ["delete", "table", "inet", table]);
    },
  };
}

/**
 * Limits the UDP packets from port `sport` to port `dport` leaving through lo to `rate` (tc syntax, e.g. "300kbit")
 * with a tbf; other traffic on lo takes the htb's direct queue, unshaped. Only one at a time (it owns
 * lo's root qdisc); fails when lo already has a root qdisc that is not ours.
 * @param {{ sport: number, dport: number, rate: string, burst?: string, latency?: string }} flow
 * @returns {{ counters: () => { packets: number, bytes: number, dropped: number, allPackets: number, otherPackets: number }, remove: () => void }}
 */
export function udpRateLimit({ sport, dport, rate, burst = "4kb", latency = "200ms" }) {
  checkPort("sport", sport);
  checkPort("dport", dport);
  const root = tryRun("tc", ["qdisc", "show", "dev", "lo", "root"]).stdout || "";
  if (ourQdisc()) throw new Error(`lo already has the e2e htb qdisc ${QDISC_HANDLE}: of a live process: ${root.trim()}`);
  if (!/^qdisc noqueue 0: root/m.test(root) && root.trim() !== "") {
    throw new Error(`lo has a root qdisc that is not ours; not touching it: ${root.trim()}`);
  }
  const h = QDISC_HANDLE;
  fs.writeFileSync(TC_OWNER_FILE, String(process.pid));
  let removed = false;
  const remove = () => {
    if (removed) return;
    removed = true;
    if (ourQdisc()) tryRun("tc", ["qdisc", "del", "dev", "lo", "root", "handle", `${h}:`]);
    fs.rmSync(TC_OWNER_FILE, { force: true });
  };
  try {
    // htb without a default class: unclassified packets (all other traffic) take htb's direct queue, sent at once
    // without shaping. The filtered flow goes to class :4 (no htb limit of its own) whose tbf does the limiting.
    run("tc", ["qdisc", "add", "dev", "lo", "root", "handle", `${h}:`, "htb", "default", "0"]);
    run("tc", ["class", "add", "dev", "lo", "parent", `${h}:`, "classid", `${h}:4`, "htb", "rate", "10gbit", "quantum", "60000"]);
    run("tc", ["qdisc", "add", "dev", "lo", "parent", `${h}:4`, "handle", `${TBF_HANDLE}:`, "tbf", "rate", rate, "burst", burst, "latency", latency]);
    for (const [protocol, sel, pref] of [
      ["ip", "ip", "1"],
      ["ipv6", "ip6", "2"],
    ]) {
      run("tc", [
        "filter", "add", "dev", "lo", "parent", `${h}:`, "protocol", protocol, "prio", pref, "u32",
        "match", sel, "protocol", "17", "0xff",
        "match", sel, "sport", String(sport), "0xffff",
        "match", sel, "dport", String(dport), "0xffff",
        "flowid", `${h}:4`,
      ]);
    }
  } catch (e) {
    remove();
    throw e;
  }
  return {
    counters() {
      const out = { packets: 0, bytes: 0, dropped: 0, allPackets: 0, otherPackets: 0 };
      const stats = run("tc", ["-s", "qdisc", "show", "dev", "lo"]);
      // qdisc <kind> <handle>: root|parent <h>:<class> <options>\n Sent B bytes P pkt (dropped D, ...
      for (const m of stats.matchAll(/^qdisc (\w+) ([0-9a-f]+): [^\n]*\n\s*Sent (\d+) bytes (\d+) pkt \(dropped (\d+)/gm)) {
        const [, , handle, bytes, pkts, dropped] = m;
        if (handle === TBF_HANDLE) Object.assign(out, { packets: Number(pkts), bytes: Number(bytes), dropped: Number(dropped) });
        else if (handle === h) out.allPackets = Number(pkts);
      }
      out.otherPackets = out.allPackets - out.packets;
      return out;
    },
    remove,
  };
}

/** Removes every impairment this process installed (for `process.on("exit")`). */
export function removeOwnImpairments() {
  const tables = tryRun("nft", ["list", "tables"]).stdout || "";
  for (const m of tables.matchAll(new RegExp(`^table (\\w+) (${TABLE_PREFIX}${process.pid}_\\w+)$`, "gm"))) tryRun("nft", ["delete", "table", m[1], m[2]]);
  const q = ourQdisc();
  if (q && q.owner === process.pid) {
    tryRun("tc", ["qdisc", "del", "dev", "lo", "root", "handle", `${QDISC_HANDLE}:`]);
    fs.rmSync(TC_OWNER_FILE, { force: true });
  }
}
