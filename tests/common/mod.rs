//! Test support: a whole server in-process on ephemeral ports, signed REST calls, WebSocket clients.
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use switchboard::app::{Running, start};
use switchboard::config::Config;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const API: &str = "api-version=2023-10-01";

pub struct TestServer {
    pub running: Running,
    pub dir: PathBuf,
    pub key: String,
    pub base: String,
    pub http: reqwest::Client,
}

pub async fn server() -> TestServer {
    server_with(|_| {}).await
}

pub async fn server_with(tweak: impl FnOnce(&mut Config)) -> TestServer {
    let dir = std::env::temp_dir().join(format!("sb-test-{}", uuid_like()));
    let mut config = Config {
        data_dir: dir.clone(),
        https_port: 0,
        http_port: 0,
        media_port: 0,
        ..Config::default()
    };
    tweak(&mut config);
    let running = start(config).await.expect("server starts");
    let key = running
        .connection_string
        .split("accesskey=")
        .nth(1)
        .unwrap()
        .to_string();
    let base = format!("http://{}", running.http_addr);
    TestServer {
        running,
        dir,
        key,
        base,
        http: reqwest::Client::new(),
    }
}

fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

pub fn http_date(offset_secs: i64) -> String {
    let t = std::time::SystemTime::now();
    let t = if offset_secs >= 0 {
        t + Duration::from_secs(offset_secs as u64)
    } else {
        t - Duration::from_secs((-offset_secs) as u64)
    };
    httpdate::fmt_http_date(t)
}

impl TestServer {
    /// A REST call signed with `key` (the deployment's primary key unless given).
    pub async fn signed(
        &self,
        method: &str,
        path_and_query: &str,
        body: Option<Value>,
        key: Option<&str>,
    ) -> (u16, Value) {
        self.signed_raw(
            method,
            path_and_query,
            body.map(|b| b.to_string().into_bytes()).unwrap_or_default(),
            key,
            0,
        )
        .await
    }

    pub async fn signed_raw(
        &self,
        method: &str,
        path_and_query: &str,
        body: Vec<u8>,
        key: Option<&str>,
        date_offset: i64,
    ) -> (u16, Value) {
        let host = self.running.http_addr.to_string();
        let headers = switchboard::http::hmac::sign(
            method,
            path_and_query,
            &host,
            &body,
            key.unwrap_or(&self.key),
            &http_date(date_offset),
        );
        let mut req = self.http.request(
            method.parse().unwrap(),
            format!("{}{}", self.base, path_and_query),
        );
        for (k, v) in headers {
            req = req.header(k, v);
        }
        let resp = req
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (
            status,
            if text.is_empty() {
                Value::Null
            } else {
                serde_json::from_str(&text).unwrap_or(Value::String(text))
            },
        )
    }

    pub async fn create_identity(&self) -> String {
        let (s, v) = self
            .signed("POST", &format!("/identities?{API}"), None, None)
            .await;
        assert_eq!(s, 201, "{v}");
        v["identity"]["id"].as_str().unwrap().to_string()
    }

    pub async fn token_for(&self, id: &str, scopes: &[&str]) -> String {
        let enc = percent(id);
        let (s, v) = self
            .signed(
                "POST",
                &format!("/identities/{enc}/:issueAccessToken?{API}"),
                Some(json!({ "scopes": scopes })),
                None,
            )
            .await;
        assert_eq!(s, 200, "{v}");
        v["token"].as_str().unwrap().to_string()
    }

    /// A new identity with a voip token.
    pub async fn user(&self) -> (String, String) {
        let id = self.create_identity().await;
        let t = self.token_for(&id, &["voip"]).await;
        (id, t)
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/calling/v1/ws", self.running.http_addr)
    }
}

pub fn percent(id: &str) -> String {
    id.replace(':', "%3A")
}

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A signaling client with request ids and an event queue.
pub struct Client {
    pub ws: Ws,
    next_id: u64,
    pub events: Vec<Value>,
}

pub enum Next {
    Frame(Value),
    Closed(u16, String),
}

impl Client {
    pub async fn connect(url: &str) -> Client {
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("ws connects");
        Client {
            ws,
            next_id: 1,
            events: Vec::new(),
        }
    }

    /// Connects and authenticates; panics unless accepted.
    pub async fn authed(url: &str, token: &str, name: &str) -> Client {
        let mut c = Client::connect(url).await;
        let r = c
            .request("auth", json!({ "token": token, "displayName": name }))
            .await;
        assert_eq!(r["ok"], true, "auth refused: {r}");
        c
    }

    pub async fn send_json(&mut self, v: Value) {
        self.ws
            .send(Message::Text(v.to_string().into()))
            .await
            .unwrap();
    }

    pub async fn next(&mut self, within: Duration) -> Option<Next> {
        loop {
            let m = tokio::time::timeout(within, self.ws.next()).await.ok()?;
            match m {
                Some(Ok(Message::Text(t))) => {
                    return Some(Next::Frame(serde_json::from_str(&t).unwrap()));
                }
                Some(Ok(Message::Close(Some(f)))) => {
                    return Some(Next::Closed(u16::from(f.code), f.reason.to_string()));
                }
                Some(Ok(Message::Close(None))) | None => {
                    return Some(Next::Closed(CloseCode::Status.into(), String::new()));
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Some(Next::Closed(0, e.to_string())),
            }
        }
    }

    /// Sends a request and waits for its response (events meanwhile are queued).
    pub async fn request(&mut self, ty: &str, mut fields: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        fields["type"] = json!(ty);
        fields["id"] = json!(id);
        self.send_json(fields).await;
        loop {
            match self.next(Duration::from_secs(10)).await {
                Some(Next::Frame(v)) if v["type"] == "response" && v["id"] == json!(id) => {
                    return v;
                }
                Some(Next::Frame(v)) => self.events.push(v),
                Some(Next::Closed(code, reason)) => {
                    return json!({ "closed": code, "reason": reason });
                }
                None => panic!("no response to {ty}"),
            }
        }
    }

    /// Waits for an event matching `pred` (checking queued events first).
    pub async fn event(&mut self, within: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        if let Some(i) = self.events.iter().position(&pred) {
            return self.events.remove(i);
        }
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Some(Next::Frame(v)) if pred(&v) => return v,
                Some(Next::Frame(v)) => self.events.push(v),
                Some(Next::Closed(code, reason)) => panic!(
                    "closed {code} {reason} while waiting; queued {:?}",
                    self.events
                ),
                None => panic!("timed out waiting for event; queued {:?}", self.events),
            }
        }
    }

    /// Waits for the server to close the socket; returns (code, reason).
    pub async fn closed(&mut self, within: Duration) -> (u16, String) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Some(Next::Closed(c, r)) => return (c, r),
                Some(Next::Frame(v)) => self.events.push(v),
                None => panic!("socket not closed in time"),
            }
        }
    }
}

pub fn state_event<'a>(call_id: &'a str, state: &'a str) -> impl Fn(&Value) -> bool + 'a {
    move |v| v["type"] == "callStateChanged" && v["callId"] == call_id && v["state"] == state
}
