//! The call hub as a state machine: 1:1 flows with a recording fake media plane and paused tokio time.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use switchboard::proto::signal::{ClientMessage, Target, TrackSpec};
use switchboard::service::calls::{
    Hub, HubCommand, HubConfig, MediaFailure, MediaFuture, MediaNotice, MediaParticipant,
    MediaPlane, MediaTrack, Outbound, OutboundTx,
};
use tokio::sync::mpsc;

const A: &str = "8:acs:00000000-0000-4000-8000-000000000001_00000000-0000-4000-8000-00000000000a";
const B: &str = "8:acs:00000000-0000-4000-8000-000000000001_00000000-0000-4000-8000-00000000000b";

#[derive(Default)]
struct FakeMedia {
    removed: Mutex<Vec<MediaParticipant>>,
}

impl MediaPlane for FakeMedia {
    fn offer(
        &self,
        _: String,
        p: MediaParticipant,
        _: String,
        _: String,
        _: Vec<TrackSpec>,
    ) -> MediaFuture<String> {
        Box::pin(async move { Ok(format!("answer-for-{p}")) })
    }
    fn answer(&self, _: MediaParticipant, _: String) -> MediaFuture<()> {
        Box::pin(async { Err(MediaFailure::NoPendingOffer) })
    }
    fn add_candidate(&self, _: MediaParticipant, _: String) {}
    fn set_preferred_size(&self, _: MediaParticipant, _: String, _: u32, _: u32) {}
    fn remove(&self, p: MediaParticipant) {
        self.removed.lock().unwrap().push(p);
    }
}

struct Conn {
    id: u64,
    rx: mpsc::Receiver<Outbound>,
}

fn register(hub: &Hub, identity: &str) -> Conn {
    let (tx, rx, _overflow) = OutboundTx::channel();
    let id = hub.next_conn_id();
    hub.send(HubCommand::Register {
        conn: id,
        identity: identity.into(),
        display_name: Some(identity.into()),
        out: tx,
    });
    Conn { id, rx }
}

async fn next(c: &mut Conn) -> Value {
    match tokio::time::timeout(Duration::from_secs(1), c.rx.recv())
        .await
        .expect("a message")
        .expect("open")
    {
        Outbound::Message(m) => serde_json::from_str(&m.to_json()).unwrap(),
        Outbound::Close { code, reason } => json!({ "close": code, "reason": reason }),
    }
}

async fn until(c: &mut Conn, pred: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..20 {
        let v = next(c).await;
        if pred(&v) {
            return v;
        }
    }
    panic!("no matching message");
}

fn start_call(hub: &Hub, conn: &Conn, callee: &str) {
    hub.send(HubCommand::Client {
        conn: conn.id,
        msg: ClientMessage::StartCall {
            id: json!(1),
            targets: vec![Target {
                communication_user_id: callee.into(),
                phone_number: None,
            }],
            video: false,
        },
    });
}

async fn call_id(c: &mut Conn) -> String {
    let r = until(c, |v| v["type"] == "response").await;
    r["result"]["callId"].as_str().unwrap().to_string()
}

#[tokio::test(start_paused = true)]
async fn ring_timeout_ends_with_408_after_60s() {
    let media = Arc::new(FakeMedia::default());
    let hub = Hub::spawn(HubConfig::default(), media.clone());
    let mut a = register(&hub, A);
    let mut b = register(&hub, B);
    start_call(&hub, &a, B);
    let id = call_id(&mut a).await;
    until(&mut a, |v| v["state"] == "Ringing").await;
    until(&mut b, |v| v["type"] == "incomingCall").await;
    tokio::time::sleep(Duration::from_secs(59)).await;
    assert!(a.rx.try_recv().is_err(), "nothing before the ring timeout");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let d = until(&mut a, |v| v["state"] == "Disconnected").await;
    assert_eq!(
        (d["callId"].as_str(), d["endReason"]["code"].as_u64()),
        (Some(id.as_str()), Some(408))
    );
    let e = until(&mut b, |v| v["type"] == "incomingCallEnded").await;
    assert_eq!(e["endReason"]["code"], 408);
    assert_eq!(
        media.removed.lock().unwrap().len(),
        1,
        "the caller's media participant is freed"
    );
}

