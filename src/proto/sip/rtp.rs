//! RTP packet view and writer for the SIP leg (RFC 3550 §5.1; header extensions RFC 8285 skipped as a block).
//!
//! Only what the gateway needs: the fixed header, CSRCs and extension counted once (case C032), padding removed
//! (a padding-only packet has an empty payload, case C027). Never reads past the buffer.

/// Why bytes are not an RTP packet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RtpError {
    /// Shorter than the header it announces.
    #[error("RTP packet truncated")]
    Truncated,
    /// Version is not 2.
    #[error("RTP version {0}")]
    Version(u8),
    /// Padding count larger than the payload.
    #[error("bad RTP padding")]
    Padding,
}

/// A parsed RTP packet borrowing its payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtpPacket<'a> {
    /// Marker bit.
    pub marker: bool,
    /// Payload type (7 bits).
    pub pt: u8,
    /// Sequence number.
    pub seq: u16,
    /// Timestamp in clock-rate units (8000 Hz for G.711 and telephone-event).
    pub timestamp: u32,
    /// Synchronisation source.
    pub ssrc: u32,
    /// Contributing sources (at most 15).
    pub csrcs: Vec<u32>,
    /// Payload without padding.
    pub payload: &'a [u8],
    /// Offset of the payload in the packet, in bytes.
    pub payload_offset: usize,
}

/// Whether a datagram looks like RTCP rather than RTP (RFC 5761 §4: payload types 64–95 are RTCP).
pub fn is_rtcp(buf: &[u8]) -> bool {
    buf.len() >= 2 && (192..=223).contains(&buf[1])
}

/// Parses an RTP packet.
///
/// # Errors
/// [`RtpError`] for a truncated header, a version other than 2 or a bad padding count.
pub fn parse(buf: &[u8]) -> Result<RtpPacket<'_>, RtpError> {
    if buf.len() < 12 {
        return Err(RtpError::Truncated);
    }
    let version = buf[0] >> 6;
    if version != 2 {
        return Err(RtpError::Version(version));
    }
    let padding = buf[0] & 0x20 != 0;
    let extension = buf[0] & 0x10 != 0;
    let cc = usize::from(buf[0] & 0x0f);
    let mut off = 12 + 4 * cc;
    if buf.len() < off {
        return Err(RtpError::Truncated);
    }
    let csrcs = buf[12..off]
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    if extension {
        if buf.len() < off + 4 {
            return Err(RtpError::Truncated);
        }
        let words = usize::from(u16::from_be_bytes([buf[off + 2], buf[off + 3]]));
        off += 4 + 4 * words;
        if buf.len() < off {
            return Err(RtpError::Truncated);
        }
    }
    let mut end = buf.len();
    if padding {
        let n = usize::from(buf[end - 1]);
        if n == 0 || off + n > end {
            return Err(RtpError::Padding);
        }
        end -= n;
    }
    Ok(RtpPacket {
        marker: buf[1] & 0x80 != 0,
        pt: buf[1] & 0x7f,
        seq: u16::from_be_bytes([buf[2], buf[3]]),
        timestamp: u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]),
        ssrc: u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]),
        csrcs,
        payload: &buf[off..end],
        payload_offset: off,
    })
}

