//! A signaling WebSocket client (docs/protocol.md): requests with ids, responses matched to them, events queued.

use std::collections::VecDeque;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The WebSocket stream type.
pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Why a signaling exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum SignalError {
    /// WebSocket error.
    #[error("websocket: {0}")]
    Ws(#[from] tokio_tungstenite::tungstenite::Error),
    /// The socket closed.
    #[error("websocket closed: {0}")]
    Closed(String),
    /// A frame that is not JSON.
    #[error("bad frame from the server: {0}")]
    BadFrame(String),
    /// A request failed.
    #[error("{request} refused: {error}")]
    Refused {
        /// The request type.
        request: String,
        /// The server's `error` object.
        error: Value,
    },
    /// No answer in time.
    #[error("timed out waiting for {0}")]
    Timeout(String),
}

/// One signaling connection.
pub struct SignalClient {
    /// The socket; media clients poll it directly in their select loop.
    pub ws: Ws,
    next_id: u64,
    /// Events (and responses nobody waited for) received while waiting for a response.
    pub queued: VecDeque<Value>,
}

/// Longest wait for a WebSocket handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(20);

/// Small buffers: an idle connection then costs this process little (tungstenite's default read buffer is 128 KiB).
fn small_buffers() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
}

impl SignalClient {
    /// Wraps an open WebSocket (an adapter's own handshake, e.g. Janus' `janus-protocol` subprotocol).
    pub fn from_ws(ws: Ws) -> SignalClient {
        SignalClient {
            ws,
            next_id: 0,
            queued: VecDeque::new(),
        }
    }

    /// The [`WebSocketConfig`] of every connection this tool opens.
    pub fn config() -> WebSocketConfig {
        small_buffers()
    }

    /// Opens the WebSocket at `url`.
    ///
    /// # Errors
    /// [`SignalError::Timeout`] if the handshake takes longer than [`HANDSHAKE_TIMEOUT`] (a server out of file
    /// descriptors leaves connections in its listen backlog unanswered), or the WebSocket error.
    pub async fn connect(url: &str) -> Result<SignalClient, SignalError> {
        let handshake =
            tokio_tungstenite::connect_async_with_config(url, Some(small_buffers()), true);
        let (ws, _) = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
            .await
            .map_err(|_| SignalError::Timeout("the WebSocket handshake".into()))??;
        Ok(SignalClient {
            ws,
            next_id: 0,
            queued: VecDeque::new(),
        })
    }

    /// Sends request `ty` with `fields`; returns its id.
    pub async fn send(&mut self, ty: &str, mut fields: Value) -> Result<u64, SignalError> {
        self.next_id += 1;
        fields["type"] = json!(ty);
        fields["id"] = json!(self.next_id);
        self.ws.send(Message::text(fields.to_string())).await?;
        Ok(self.next_id)
    }

    /// Next text frame as JSON.
    pub async fn next_frame(&mut self) -> Result<Value, SignalError> {
        loop {
            match self.ws.next().await {
                Some(Ok(Message::Text(t))) => {
                    return serde_json::from_str(t.as_str())
                        .map_err(|e| SignalError::BadFrame(e.to_string()));
                }
                Some(Ok(Message::Close(c))) => return Err(SignalError::Closed(format!("{c:?}"))),
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(e.into()),
                None => return Err(SignalError::Closed("end of stream".into())),
            }
        }
    }

    /// Sends a request and waits (at most `within`) for its response; returns `result`. Other frames are queued.
    pub async fn request(
        &mut self,
        ty: &str,
        fields: Value,
        within: Duration,
    ) -> Result<Value, SignalError> {
        let id = self.send(ty, fields).await?;
        let wait = async {
            loop {
                let v = self.next_frame().await?;
                if v["type"] == "response" && v["id"] == json!(id) {
                    if v["ok"] == json!(true) {
                        return Ok(v["result"].clone());
                    }
                    return Err(SignalError::Refused {
                        request: ty.to_string(),
                        error: v["error"].clone(),
                    });
                }
                self.queued.push_back(v);
            }
        };
        tokio::time::timeout(within, wait)
            .await
            .map_err(|_| SignalError::Timeout(format!("the response to {ty}")))?
    }

    /// Waits (at most `within`) for an event matching `pred`, looking at queued frames first.
    pub async fn event(
        &mut self,
        within: Duration,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Result<Value, SignalError> {
        if let Some(i) = self.queued.iter().position(&pred) {
            // The index was just found.
            return Ok(self.queued.remove(i).expect("queued frame"));
        }
        let wait = async {
            loop {
                let v = self.next_frame().await?;
                if pred(&v) {
                    return Ok(v);
                }
                self.queued.push_back(v);
                if self.queued.len() > 1000 {
                    self.queued.pop_front();
                }
            }
        };
        tokio::time::timeout(within, wait)
            .await
            .map_err(|_| SignalError::Timeout(what.to_string()))?
    }

    /// Authenticates with `token`.
    pub async fn auth(&mut self, token: &str, name: &str) -> Result<Value, SignalError> {
        self.request(
            "auth",
            json!({ "token": token, "displayName": name }),
            Duration::from_secs(30),
        )
        .await
    }
}
