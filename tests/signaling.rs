//! Signaling over a real WebSocket: authentication (token attacks C039, C040, C042), bad input, and 1:1 call flows
//! with ACS end-reason codes.

mod common;

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::{API, Client, Next, percent, server, server_with, state_event};
use serde_json::json;
use switchboard::proto::token::Claims;
use switchboard::service::unix_now;

const T: Duration = Duration::from_secs(10);

async fn refused(s: &common::TestServer, token: &str) -> (u16, String) {
    let mut c = Client::connect(&s.ws_url()).await;
    c.send_json(json!({"type": "auth", "id": 1, "token": token}))
        .await;
    c.closed(T).await
}

fn claims(s: &common::TestServer, sub: &str, iat: i64, exp: i64, scp: &[&str]) -> Claims {
    Claims {
        sub: sub.into(),
        scp: scp.iter().map(|x| x.to_string()).collect(),
        resource_id: s.running.identity.resource_id().into(),
        iat,
        exp,
    }
}

#[tokio::test]
async fn valid_token_is_accepted() {
    let s = server().await;
    let (id, token) = s.user().await;
    let mut c = Client::connect(&s.ws_url()).await;
    let r = c
        .request("auth", json!({"token": token, "displayName": "Alice"}))
        .await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["result"]["communicationUserId"], id.as_str());
    let r = c.request("ping", json!({})).await;
    assert_eq!(r["result"]["pong"], true);
    s.running.shutdown().await;
}

#[tokio::test]
async fn c039_alg_none_is_refused() {
    let s = server().await;
    let (_, token) = s.user().await;
    let payload = token.split('.').nth(1).unwrap();
    let kid = serde_json::from_slice::<serde_json::Value>(
        &URL_SAFE_NO_PAD
            .decode(token.split('.').next().unwrap())
            .unwrap(),
    )
    .unwrap()["kid"]
        .clone();
    for alg in ["none", "None", "NONE"] {
        let header =
            URL_SAFE_NO_PAD.encode(json!({"alg": alg, "typ": "JWT", "kid": kid}).to_string());
        let (code, reason) = refused(&s, &format!("{header}.{payload}.")).await;
        assert_eq!(code, 4401, "alg {alg}: {reason}");
        assert!(reason.contains("algorithm"), "{reason}");
    }
    // Key confusion: HS256 signed with the public key's coordinates as the secret.
    let header =
        URL_SAFE_NO_PAD.encode(json!({"alg": "HS256", "typ": "JWT", "kid": kid}).to_string());
    let (code, _) = refused(&s, &format!("{header}.{payload}.c2lnbmF0dXJl")).await;
    assert_eq!(code, 4401);
    // The corpus' own tokens (another issuer, HS256 and RS256) are refused too.
    let corpus: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/auth-tokens.json"
        ))
        .unwrap(),
    )
    .unwrap();
    for (name, t) in corpus["tokens"].as_object().unwrap() {
        let (code, _) = refused(&s, t.as_str().unwrap()).await;
        assert_eq!(code, 4401, "{name}");
    }
    s.running.shutdown().await;
}

#[tokio::test]
async fn c040_tampered_payload_is_refused() {
    let s = server().await;
    let (_, token) = s.user().await;
    let (victim, _) = s.user().await;
    let parts: Vec<&str> = token.split('.').collect();
    let mut c: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    c["sub"] = json!(victim);
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(c.to_string()),
        parts[2]
    );
    let (code, reason) = refused(&s, &forged).await;
    assert_eq!(code, 4401);
    assert!(
        !reason.contains(&victim),
        "the reason must not echo claims: {reason}"
    );
    s.running.shutdown().await;
}