/// Writes a plain RTP packet (no CSRC, no extension, no padding).
pub fn write(marker: bool, pt: u8, seq: u16, timestamp: u32, ssrc: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(12 + payload.len());
    out.push(0x80);
    out.push((u8::from(marker) << 7) | (pt & 0x7f));
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&timestamp.to_be_bytes());
    out.extend_from_slice(&ssrc.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// `a` is later than `b` in RFC 1982 serial-number arithmetic on 32 bits (RTP timestamps wrap, case C025).
pub fn ts_newer(a: u32, b: u32) -> bool {
    a != b && a.wrapping_sub(b) < 0x8000_0000
}

/// `a` is later than `b` on 16-bit sequence numbers.
pub fn seq_newer(a: u16, b: u16) -> bool {
    a != b && a.wrapping_sub(b) < 0x8000
}

/// Largest forward timestamp step (8000 Hz units: 5 s) still read as the same timeline; beyond it, or any step
/// backwards, is a discontinuity (case C030).
pub const MAX_TS_STEP: u32 = 8000 * 5;

/// Maps incoming RTP timestamps onto our own outgoing timeline (RFC 3550 §5.1: the sender picks its own random
/// timestamp base). Each incoming SSRC is shifted by a constant, so packets of one DTMF event keep one timestamp
/// (case C022); a new SSRC or a timestamp jump on the same SSRC (case C030) continues our timeline 20 ms after
/// the last packet, with the marker bit set.
#[derive(Debug, Clone)]
pub struct Restamper {
    source: Option<(u32, u32)>,
    offset: u32,
    last_out: u32,
    step: u32,
}

impl Restamper {
    /// Starts our timeline at `base`; `step` is one packet's duration (160 for 20 ms at 8 kHz).
    pub fn new(base: u32, step: u32) -> Self {
        Restamper {
            source: None,
            offset: 0,
            last_out: base.wrapping_sub(step),
            step,
        }
    }

    /// Our timestamp for an incoming (SSRC, timestamp), and whether to set the marker bit.
    pub fn map(&mut self, ssrc: u32, ts: u32) -> (u32, bool) {
        let continuous = match self.source {
            Some((s, last_in)) if s == ssrc => ts.wrapping_sub(last_in) <= MAX_TS_STEP,
            _ => false,
        };
        if !continuous {
            self.offset = self.last_out.wrapping_add(self.step).wrapping_sub(ts);
        }
        self.source = Some((ssrc, ts));
        let out = ts.wrapping_add(self.offset);
        self.last_out = out;
        (out, !continuous)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn lines(text: &str) -> Vec<(u64, Vec<u8>)> {
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

    #[test]
    fn c027_padding_only_packets_have_empty_payload() {
        let pk = lines(include_str!(
            "../../../tests/data/sip/rtp/c027-padding-only.rtp.txt"
        ));
        let p: Vec<_> = pk.iter().map(|(_, b)| parse(b).unwrap()).collect();
        assert_eq!(
            p.iter().map(|p| p.seq).collect::<Vec<_>>(),
            [100, 101, 102, 103]
        );
        assert!(p[1].payload.is_empty() && p[2].payload.is_empty());
        assert!(!p[0].payload.is_empty() && !p[3].payload.is_empty());
    }

    #[test]
    fn c031_header_extensions_skipped_payload_found() {
        for (_, b) in lines(include_str!(
            "../../../tests/data/sip/rtp/c031-header-extensions.rtp.txt"
        )) {
            assert_eq!(parse(&b).unwrap().payload, [1, 2, 3, 4]);
        }
    }

    #[test]
    fn c032_csrc_offsets() {
        let pk = lines(include_str!(
            "../../../tests/data/sip/rtp/c032-csrc.rtp.txt"
        ));
        let a = parse(&pk[0].1).unwrap();
        let b = parse(&pk[1].1).unwrap();
        assert_eq!((a.payload_offset, a.csrcs.len()), (28, 2));
        assert_eq!((b.payload_offset, b.csrcs.len()), (72, 15));
        assert_eq!(a.payload, [0xff; 20]);
        assert_eq!(b.payload, [0xff; 20]);
    }

    fn restamp(file: &str) -> Vec<(u32, bool)> {
        let mut r = Restamper::new(1_000_000, 160);
        lines(file)
            .iter()
            .map(|(_, b)| {
                let p = parse(b).unwrap();
                r.map(p.ssrc, p.timestamp)
            })
            .collect()
    }

    #[test]
    fn c030_timestamp_jump_backward_restamped_continuous_with_marker() {
        let out = restamp(include_str!(
            "../../../tests/data/sip/rtp/c030a-ts-jump-backward.rtp.txt"
        ));
        assert!(
            out.windows(2).all(|w| w[1].0 == w[0].0.wrapping_add(160)),
            "{out:?}"
        );
        let marks: Vec<usize> = out
            .iter()
            .enumerate()
            .filter(|(_, o)| o.1)
            .map(|(i, _)| i)
            .collect();
        assert_eq!(marks, [0, 5], "marker on the first packet and at the jump");
    }

    #[test]
    fn c030_timestamp_jump_forward_restamped_continuous_with_marker() {
        let out = restamp(include_str!(
            "../../../tests/data/sip/rtp/c030b-ts-jump-forward.rtp.txt"
        ));
        assert!(
            out.windows(2).all(|w| w[1].0 == w[0].0.wrapping_add(160)),
            "{out:?}"
        );
        assert_eq!(out.iter().filter(|o| o.1).count(), 2);
    }

    #[test]
    fn restamper_keeps_event_timestamps_and_wraps() {
        let mut r = Restamper::new(u32::MAX - 100, 160);
        let (a, m) = r.map(1, 5000);
        assert!(m);
        assert_eq!(
            r.map(1, 5000),
            (a, false),
            "same incoming ts, same outgoing ts (one DTMF event)"
        );
        assert_eq!(r.map(1, 5160).0, a.wrapping_add(160), "wraps through 2^32");
    }

    #[test]
    fn write_parse_round_trip_and_serial_compare() {
        let w = write(true, 101, 65535, 0xffff_ff60, 7, &[1, 2, 3, 4]);
        let p = parse(&w).unwrap();
        assert_eq!(
            (p.marker, p.pt, p.seq, p.timestamp, p.ssrc, p.payload),
            (true, 101, 65535, 0xffff_ff60, 7, &[1u8, 2, 3, 4][..])
        );
        assert!(ts_newer(0x280, 0xffff_ff60));
        assert!(!ts_newer(0xffff_ff60, 0x280));
        assert!(seq_newer(0, 65535));
        assert!(parse(&w[..11]).is_err());
        let mut bad = w.clone();
        bad[0] |= 0x20;
        *bad.last_mut().unwrap() = 200;
        assert_eq!(parse(&bad), Err(RtpError::Padding));
    }
}
