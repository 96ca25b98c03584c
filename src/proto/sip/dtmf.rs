//! DTMF on the SIP leg: RFC 4733 telephone-event decoding and encoding, and SIP INFO bodies
//! (`application/dtmf-relay`, `application/dtmf`).
//!
//! One key press is one event: every packet of it carries the same RTP timestamp (RFC 4733 §2.5.1.1), the end
//! packet is sent three times (§2.5.1.4), and a press may be long with packets lost in between (case C024).
//! The decoder reports a digit once, when the event ends (end bit, a newer event, or inactivity), and matches late
//! packets of an event already reported to it by timestamp, compared in serial arithmetic (case C025).

use std::time::{Duration, Instant};

use super::rtp::ts_newer;

/// A telephone event (RFC 4733 §3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToneEvent {
    /// A DTMF key: `0`-`9`, `*`, `#`, `A`-`D`.
    Digit(char),
    /// Event 16, hook flash: surfaced, never a digit (case C020).
    Flash,
}

/// Maps an RFC 4733 event code to an event; `None` for codes above 16.
pub fn event_from_code(code: u8) -> Option<ToneEvent> {
    Some(match code {
        0..=9 => ToneEvent::Digit(char::from(b'0' + code)),
        10 => ToneEvent::Digit('*'),
        11 => ToneEvent::Digit('#'),
        12..=15 => ToneEvent::Digit(char::from(b'A' + code - 12)),
        16 => ToneEvent::Flash,
        _ => return None,
    })
}

/// Maps a DTMF character to its RFC 4733 event code.
pub fn code_from_digit(d: char) -> Option<u8> {
    Some(match d.to_ascii_uppercase() {
        '0'..='9' => d as u8 - b'0',
        '*' => 10,
        '#' => 11,
        'A'..='D' => d.to_ascii_uppercase() as u8 - b'A' + 12,
        _ => return None,
    })
}

/// A completed key press.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Detected {
    /// The event.
    pub event: ToneEvent,
    /// Its duration in timestamp units (8000 Hz: 800 = 100 ms).
    pub duration: u32,
    /// The RTP timestamp identifying the event.
    pub timestamp: u32,
}

/// One parsed telephone-event payload (RFC 4733 §2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventPayload {
    /// Event code.
    pub code: u8,
    /// End bit.
    pub end: bool,
    /// Volume, dBm0 below zero (0-63).
    pub volume: u8,
    /// Duration so far, timestamp units.
    pub duration: u16,
}

impl EventPayload {
    /// Parses the 4-byte payload; `None` when shorter.
    pub fn parse(p: &[u8]) -> Option<EventPayload> {
        let b = p.get(..4)?;
        Some(EventPayload {
            code: b[0],
            end: b[1] & 0x80 != 0,
            volume: b[1] & 0x3f,
            duration: u16::from_be_bytes([b[2], b[3]]),
        })
    }

    /// Serialises it.
    pub fn to_bytes(self) -> [u8; 4] {
        let d = self.duration.to_be_bytes();
        [
            self.code,
            (u8::from(self.end) << 7) | (self.volume & 0x3f),
            d[0],
            d[1],
        ]
    }
}

#[derive(Debug, Clone, Copy)]
struct Current {
    timestamp: u32,
    code: u8,
    duration: u32,
    last_seen: Instant,
}

/// RFC 4733 receiver: feed each telephone-event packet, poll timeouts; each key press comes out once.
#[derive(Debug, Clone)]
pub struct Rfc4733Decoder {
    current: Option<Current>,
    /// Timestamp of the last event reported (late packets at or before it are ignored).
    last_reported: Option<u32>,
    timeout: Duration,
}

/// Default inactivity after which an event without end packets is closed (RFC 4733 §2.5.2.2 leaves it to the
/// receiver; long enough to bridge the 1.4 s gap of case C024).
pub const DEFAULT_EVENT_TIMEOUT: Duration = Duration::from_secs(2);

impl Rfc4733Decoder {
    /// A decoder closing silent events after `timeout`.
    pub fn new(timeout: Duration) -> Self {
        Rfc4733Decoder {
            current: None,
            last_reported: None,
            timeout,
        }
    }

    fn close(&mut self) -> Option<Detected> {
        let c = self.current.take()?;
        self.last_reported = Some(c.timestamp);
        Some(Detected {
            event: event_from_code(c.code)?,
            duration: c.duration,
            timestamp: c.timestamp,
        })
    }