#[tokio::test]
async fn c042_expired_token_is_refused_and_expiry_closes_open_socket() {
    let s = server().await;
    let id = s.create_identity().await;
    let now = unix_now();
    let expired = s
        .running
        .identity
        .sign_claims(&claims(&s, &id, now - 7200, now - 3600, &["voip"]))
        .unwrap();
    let (code, reason) = refused(&s, &expired).await;
    assert_eq!((code, reason.as_str()), (4401, "token expired"));

    let short = s
        .running
        .identity
        .sign_claims(&claims(&s, &id, now, now + 2, &["voip"]))
        .unwrap();
    let mut c = Client::authed(&s.ws_url(), &short, "Shortlived").await;
    let (code, reason) = c.closed(Duration::from_secs(8)).await;
    assert_eq!((code, reason.as_str()), (4401, "token expired"));
    s.running.shutdown().await;
}

#[tokio::test]
async fn revoked_deleted_and_scopeless_tokens_are_refused() {
    let s = server().await;
    let (id, token) = s.user().await;
    let mut live = Client::authed(&s.ws_url(), &token, "A").await;
    let (st, _) = s
        .signed(
            "POST",
            &format!("/identities/{}/:revokeAccessTokens?{API}", percent(&id)),
            None,
            None,
        )
        .await;
    assert_eq!(st, 204);
    assert_eq!(live.closed(T).await, (4401, "token revoked".to_string()));
    assert_eq!(
        refused(&s, &token).await,
        (4401, "token revoked".to_string())
    );
    // A token issued after the revocation works, even within the same second.
    let fresh = s.token_for(&id, &["voip"]).await;
    Client::authed(&s.ws_url(), &fresh, "A").await;

    let chat_only = s.token_for(&id, &["chat"]).await;
    assert_eq!(refused(&s, &chat_only).await.0, 4401);
    let join_only = s.token_for(&id, &["voip.join"]).await;
    Client::authed(&s.ws_url(), &join_only, "A").await;

    let (st, _) = s
        .signed(
            "DELETE",
            &format!("/identities/{}?{API}", percent(&id)),
            None,
            None,
        )
        .await;
    assert_eq!(st, 204);
    assert_eq!(
        refused(&s, &fresh).await,
        (4401, "identity deleted".to_string())
    );
    assert_eq!(refused(&s, "garbage").await.0, 4401);
    s.running.shutdown().await;
}

#[tokio::test]
async fn first_frame_must_be_auth() {
    let s = server().await;
    let mut c = Client::connect(&s.ws_url()).await;
    c.send_json(json!({"type": "ping", "id": 1})).await;
    assert_eq!(c.closed(T).await.0, 4401);
    s.running.shutdown().await;
}

#[tokio::test]
async fn bad_frames_get_errors_and_the_connection_stays() {
    let s = server().await;
    let (_, token) = s.user().await;
    let mut c = Client::authed(&s.ws_url(), &token, "A").await;
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    c.ws.send(Message::Text("{not json".into())).await.unwrap();
    let Some(Next::Frame(v)) = c.next(T).await else {
        panic!("no error event")
    };
    assert_eq!(v["type"], "error");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not valid JSON"),
        "{v}"
    );
    let r = c.request("dial", json!({})).await;
    assert_eq!(r["ok"], false);
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("unknown message type \"dial\""),
        "{r}"
    );
    let r = c.request("accept", json!({})).await;
    assert!(
        r["error"]["message"].as_str().unwrap().contains("callId"),
        "{r}"
    );
    let r = c.request("accept", json!({"callId": "nope"})).await;
    assert_eq!(r["error"]["code"], "CallNotFound");
    c.ws.send(Message::Binary(vec![1, 2, 3].into()))
        .await
        .unwrap();
    let Some(Next::Frame(v)) = c.next(T).await else {
        panic!("no error event")
    };
    assert_eq!(v["type"], "error");
    let r = c.request("ping", json!({})).await;
    assert_eq!(r["ok"], true, "connection must survive bad frames");
    // Over 64 KiB: 1009.
    c.ws.send(Message::Text(
        format!(
            "{{\"type\":\"ping\",\"id\":1,\"pad\":\"{}\"}}",
            "x".repeat(70 * 1024)
        )
        .into(),
    ))
    .await
    .unwrap();
    assert_eq!(c.closed(T).await.0, 1009);
    s.running.shutdown().await;
}

