//! Adapter for Janus' VideoRoom plugin (Janus 1.1, `janus.plugin.videoroom`): the same simulated str0m clients and
//! the same stamped media as against Switchboard, signaled through Janus' WebSocket API instead, so the two servers
//! can be loaded identically and compared (`loadtest/compare-janus.sh`).
//!
//! Janus separates publishing from receiving: a publisher is one PeerConnection (`join` as `publisher` with a fixed
//! feed id, then `publish` with str0m's offer), and receiving is another (`join` as `subscriber` to a list of feeds,
//! answer Janus' offer, `start`). A client that publishes and receives (the `audio-room` publishers hear each other,
//! as in a Switchboard group call) runs both peers; their counters and results are merged, so every report field
//! means what it means against Switchboard. Subscribers join once every publisher has published (retrying while
//! Janus still answers "No such feed" for a publisher whose PeerConnection is not up yet).
//!
//! Janus' ICE agent (libnice) does not gather on loopback (see `../shared/tools/README.md`), so against Janus the
//! clients bind the host's primary IPv4 address (`--janus-bind`, default: the source address of the default route)
//! instead of 127.0.0.1: still only this machine. Sessions are kept alive with `keepalive` every 15 s and destroyed
//! when a client stops.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures_util::SinkExt;
use serde_json::{Value, json};
use str0m::change::{SdpAnswer, SdpOffer};
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use crate::media_client::{self, ClientResult, ClientSpec, Counters, Peer, RunClock};
use crate::signal::{HANDSHAKE_TIMEOUT, SignalClient};

/// Longest wait for one Janus request's answer (plugin requests answer asynchronously, after an `ack`).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Interval of session keepalives (Janus' default `session_timeout` is 60 s).
const KEEPALIVE_EVERY: Duration = Duration::from_secs(15);
/// Longest wait of a subscriber for every publisher to publish.
const PUBLISHERS_TIMEOUT: Duration = Duration::from_secs(120);

/// Where and how to reach Janus, shared by every client of a run.
#[derive(Debug)]
pub struct JanusTarget {
    /// WebSocket URL, e.g. `ws://127.0.0.1:8188`.
    pub url: String,
    /// VideoRoom room id (it must exist: the recipe's config has room 1234).
    pub room: u64,
    /// Publisher `i` joins with feed id `feed_base + i + 1` (random per run, so feeds of an earlier run that Janus
    /// has not yet timed out cannot collide).
    pub feed_base: u64,
    /// Publishers in the run.
    pub publishers: usize,
    /// Publishers whose `publish` Janus has answered.
    pub published: AtomicUsize,
    /// Address the clients' UDP sockets bind.
    pub bind: IpAddr,
}

impl JanusTarget {
    /// Feed id of publisher `index`.
    fn feed(&self, index: u32) -> u64 {
        self.feed_base + u64::from(index) + 1
    }
}

/// The primary IPv4 address of this host: the source address of the default route (no packet is sent).
pub fn default_bind() -> IpAddr {
    let probe = || -> std::io::Result<IpAddr> {
        let s = std::net::UdpSocket::bind("0.0.0.0:0")?;
        s.connect("192.0.2.1:9")?;
        Ok(s.local_addr()?.ip())
    };
    probe().unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
}

/// One Janus session with one plugin handle, on the peer's WebSocket.
#[derive(Debug)]
pub struct JanusLink {
    session: u64,
    handle: u64,
    next_tx: u64,
    last_keepalive: Instant,
}

fn tx(link: &mut JanusLink) -> String {
    link.next_tx += 1;
    format!("t{}", link.next_tx)
}

/// Sends `msg` (with a new transaction) and waits for the first non-`ack` reply to it.
async fn call(signal: &mut SignalClient, link: &mut JanusLink, mut msg: Value) -> Result<Value> {
    let t = tx(link);
    msg["transaction"] = json!(t);
    if link.session != 0 {
        msg["session_id"] = json!(link.session);
    }
    let what = format!("Janus' answer to {}", msg["janus"]);
    signal
        .ws
        .send(Message::Text(msg.to_string().into()))
        .await?;
    let v = signal
        .event(REQUEST_TIMEOUT, &what, |v| {
            v["transaction"] == json!(t) && v["janus"] != "ack"
        })
        .await?;
    if v["janus"] == "error" {
        bail!("Janus error: {}", v["error"]);
    }
    if let Some(e) = v["plugindata"]["data"].get("error") {
        bail!("VideoRoom error: {e}");
    }
    Ok(v)
}

