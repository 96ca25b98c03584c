//! Fuzzes the signaling frame decoder the way `http::ws` drives it.
//!
//! Input: only valid UTF-8. A WebSocket text frame is UTF-8 by RFC 6455 and axum/tungstenite hand the session a
//! `str`, so the decoder never sees anything else; a lossy conversion would spend runs on U+FFFD variants of the same
//! frame. Frames over `MAX_FRAME_BYTES` are closed with 1009 before decoding, so they are skipped too.
//!
//! Checks: no panic; a decoded request's id is the frame's `id`; the reply the server would send (a failed
//! `response` echoing the id, or an `error` event) serialises to JSON that parses back with the same id.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use switchboard::proto::signal::{MAX_FRAME_BYTES, ServerMessage, decode_client_message};

fuzz_target!(|data: &[u8]| {
    if data.len() > MAX_FRAME_BYTES {
        return;
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match decode_client_message(text) {
        Ok(msg) => {
            let frame: Value = serde_json::from_str(text).expect("decoded frame must be JSON");
            // Notices (`iceCandidate`) have no id even when the frame carries one: nothing is answered.
            if let Some(id) = msg.id() {
                assert_eq!(
                    Some(id),
                    frame.get("id"),
                    "request id differs from the frame's id"
                );
                check_reply(
                    ServerMessage::fail(id.clone(), "BadMessage", "fuzz"),
                    Some(id),
                );
            }
        }
        Err(e) => {
            let _ = e.to_string();
            match e.id {
                Some(id) => check_reply(
                    ServerMessage::fail(id.clone(), "BadMessage", e.message),
                    Some(&id),
                ),
                None => check_reply(ServerMessage::error("BadMessage", e.message), None),
            }
        }
    }
});

/// The reply serialises, parses back, and carries the request's id unchanged.
fn check_reply(reply: ServerMessage, id: Option<&Value>) {
    let json = reply.to_json();
    let back: Value =
        serde_json::from_str(&json).unwrap_or_else(|e| panic!("reply is not JSON ({e}): {json}"));
    match id {
        Some(id) => {
            assert_eq!(back["type"], "response", "{json}");
            assert_eq!(back["ok"], false, "{json}");
            assert_eq!(&back["id"], id, "request id did not round-trip: {json}");
            assert!(back["error"]["message"].is_string(), "{json}");
        }
        None => {
            assert_eq!(back["type"], "error", "{json}");
            assert!(back.get("id").is_none(), "{json}");
        }
    }
}