#[tokio::test]
async fn call_accept_and_hang_up_ends_with_code_0() {
    let s = server().await;
    let (alice_id, at) = s.user().await;
    let (bob_id, bt) = s.user().await;
    let mut alice = Client::authed(&s.ws_url(), &at, "Alice").await;
    let mut bob = Client::authed(&s.ws_url(), &bt, "Bob").await;
    let mut bob2 = Client::authed(&s.ws_url(), &bt, "Bob").await;
    let r = alice
        .request(
            "startCall",
            json!({"targets": [{"communicationUserId": bob_id}], "video": true}),
        )
        .await;
    let call_id = r["result"]["callId"].as_str().unwrap().to_string();
    alice.event(T, state_event(&call_id, "Ringing")).await;
    let inc = bob.event(T, |v| v["type"] == "incomingCall").await;
    assert_eq!(inc["caller"]["communicationUserId"], alice_id.as_str());
    assert_eq!(inc["callerDisplayName"], "Alice");
    bob2.event(T, |v| v["type"] == "incomingCall").await;
    let r = bob.request("accept", json!({"callId": call_id})).await;
    assert_eq!(r["ok"], true, "{r}");
    let ended = bob2.event(T, |v| v["type"] == "incomingCallEnded").await;
    assert_eq!(ended["endReason"]["subcode"], 5003);
    alice.event(T, state_event(&call_id, "Connected")).await;
    bob.event(T, state_event(&call_id, "Connected")).await;
    let p = alice.event(T, |v| v["type"] == "participantsUpdated").await;
    assert_eq!(p["added"][0]["communicationUserId"], bob_id.as_str());
    assert_eq!(p["added"][0]["displayName"], "Bob");
    let r = bob2.request("accept", json!({"callId": call_id})).await;
    assert_eq!(r["error"]["code"], "InvalidState");

    let r = bob.request("mute", json!({"callId": call_id})).await;
    assert_eq!(r["ok"], true);
    let p = alice
        .event(T, |v| {
            v["type"] == "participantsUpdated" && !v["updated"].as_array().unwrap().is_empty()
        })
        .await;
    assert_eq!(p["updated"][0]["isMuted"], true);

    let r = alice.request("hangUp", json!({"callId": call_id})).await;
    assert_eq!(r["ok"], true);
    let d = bob.event(T, state_event(&call_id, "Disconnected")).await;
    assert_eq!(d["endReason"]["code"], 0);
    let d = alice.event(T, state_event(&call_id, "Disconnected")).await;
    assert_eq!(d["endReason"]["code"], 0);
    s.running.shutdown().await;
}