/// A plugin request on the link's handle, with an optional JSEP.
async fn message(
    signal: &mut SignalClient,
    link: &mut JanusLink,
    body: Value,
    jsep: Option<Value>,
) -> Result<Value> {
    let mut msg = json!({ "janus": "message", "handle_id": link.handle, "body": body });
    if let Some(j) = jsep {
        msg["jsep"] = j;
    }
    call(signal, link, msg).await
}

/// Opens a WebSocket with Janus' subprotocol, creates a session and attaches the VideoRoom plugin.
async fn open(url: &str) -> Result<(SignalClient, JanusLink)> {
    let mut req = url.into_client_request()?;
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static("janus-protocol"),
    );
    let handshake =
        tokio_tungstenite::connect_async_with_config(req, Some(SignalClient::config()), true);
    let (ws, _) = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
        .await
        .context("Janus WebSocket handshake timed out")??;
    let mut signal = SignalClient::from_ws(ws);
    let mut link = JanusLink {
        session: 0,
        handle: 0,
        next_tx: 0,
        last_keepalive: Instant::now(),
    };
    let created = call(&mut signal, &mut link, json!({ "janus": "create" })).await?;
    link.session = created["data"]["id"]
        .as_u64()
        .context("create without session id")?;
    let attached = call(
        &mut signal,
        &mut link,
        json!({ "janus": "attach", "plugin": "janus.plugin.videoroom" }),
    )
    .await?;
    link.handle = attached["data"]["id"]
        .as_u64()
        .context("attach without handle id")?;
    Ok((signal, link))
}

/// Sends a keepalive when one is due.
///
/// # Errors
/// The WebSocket's.
pub async fn keepalive(signal: &mut SignalClient, link: &mut JanusLink) -> Result<()> {
    if link.last_keepalive.elapsed() < KEEPALIVE_EVERY {
        return Ok(());
    }
    link.last_keepalive = Instant::now();
    let msg = json!({ "janus": "keepalive", "session_id": link.session, "transaction": tx(link) });
    signal
        .ws
        .send(Message::Text(msg.to_string().into()))
        .await?;
    Ok(())
}

/// Handles an unsolicited Janus message during the run.
///
/// # Errors
/// When Janus ended the PeerConnection or the session (`hangup`, `detached`, `timeout`).
pub fn on_message(v: &Value) -> Result<()> {
    match v["janus"].as_str().unwrap_or("") {
        "hangup" => bail!("Janus hung up: {}", v["reason"]),
        "detached" => bail!("Janus detached the plugin handle"),
        "timeout" => bail!("Janus timed the session out"),
        _ => Ok(()),
    }
}

/// Destroys the session (best effort, bounded).
pub async fn leave(signal: &mut SignalClient, mut link: JanusLink) {
    let msg =
        json!({ "janus": "destroy", "session_id": link.session, "transaction": tx(&mut link) });
    let _ = tokio::time::timeout(
        Duration::from_millis(500),
        signal.ws.send(Message::Text(msg.to_string().into())),
    )
    .await;
}

fn jsep_sdp(v: &Value, kind: &str) -> Result<String> {
    if v["jsep"]["type"] != kind {
        bail!("Janus sent no {kind}: {v}");
    }
    v["jsep"]["sdp"]
        .as_str()
        .map(str::to_string)
        .context("JSEP without sdp")
}

async fn bind(target: &JanusTarget) -> Result<UdpSocket> {
    Ok(UdpSocket::bind(SocketAddr::new(target.bind, 0)).await?)
}

/// The publishing peer of `spec`: join as publisher, publish str0m's offer, take Janus' answer.
async fn publisher(
    spec: ClientSpec,
    clock: Arc<RunClock>,
    counters: Arc<Counters>,
    target: &JanusTarget,
) -> Result<Peer> {
    let started = Instant::now();
    let (mut signal, mut link) = open(&target.url).await?;
    let feed = target.feed(spec.index);
    message(
        &mut signal,
        &mut link,
        json!({ "request": "join", "ptype": "publisher", "room": target.room, "id": feed,
                "display": format!("load-{}", spec.index) }),
        None,
    )
    .await?;
    let socket = bind(target).await?;
    let mut spec_pub = spec;
    spec_pub.expected.clear();
    let mut built = media_client::build(&spec_pub, socket.local_addr()?, Instant::now(), false)?;
    let (offer, pending) = built.offer.take().context("str0m made no offer")?;
    let answered = message(
        &mut signal,
        &mut link,
        json!({ "request": "publish" }),
        Some(json!({ "type": "offer", "sdp": offer.to_sdp_string(), "trickle": false })),
    )
    .await?;
    let answer = SdpAnswer::from_sdp_string(&jsep_sdp(&answered, "answer")?)?;
    built.rtc.sdp_api().accept_answer(pending, answer)?;
    target.published.fetch_add(1, Ordering::Relaxed);
    Peer::assemble(
        spec_pub,
        clock,
        counters,
        built,
        socket,
        signal,
        Some(link),
        started,
    )
}