#[tokio::test(start_paused = true)]
async fn answered_call_does_not_time_out() {
    let hub = Hub::spawn(
        HubConfig {
            ring_timeout: Duration::from_secs(5),
        },
        Arc::new(FakeMedia::default()),
    );
    let mut a = register(&hub, A);
    let mut b = register(&hub, B);
    start_call(&hub, &a, B);
    let id = call_id(&mut a).await;
    until(&mut b, |v| v["type"] == "incomingCall").await;
    hub.send(HubCommand::Client {
        conn: b.id,
        msg: ClientMessage::Accept {
            id: json!(2),
            call_id: id.clone(),
        },
    });
    until(&mut a, |v| v["state"] == "Connected").await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    hub.send(HubCommand::Client {
        conn: a.id,
        msg: ClientMessage::Offer {
            id: json!(3),
            call_id: id.clone(),
            sdp: "v=0".into(),
            tracks: vec![],
        },
    });
    let r = until(&mut a, |v| v["type"] == "response" && v["id"] == 3).await;
    assert_eq!(
        r["result"]["type"], "answer",
        "call still alive after the ring timeout: {r}"
    );
}

#[tokio::test(start_paused = true)]
async fn cancel_reject_and_media_loss() {
    let media = Arc::new(FakeMedia::default());
    let hub = Hub::spawn(HubConfig::default(), media.clone());
    let mut a = register(&hub, A);
    let mut b = register(&hub, B);

    start_call(&hub, &a, B);
    let id = call_id(&mut a).await;
    until(&mut b, |v| v["type"] == "incomingCall").await;
    hub.send(HubCommand::Client {
        conn: a.id,
        msg: ClientMessage::HangUp {
            id: json!(9),
            call_id: id.clone(),
            for_everyone: false,
        },
    });
    assert_eq!(
        until(&mut a, |v| v["state"] == "Disconnected").await["endReason"]["code"],
        487
    );
    assert_eq!(
        until(&mut b, |v| v["type"] == "incomingCallEnded").await["endReason"]["code"],
        487
    );

    start_call(&hub, &a, B);
    let id = call_id(&mut a).await;
    until(&mut b, |v| v["type"] == "incomingCall").await;
    hub.send(HubCommand::Client {
        conn: b.id,
        msg: ClientMessage::Reject {
            id: json!(9),
            call_id: id.clone(),
        },
    });
    assert_eq!(
        until(&mut a, |v| v["state"] == "Disconnected").await["endReason"]["code"],
        603
    );

    start_call(&hub, &a, B);
    let id = call_id(&mut a).await;
    until(&mut b, |v| v["type"] == "incomingCall").await;
    hub.send(HubCommand::Client {
        conn: b.id,
        msg: ClientMessage::Accept {
            id: json!(2),
            call_id: id.clone(),
        },
    });
    until(&mut b, |v| v["state"] == "Connected").await;
    // Participants are numbered in order: calls 1 and 2 used 1 and 2; this call's caller is 3, callee 4.
    let before = media.removed.lock().unwrap().len();
    hub.send(HubCommand::Media(MediaNotice::Disconnected(
        3,
        "ICE timeout".into(),
    )));
    let d = until(&mut b, |v| v["state"] == "Disconnected").await;
    assert_eq!(d["endReason"]["subcode"], 5020, "{d}");
    assert_eq!(media.removed.lock().unwrap().len(), before + 2);
}

#[tokio::test]
async fn a_connection_that_stops_reading_is_marked_for_closing() {
    let (tx, _rx, overflow) = OutboundTx::channel();
    for _ in 0..switchboard::service::calls::OUTBOUND_QUEUE {
        tx.send(Outbound::Close {
            code: 1000,
            reason: String::new(),
        });
    }
    assert!(!overflow.is_cancelled());
    tx.send(Outbound::Close {
        code: 1000,
        reason: String::new(),
    });
    assert!(overflow.is_cancelled());
}