#[tokio::test]
async fn reject_cancel_offline_and_dropped_sockets() {
    let s = server().await;
    let (_, at) = s.user().await;
    let (bob_id, bt) = s.user().await;
    let mut alice = Client::authed(&s.ws_url(), &at, "Alice").await;

    // Offline: 480.
    let r = alice
        .request(
            "startCall",
            json!({"targets": [{"communicationUserId": bob_id}]}),
        )
        .await;
    let c0 = r["result"]["callId"].as_str().unwrap().to_string();
    let d = alice.event(T, state_event(&c0, "Disconnected")).await;
    assert_eq!(d["endReason"]["code"], 480);

    // Rejected: 603.
    let mut bob = Client::authed(&s.ws_url(), &bt, "Bob").await;
    let r = alice
        .request(
            "startCall",
            json!({"targets": [{"communicationUserId": bob_id}]}),
        )
        .await;
    let c1 = r["result"]["callId"].as_str().unwrap().to_string();
    bob.event(T, |v| v["type"] == "incomingCall").await;
    assert_eq!(
        bob.request("reject", json!({"callId": c1})).await["ok"],
        true
    );
    let d = alice.event(T, state_event(&c1, "Disconnected")).await;
    assert_eq!(d["endReason"]["code"], 603);

    // Caller hangs up before answer: 487 on both sides.
    let r = alice
        .request(
            "startCall",
            json!({"targets": [{"communicationUserId": bob_id}]}),
        )
        .await;
    let c2 = r["result"]["callId"].as_str().unwrap().to_string();
    bob.event(T, |v| {
        v["type"] == "incomingCall" && v["callId"] == c2.as_str()
    })
    .await;
    assert_eq!(
        alice.request("hangUp", json!({"callId": c2})).await["ok"],
        true
    );
    let d = alice.event(T, state_event(&c2, "Disconnected")).await;
    assert_eq!(d["endReason"]["code"], 487);
    let e = bob
        .event(T, |v| {
            v["type"] == "incomingCallEnded" && v["callId"] == c2.as_str()
        })
        .await;
    assert_eq!(e["endReason"]["code"], 487);

    // Callee's only socket drops while ringing: 480 for the caller.
    let r = alice
        .request(
            "startCall",
            json!({"targets": [{"communicationUserId": bob_id}]}),
        )
        .await;
    let c3 = r["result"]["callId"].as_str().unwrap().to_string();
    bob.event(T, |v| {
        v["type"] == "incomingCall" && v["callId"] == c3.as_str()
    })
    .await;
    drop(bob);
    let d = alice.event(T, state_event(&c3, "Disconnected")).await;
    assert_eq!(d["endReason"]["code"], 480);

    // Connected call, callee's socket drops: the caller's call ends with a stated reason.
    let mut bob = Client::authed(&s.ws_url(), &bt, "Bob").await;
    let r = alice
        .request(
            "startCall",
            json!({"targets": [{"communicationUserId": bob_id}]}),
        )
        .await;
    let c4 = r["result"]["callId"].as_str().unwrap().to_string();
    bob.event(T, |v| v["type"] == "incomingCall").await;
    bob.request("accept", json!({"callId": c4})).await;
    alice.event(T, state_event(&c4, "Connected")).await;
    drop(bob);
    let d = alice.event(T, state_event(&c4, "Disconnected")).await;
    assert_eq!(
        (
            d["endReason"]["code"].as_u64(),
            d["endReason"]["subcode"].as_u64()
        ),
        (Some(0), Some(5010))
    );
    assert!(
        d["endReason"]["message"]
            .as_str()
            .unwrap()
            .contains("connection was lost")
    );
    s.running.shutdown().await;
}

#[tokio::test]
async fn unanswered_call_ends_with_408() {
    let s = server_with(|c| c.ring_timeout = 1).await;
    let (_, at) = s.user().await;
    let (bob_id, bt) = s.user().await;
    let mut alice = Client::authed(&s.ws_url(), &at, "Alice").await;
    let mut bob = Client::authed(&s.ws_url(), &bt, "Bob").await;
    let r = alice
        .request(
            "startCall",
            json!({"targets": [{"communicationUserId": bob_id}]}),
        )
        .await;
    let c = r["result"]["callId"].as_str().unwrap().to_string();
    let d = alice
        .event(Duration::from_secs(5), state_event(&c, "Disconnected"))
        .await;
    assert_eq!(d["endReason"]["code"], 408);
    let e = bob.event(T, |v| v["type"] == "incomingCallEnded").await;
    assert_eq!(e["endReason"]["code"], 408);
    s.running.shutdown().await;
}