/// The receiving peer of `spec`: once every publisher has published, join as subscriber to every feed it expects,
/// answer Janus' offer and `start`.
async fn subscriber(
    spec: ClientSpec,
    clock: Arc<RunClock>,
    counters: Arc<Counters>,
    target: &JanusTarget,
) -> Result<Peer> {
    let wait_until = Instant::now() + PUBLISHERS_TIMEOUT;
    while target.published.load(Ordering::Relaxed) < target.publishers {
        if Instant::now() > wait_until {
            bail!("not every publisher published within {PUBLISHERS_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let started = Instant::now();
    let (mut signal, mut link) = open(&target.url).await?;
    let mut feeds: Vec<u64> = spec.expected.iter().map(|(p, _)| target.feed(*p)).collect();
    feeds.dedup();
    let streams: Vec<Value> = feeds.iter().map(|f| json!({ "feed": f })).collect();
    // Janus refuses feeds whose PeerConnection is not up yet ("No such feed"): retry until they are.
    let attached = loop {
        let r = message(
            &mut signal,
            &mut link,
            json!({ "request": "join", "ptype": "subscriber", "room": target.room, "streams": streams }),
            None,
        )
        .await;
        match r {
            Err(e) if format!("{e}").contains("No such feed") && Instant::now() < wait_until => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            r => break r?,
        }
    };
    let offer = SdpOffer::from_sdp_string(&jsep_sdp(&attached, "offer")?)?;
    let socket = bind(target).await?;
    let mut spec_sub = spec;
    spec_sub.audio = false;
    spec_sub.video = None;
    let mut built = media_client::build(&spec_sub, socket.local_addr()?, Instant::now(), false)?;
    let answer = built.rtc.sdp_api().accept_offer(offer)?;
    message(
        &mut signal,
        &mut link,
        json!({ "request": "start" }),
        Some(json!({ "type": "answer", "sdp": answer.to_sdp_string(), "trickle": false })),
    )
    .await?;
    Peer::assemble(
        spec_sub,
        clock,
        counters,
        built,
        socket,
        signal,
        Some(link),
        started,
    )
}

/// Runs one client of the run against Janus: its publishing peer, its receiving peer, or both.
pub async fn run(
    spec: ClientSpec,
    clock: Arc<RunClock>,
    counters: Arc<Counters>,
    target: Arc<JanusTarget>,
    stop: watch::Receiver<bool>,
) -> ClientResult {
    let publishes = spec.audio || spec.video.is_some();
    let receives = !spec.expected.is_empty();
    let side = |publish: bool| {
        let (spec, clock, counters, target) = (
            spec.clone(),
            Arc::clone(&clock),
            Arc::clone(&counters),
            Arc::clone(&target),
        );
        let mut stop = stop.clone();
        async move {
            let joined = if publish {
                publisher(spec, clock, Arc::clone(&counters), &target).await
            } else {
                subscriber(spec, clock, Arc::clone(&counters), &target).await
            };
            match joined {
                Ok(peer) => peer.run_to_end(&mut stop).await,
                Err(e) => {
                    if publish {
                        // Subscribers would wait for it in vain.
                        target.published.fetch_add(1, Ordering::Relaxed);
                    }
                    counters.failed.store(true, Ordering::Relaxed);
                    let mut r = ClientResult::default();
                    r.error(format!("janus join: {e:#}"));
                    r
                }
            }
        }
    };
    match (publishes, receives) {
        (true, true) => {
            let (a, b) = tokio::join!(side(true), side(false));
            merge(a, b)
        }
        (true, false) => side(true).await,
        _ => side(false).await,
    }
}

/// One client's result from its two peers: what was sent from the publisher, what was received by the
/// subscriber, the later join.
fn merge(mut a: ClientResult, b: ClientResult) -> ClientResult {
    a.join_ms = match (a.join_ms, b.join_ms) {
        (Some(x), Some(y)) => Some(x.max(y)),
        _ => None,
    };
    a.latency_us.merge(&b.latency_us);
    a.send_lag_us.merge(&b.send_lag_us);
    for (k, v) in b.received {
        *a.received.entry(k).or_default() += v;
    }
    for (k, v) in b.sent {
        *a.sent.entry(k).or_default() += v;
    }
    a.send_drops += b.send_drops;
    a.unstamped += b.unstamped;
    a.error_count += b.error_count;
    a.errors.extend(b.errors);
    a
}
