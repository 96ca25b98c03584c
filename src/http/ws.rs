//! WebSocket sessions at `/calling/v1/ws` (docs/protocol.md): authentication, heartbeats, token expiry, and the
//! bridge between one socket and the call hub.

use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use serde_json::json;
use tokio::time::{Instant, sleep_until};

use super::AppState;
use crate::proto::signal::{ClientMessage, MAX_FRAME_BYTES, ServerMessage, decode_client_message};
use crate::service::calls::{HubCommand, Outbound, OutboundTx};
use crate::service::unix_now;

/// Time allowed for the `auth` frame.
pub const AUTH_TIMEOUT: Duration = Duration::from_secs(10);
/// Server ping interval (also announced to clients as `heartbeatIntervalMs`).
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(15);
/// A connection silent this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(45);
/// A client that does not take a frame within this time is disconnected.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// Close code for authentication failures.
pub const CLOSE_AUTH: u16 = 4401;

/// `GET /calling/v1/ws`: upgrades to a signaling session.
pub async fn upgrade(ws: WebSocketUpgrade, State(state): State<AppState>) -> Response {
    // Frames up to 1 MiB are read so that anything over 64 KiB gets a proper 1009 close rather than a reset.
    // A small read buffer: most connections sit idle (the default 128 KiB each made an idle connection
    // cost ~136 KiB of RSS); larger frames are read in several chunks.
    ws.max_message_size(1 << 20)
        .max_frame_size(1 << 20)
        .read_buffer_size(4096)
        .on_upgrade(move |socket| session(socket, state))
}

async fn close(socket: &mut WebSocket, code: u16, reason: &str) {
    // Close reasons are limited to 123 bytes by RFC 6455 §5.5.
    let mut reason = reason.to_string();
    while reason.len() > 123 {
        reason.pop();
    }
    let frame = Message::Close(Some(CloseFrame {
        code,
        reason: Utf8Bytes::from(reason),
    }));
    let _ = tokio::time::timeout(SEND_TIMEOUT, socket.send(frame)).await;
}

/// Sends a frame; false when the socket failed or the client did not take it within [`SEND_TIMEOUT`].
async fn send(socket: &mut WebSocket, msg: &ServerMessage) -> bool {
    let frame = Message::Text(Utf8Bytes::from(msg.to_json()));
    matches!(
        tokio::time::timeout(SEND_TIMEOUT, socket.send(frame)).await,
        Ok(Ok(()))
    )
}

/// Close code and reason for a read error: oversized frames get 1009, invalid UTF-8 1007 (RFC 6455 §7.4.1).
fn read_error_close(e: &axum::Error) -> Option<(u16, &'static str)> {
    let text = e.to_string();
    if text.contains("Space limit exceeded")
        || text.contains("too long")
        || text.contains("too big")
    {
        Some((1009, "frame larger than 64 KiB"))
    } else if text.contains("UTF-8") || text.contains("utf-8") || text.contains("Utf8") {
        Some((1007, "text frame is not valid UTF-8"))
    } else {
        None
    }
}

struct Authed {
    identity: String,
    display_name: Option<String>,
    expires_at: i64,
}

/// Reads and checks the `auth` frame; on failure closes the socket and returns None.
async fn authenticate(socket: &mut WebSocket, state: &AppState, conn: u64) -> Option<Authed> {
    let first = match tokio::time::timeout(AUTH_TIMEOUT, socket.recv()).await {
        Ok(Some(Ok(Message::Text(t)))) => t,
        Ok(Some(Ok(Message::Close(_)))) | Ok(None) => return None,
        Ok(Some(Err(e))) => {
            if let Some((code, reason)) = read_error_close(&e) {
                close(socket, code, reason).await;
            }
            return None;
        }
        Ok(Some(Ok(_))) => {
            close(socket, CLOSE_AUTH, "first message must be auth").await;
            return None;
        }
        Err(_) => {
            close(socket, CLOSE_AUTH, "no auth message within 10 s").await;
            return None;
        }
    };
    if first.len() > MAX_FRAME_BYTES {
        close(socket, 1009, "frame larger than 64 KiB").await;
        return None;
    }
    let (id, token, display_name) = match decode_client_message(&first) {
        Ok(ClientMessage::Auth {
            id,
            token,
            display_name,
        }) => (id, token, display_name),
        Ok(_) => {
            close(socket, CLOSE_AUTH, "first message must be auth").await;
            return None;
        }
        Err(e) => {
            close(
                socket,
                CLOSE_AUTH,
                &format!("bad auth message: {}", e.message),
            )
            .await;
            return None;
        }
    };
    match state.identity.authenticate(&token, unix_now()).await {
        Ok(claims) => {
            let result = json!({
                "communicationUserId": claims.sub,
                "connectionId": conn.to_string(),
                "heartbeatIntervalMs": HEARTBEAT_INTERVAL.as_millis() as u64,
                "tokenExpiresOn": super::identity::iso8601(claims.exp),
            });
            if !send(socket, &ServerMessage::ok(id, result)).await {
                return None;
            }
            Some(Authed {
                identity: claims.sub,
                display_name,
                expires_at: claims.exp,
            })
        }
        Err(e) => {
            tracing::info!(reason = %e, "websocket authentication refused");
            metrics::counter!("switchboard_ws_auth_failures_total").increment(1);
            close(socket, CLOSE_AUTH, &e.to_string()).await;
            None
        }
    }
}