#[tokio::test]
async fn start_call_validates_targets() {
    let s = server().await;
    let (alice_id, at) = s.user().await;
    let mut alice = Client::authed(&s.ws_url(), &at, "Alice").await;
    let r = alice.request("startCall", json!({"targets": []})).await;
    assert_eq!(r["error"]["code"], "BadTarget");
    let r = alice
        .request(
            "startCall",
            json!({"targets": [{"communicationUserId": "4:+15550100"}]}),
        )
        .await;
    assert_eq!(r["error"]["code"], "BadTarget");
    let r = alice
        .request(
            "startCall",
            json!({"targets": [{"communicationUserId": alice_id}]}),
        )
        .await;
    assert_eq!(r["error"]["code"], "SelfCall");
    let r = alice
        .request("offer", json!({"callId": "x", "sdp": "v=0"}))
        .await;
    assert_eq!(r["error"]["code"], "CallNotFound");
    s.running.shutdown().await;
}

#[tokio::test]
async fn client_close_is_echoed_and_auth_names_the_connection() {
    let s = server().await;
    let (_, token) = s.user().await;
    let mut c = Client::connect(&s.ws_url()).await;
    let r = c.request("auth", json!({"token": token})).await;
    assert!(r["result"]["connectionId"].is_string(), "{r}");
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    c.ws.close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "dispose".into(),
    }))
    .await
    .unwrap();
    let (code, reason) = c.closed(T).await;
    assert_eq!(code, 1000, "{reason}");
    s.running.shutdown().await;
}

#[tokio::test]
async fn second_revocation_in_the_same_second_covers_tokens_issued_between() {
    let s = server().await;
    let (id, _) = s.user().await;
    let revoke = format!("/identities/{}/:revokeAccessTokens?{API}", percent(&id));
    assert_eq!(s.signed("POST", &revoke, None, None).await.0, 204);
    let between = s.token_for(&id, &["voip"]).await;
    assert_eq!(s.signed("POST", &revoke, None, None).await.0, 204);
    assert_eq!(
        refused(&s, &between).await,
        (4401, "token revoked".to_string())
    );
    s.running.shutdown().await;
}

#[tokio::test]
async fn invalid_utf8_closes_with_1007_and_limits_hold() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    let s = server().await;
    let (_, at) = s.user().await;
    let (bob_id, _) = s.user().await;
    let mut c = Client::authed(&s.ws_url(), &at, "A").await;
    // Targets must be well-formed ids; calls per connection are capped.
    for bad in ["8:acs:", "8:acs:not-a-uuid_x"] {
        let r = c
            .request(
                "startCall",
                json!({"targets": [{"communicationUserId": bad}]}),
            )
            .await;
        assert_eq!(r["error"]["code"], "BadTarget", "{bad}: {r}");
    }
    let mut bob = Client::authed(&s.ws_url(), &s.token_for(&bob_id, &["voip"]).await, "B").await;
    let mut codes = Vec::new();
    for _ in 0..6 {
        let r = c
            .request(
                "startCall",
                json!({"targets": [{"communicationUserId": bob_id}]}),
            )
            .await;
        codes.push(r["error"]["code"].as_str().unwrap_or("ok").to_string());
    }
    assert_eq!(
        codes,
        ["ok", "ok", "ok", "ok", "TooManyCalls", "TooManyCalls"]
    );
    let call_id = c
        .events
        .iter()
        .find(|v| v["type"] == "callStateChanged")
        .unwrap()["callId"]
        .as_str()
        .unwrap()
        .to_string();
    let r = c
        .request("offer", json!({"callId": call_id, "sdp": "hello"}))
        .await;
    assert_eq!(r["error"]["code"], "BadSdp");
    assert!(
        !r["error"]["message"].as_str().unwrap().contains("0x"),
        "no internals in errors: {r}"
    );
    bob.event(T, |v| v["type"] == "incomingCall").await;

    let frame = Frame::message(vec![0x7b, 0xff, 0xfe, 0x7d], OpCode::Data(Data::Text), true);
    c.ws.send(Message::Frame(frame)).await.unwrap();
    assert_eq!(c.closed(T).await.0, 1007);
    s.running.shutdown().await;
}