    /// Handles one packet (its RTP timestamp and payload) received at `now`. Returns the events completed by it:
    /// possibly a previous event that never saw its end, and this one when its end bit is set.
    pub fn handle_packet(&mut self, now: Instant, timestamp: u32, payload: &[u8]) -> Vec<Detected> {
        let mut out = Vec::new();
        let Some(ev) = EventPayload::parse(payload) else {
            return out;
        };
        if let Some(last) = self.last_reported
            && !ts_newer(timestamp, last)
        {
            return out; // a repeated end packet or a late packet of a reported event
        }
        match self.current {
            Some(c) if c.timestamp == timestamp => {}
            Some(c) if ts_newer(c.timestamp, timestamp) => return out, // older than the event in progress
            Some(_) => out.extend(self.close()),
            None => {}
        }
        let cur = self.current.get_or_insert(Current {
            timestamp,
            code: ev.code,
            duration: 0,
            last_seen: now,
        });
        cur.duration = cur.duration.max(u32::from(ev.duration));
        cur.last_seen = now;
        if ev.end {
            out.extend(self.close());
        }
        out
    }

    /// Closes an event that has had no packet for the timeout.
    pub fn handle_timeout(&mut self, now: Instant) -> Option<Detected> {
        let c = self.current?;
        if now.saturating_duration_since(c.last_seen) >= self.timeout {
            return self.close();
        }
        None
    }

    /// When [`Self::handle_timeout`] next needs to run.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.current.map(|c| c.last_seen + self.timeout)
    }
}

impl Default for Rfc4733Decoder {
    fn default() -> Self {
        Rfc4733Decoder::new(DEFAULT_EVENT_TIMEOUT)
    }
}

/// One packet to send for an event: marker bit, the event's RTP timestamp, the payload.
pub type EventPacket = (bool, u32, [u8; 4]);

/// Packets of one key press as RFC 4733 §2.5.1 wants them: all with the event's `timestamp`, an update every
/// `ptime_samples`, M=1 on the first only, the end packet three times with the same duration.
pub fn encode_event(
    code: u8,
    timestamp: u32,
    duration: u16,
    ptime_samples: u16,
    volume: u8,
) -> Vec<EventPacket> {
    let step = ptime_samples.max(1);
    let mut out = Vec::new();
    let mut d = step.min(duration.max(1));
    while d < duration {
        let p = EventPayload {
            code,
            end: false,
            volume,
            duration: d,
        };
        out.push((out.is_empty(), timestamp, p.to_bytes()));
        d = d.saturating_add(step);
    }
    let end = EventPayload {
        code,
        end: true,
        volume,
        duration: duration.max(1),
    };
    for _ in 0..3 {
        out.push((out.is_empty(), timestamp, end.to_bytes()));
    }
    out
}