async fn session(mut socket: WebSocket, state: AppState) {
    let conn = state.hub.next_conn_id();
    let Some(authed) = authenticate(&mut socket, &state, conn).await else {
        return;
    };
    let (out_tx, mut out_rx, overflow) = OutboundTx::channel();
    state.hub.send(HubCommand::Register {
        conn,
        identity: authed.identity.clone(),
        display_name: authed.display_name.clone(),
        out: out_tx,
    });
    metrics::gauge!("switchboard_ws_connections").increment(1.0);
    tracing::debug!(conn, identity = %authed.identity, "signaling connection open");

    let expiry = Instant::now()
        + Duration::from_secs(authed.expires_at.saturating_sub(unix_now()).max(0) as u64);
    let mut heartbeat =
        tokio::time::interval_at(Instant::now() + HEARTBEAT_INTERVAL, HEARTBEAT_INTERVAL);
    let mut last_seen = Instant::now();
    loop {
        tokio::select! {
            frame = socket.recv() => {
                last_seen = Instant::now();
                match frame {
                    Some(Ok(Message::Text(text))) => {
                        if text.len() > MAX_FRAME_BYTES {
                            close(&mut socket, 1009, "frame larger than 64 KiB").await;
                            break;
                        }
                        match decode_client_message(&text) {
                            Ok(ClientMessage::Ping { id }) => {
                                if !send(&mut socket, &ServerMessage::ok(id, json!({ "pong": true }))).await { break; }
                            }
                            Ok(msg) => state.hub.send(HubCommand::Client { conn, msg }),
                            Err(e) => {
                                let reply = match e.id {
                                    Some(id) => ServerMessage::fail(id, "BadMessage", e.message),
                                    None => ServerMessage::error("BadMessage", e.message),
                                };
                                if !send(&mut socket, &reply).await { break; }
                            }
                        }
                    }
                    Some(Ok(Message::Binary(_))) => {
                        if !send(&mut socket, &ServerMessage::error("BadMessage", "binary frames are not supported; send JSON text")).await { break; }
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                    Some(Ok(Message::Close(_))) => {
                        // Echo the close (RFC 6455 §5.5.1) so the client sees its own code, not 1006.
                        // tungstenite queues the echo when it reads the close; flushing writes it.
                        let _ = futures_util::SinkExt::flush(&mut socket).await;
                        break;
                    }
                    None => break,
                    Some(Err(e)) => {
                        if let Some((code, reason)) = read_error_close(&e) {
                            close(&mut socket, code, reason).await;
                        }
                        break;
                    }
                }
            }
            out = out_rx.recv() => match out {
                Some(Outbound::Message(m)) => { if !send(&mut socket, &m).await { break; } }
                Some(Outbound::Close { code, reason }) => { close(&mut socket, code, &reason).await; break; }
                None => break,
            },
            _ = heartbeat.tick() => {
                if last_seen.elapsed() > IDLE_TIMEOUT {
                    close(&mut socket, 1001, "heartbeat timeout").await;
                    break;
                }
                let ping = tokio::time::timeout(SEND_TIMEOUT, socket.send(Message::Ping(Default::default())));
                if !matches!(ping.await, Ok(Ok(()))) { break; }
            }
            _ = sleep_until(expiry) => {
                close(&mut socket, CLOSE_AUTH, "token expired").await;
                break;
            }
            _ = overflow.cancelled() => {
                close(&mut socket, 1008, "client is not reading its messages").await;
                break;
            }
            _ = state.shutdown.cancelled() => {
                close(&mut socket, 1001, "server shutting down").await;
                break;
            }
        }
    }
    state.hub.send(HubCommand::Unregister { conn });
    metrics::gauge!("switchboard_ws_connections").decrement(1.0);
    tracing::debug!(conn, "signaling connection closed");
}