#[tokio::test(start_paused = true)]
async fn server_offer_waits_for_the_answer_to_the_clients_offer() {
    // The SFU may announce its own offer while the client's offer is still being answered: the client must get
    // the answer first, or it sees glare.
    let hub = Hub::spawn(HubConfig::default(), Arc::new(FakeMedia::default()));
    let mut a = register(&hub, A);
    let group = "6f0d2a4e-8b1c-4f6a-9d3e-2c1b0a9f8e7d";
    hub.send(HubCommand::Client {
        conn: a.id,
        msg: ClientMessage::Join {
            id: json!(1),
            group_id: group.into(),
            video: true,
        },
    });
    let r = until(&mut a, |v| v["type"] == "response").await;
    let call_id = r["result"]["callId"].as_str().unwrap().to_string();
    hub.send(HubCommand::Client {
        conn: a.id,
        msg: ClientMessage::Offer {
            id: json!(2),
            call_id: call_id.clone(),
            sdp: "v=0".into(),
            tracks: vec![],
        },
    });
    hub.send(HubCommand::Media(MediaNotice::Offer {
        participant: 1,
        sdp: "server-offer".into(),
        tracks: vec![MediaTrack {
            mid: "2".into(),
            publisher: 1,
            source: "audio".into(),
        }],
    }));
    let first = until(&mut a, |v| v["type"] == "response" || v["type"] == "offer").await;
    assert_eq!(
        first["type"], "response",
        "answer before the server offer: {first}"
    );
    let second = until(&mut a, |v| v["type"] == "offer").await;
    assert_eq!(second["sdp"], "server-offer");
    assert_eq!(second["tracks"][0]["communicationUserId"], A);
}

#[tokio::test(start_paused = true)]
async fn group_join_leave_and_end_for_everyone() {
    let media = Arc::new(FakeMedia::default());
    let hub = Hub::spawn(HubConfig::default(), media.clone());
    let group = "6f0d2a4e-8b1c-4f6a-9d3e-2c1b0a9f8e7d";
    let c = "8:acs:00000000-0000-4000-8000-000000000001_00000000-0000-4000-8000-00000000000c";
    let mut conns = Vec::new();
    for who in [A, B, c] {
        let mut x = register(&hub, who);
        hub.send(HubCommand::Client {
            conn: x.id,
            msg: ClientMessage::Join {
                id: json!(1),
                group_id: group.to_uppercase(),
                video: true,
            },
        });
        let r = until(&mut x, |v| v["type"] == "response").await;
        assert_eq!(r["ok"], true, "{r}");
        conns.push((
            x,
            r["result"]["callId"].as_str().unwrap().to_string(),
            r["result"]["participants"].as_array().unwrap().len(),
        ));
    }
    let call_id = conns[0].1.clone();
    assert!(
        conns.iter().all(|(_, id, _)| *id == call_id),
        "one call per group id, whatever the UUID's case"
    );
    assert_eq!(conns.iter().map(|c| c.2).collect::<Vec<_>>(), [0, 1, 2]);
    // B leaves: A and C see it removed.
    let b_id = conns[1].0.id;
    hub.send(HubCommand::Client {
        conn: b_id,
        msg: ClientMessage::HangUp {
            id: json!(5),
            call_id: call_id.clone(),
            for_everyone: false,
        },
    });
    for i in [0, 2] {
        let p = until(&mut conns[i].0, |v| {
            v["type"] == "participantsUpdated" && !v["removed"].as_array().unwrap().is_empty()
        })
        .await;
        assert_eq!(p["removed"][0]["communicationUserId"], B);
    }
    // C is not the organizer.
    let c_id = conns[2].0.id;
    hub.send(HubCommand::Client {
        conn: c_id,
        msg: ClientMessage::HangUp {
            id: json!(6),
            call_id: call_id.clone(),
            for_everyone: true,
        },
    });
    assert_eq!(
        until(&mut conns[2].0, |v| v["type"] == "response").await["error"]["code"],
        "Forbidden"
    );
    let a_id = conns[0].0.id;
    hub.send(HubCommand::Client {
        conn: a_id,
        msg: ClientMessage::HangUp {
            id: json!(7),
            call_id: call_id.clone(),
            for_everyone: true,
        },
    });
    for i in [0, 2] {
        let d = until(&mut conns[i].0, |v| v["state"] == "Disconnected").await;
        assert_eq!(
            (
                d["endReason"]["code"].as_u64(),
                d["endReason"]["subcode"].as_u64()
            ),
            (Some(0), Some(5001))
        );
    }
    assert_eq!(
        media.removed.lock().unwrap().len(),
        3,
        "every media participant freed"
    );
    // The group id can be used again: a new call.
    hub.send(HubCommand::Client {
        conn: a_id,
        msg: ClientMessage::Join {
            id: json!(8),
            group_id: group.into(),
            video: false,
        },
    });
    let r = until(&mut conns[0].0, |v| v["type"] == "response" && v["id"] == 8).await;
    assert_ne!(r["result"]["callId"].as_str().unwrap(), call_id);
}