/// Reads a SIP INFO DTMF body: `application/dtmf-relay` (`Signal=5\r\nDuration=160`) or `application/dtmf`
/// (`5`). Returns the event and the duration in milliseconds when given.
pub fn parse_info(content_type: &str, body: &str) -> Option<(ToneEvent, Option<u32>)> {
    let ct = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let signal_event = |s: &str| -> Option<ToneEvent> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("hf") || s == "16" {
            return Some(ToneEvent::Flash);
        }
        let mut ch = s.chars();
        match (ch.next(), ch.next()) {
            (Some(c), None) => code_from_digit(c).and_then(event_from_code),
            _ => s
                .parse::<u8>()
                .ok()
                .filter(|n| *n <= 16)
                .and_then(event_from_code),
        }
    };
    match ct.as_str() {
        "application/dtmf-relay" => {
            let mut event = None;
            let mut duration = None;
            for line in body.lines() {
                let Some((k, v)) = line.split_once('=') else {
                    continue;
                };
                match k.trim().to_ascii_lowercase().as_str() {
                    "signal" => event = signal_event(v),
                    "duration" => duration = v.trim().parse().ok(),
                    _ => {}
                }
            }
            event.map(|e| (e, duration))
        }
        "application/dtmf" => signal_event(body).map(|e| (e, None)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::sip::rtp;

    fn feed(file: &str, timeout: Duration, te_pt: u8) -> Vec<Detected> {
        let t0 = Instant::now();
        let mut d = Rfc4733Decoder::new(timeout);
        let mut out = Vec::new();
        for (ms, bytes) in rtp_lines(file) {
            let now = t0 + Duration::from_millis(ms);
            out.extend(d.handle_timeout(now));
            let p = rtp::parse(&bytes).unwrap();
            if p.pt == te_pt {
                out.extend(d.handle_packet(now, p.timestamp, p.payload));
            }
        }
        out.extend(d.handle_timeout(t0 + Duration::from_secs(3600)));
        out
    }

    fn rtp_lines(text: &str) -> Vec<(u64, Vec<u8>)> {
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(|l| {
                let (t, hex) = l.split_once(' ').unwrap();
                let bytes = (0..hex.len() / 2)
                    .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
                    .collect();
                (t.parse().unwrap(), bytes)
            })
            .collect()
    }

    const C022: &str = include_str!("../../../tests/data/sip/rtp/c022-dtmf-end-x3.rtp.txt");
    const C024: &str = include_str!("../../../tests/data/sip/rtp/c024-dtmf-long-gap.rtp.txt");
    const C025: &str = include_str!("../../../tests/data/sip/rtp/c025-dtmf-ts-wrap.rtp.txt");

    #[test]
    fn c022_rfc4733_end_repeated_counts_once() {
        let got = feed(C022, DEFAULT_EVENT_TIMEOUT, 101);
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].event, ToneEvent::Digit('5'));
        assert_eq!(got[0].duration, 800);
    }

    #[test]
    fn c024_long_press_with_gap_is_one_digit() {
        let got = feed(C024, DEFAULT_EVENT_TIMEOUT, 101);
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(
            (got[0].event, got[0].duration),
            (ToneEvent::Digit('1'), 13568)
        );
    }

    #[test]
    fn c024_timeout_inside_gap_still_one_digit() {
        // A receiver with a short timeout closes the event in the gap; the late end packets must not add a digit.
        let got = feed(C024, Duration::from_millis(500), 101);
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].event, ToneEvent::Digit('1'));
    }

    #[test]
    fn c025_events_across_timestamp_wrap() {
        let got = feed(C025, DEFAULT_EVENT_TIMEOUT, 101);
        let digits: Vec<_> = got.iter().map(|d| d.event).collect();
        assert_eq!(digits, [ToneEvent::Digit('9'), ToneEvent::Digit('#')]);
    }

    #[test]
    fn c020_event_16_is_flash_not_digit() {
        let mut d = Rfc4733Decoder::default();
        let now = Instant::now();
        let p = EventPayload {
            code: 16,
            end: true,
            volume: 10,
            duration: 800,
        }
        .to_bytes();
        let got = d.handle_packet(now, 1000, &p);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].event, ToneEvent::Flash);
        // Codes above 16 are ignored.
        let p = EventPayload {
            code: 40,
            end: true,
            volume: 10,
            duration: 800,
        }
        .to_bytes();
        assert!(d.handle_packet(now, 2000, &p).is_empty());
    }

    #[test]
    fn c022_encoder_same_timestamp_end_x3_marker_first_only() {
        let pk = encode_event(5, 160_000, 800, 160, 10);
        assert!(pk.iter().all(|(_, ts, _)| *ts == 160_000));
        assert_eq!(pk.iter().filter(|(m, _, _)| *m).count(), 1);
        assert!(pk[0].0);
        let ends: Vec<_> = pk.iter().filter(|(_, _, p)| p[1] & 0x80 != 0).collect();
        assert_eq!(ends.len(), 3);
        assert!(
            ends.iter()
                .all(|(_, _, p)| u16::from_be_bytes([p[2], p[3]]) == 800)
        );
        // And the decoder reads the encoder's output as one digit.
        let mut d = Rfc4733Decoder::default();
        let now = Instant::now();
        let got: Vec<_> = pk
            .iter()
            .flat_map(|(_, ts, p)| d.handle_packet(now, *ts, p))
            .collect();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].event, ToneEvent::Digit('5'));
    }

    #[test]
    fn new_event_closes_one_without_end() {
        let mut d = Rfc4733Decoder::default();
        let now = Instant::now();
        let a = EventPayload {
            code: 1,
            end: false,
            volume: 10,
            duration: 160,
        }
        .to_bytes();
        let b = EventPayload {
            code: 2,
            end: true,
            volume: 10,
            duration: 160,
        }
        .to_bytes();
        assert!(d.handle_packet(now, 100, &a).is_empty());
        let got = d.handle_packet(now, 900, &b);
        assert_eq!(
            got.iter().map(|g| g.event).collect::<Vec<_>>(),
            [ToneEvent::Digit('1'), ToneEvent::Digit('2')]
        );
        assert!(
            d.handle_packet(now, 50, &a).is_empty(),
            "older than reported events"
        );
    }

    #[test]
    fn info_bodies() {
        assert_eq!(
            parse_info("application/dtmf-relay", "Signal=5\r\nDuration=160\r\n"),
            Some((ToneEvent::Digit('5'), Some(160)))
        );
        assert_eq!(
            parse_info("application/dtmf-relay", "Signal= #\r\n"),
            Some((ToneEvent::Digit('#'), None))
        );
        assert_eq!(
            parse_info("application/dtmf", "1"),
            Some((ToneEvent::Digit('1'), None))
        );
        assert_eq!(
            parse_info("application/dtmf-relay", "Signal=hf"),
            Some((ToneEvent::Flash, None))
        );
        assert_eq!(parse_info("text/plain", "1"), None);
        assert_eq!(parse_info("application/dtmf", "xyz"), None);
    }
}
