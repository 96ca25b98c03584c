//! RTCP for the SIP leg (RFC 3550 §6.4): reception statistics per source (§A.3 loss, §A.8 jitter) and compound
//! SR/RR packets with an SDES CNAME (§6.1: every compound packet carries one).

/// Reception statistics of one incoming source.
#[derive(Debug, Clone, Default)]
pub struct ReceiverStats {
    /// SSRC of the source.
    pub ssrc: u32,
    base_seq: u32,
    max_seq: u16,
    cycles: u32,
    received: u32,
    expected_prior: u32,
    received_prior: u32,
    /// Interarrival jitter in timestamp units (scaled by 16 internally, §A.8).
    jitter16: u32,
    transit: Option<i64>,
    started: bool,
    /// Middle 32 bits of the NTP timestamp of the last SR received, and when (in 1/65536 s units of the caller's
    /// clock) it arrived: for LSR/DLSR.
    last_sr: Option<(u32, u64)>,
}

impl ReceiverStats {
    /// Records one RTP packet: its sequence number, RTP timestamp and arrival time in timestamp units.
    pub fn on_rtp(&mut self, ssrc: u32, seq: u16, ts: u32, arrival_ts: u32) {
        if !self.started || ssrc != self.ssrc {
            *self = ReceiverStats {
                ssrc,
                base_seq: u32::from(seq),
                max_seq: seq,
                started: true,
                ..Default::default()
            };
        } else if super::rtp::seq_newer(seq, self.max_seq) {
            if seq < self.max_seq {
                self.cycles += 1 << 16;
            }
            self.max_seq = seq;
        }
        self.received += 1;
        let transit = i64::from(arrival_ts) - i64::from(ts);
        if let Some(prev) = self.transit {
            let d = (transit - prev).unsigned_abs().min(u64::from(u32::MAX)) as u32;
            // J += (|D| - J) / 16, kept scaled by 16.
            self.jitter16 = self
                .jitter16
                .wrapping_add(d)
                .wrapping_sub((self.jitter16 + 8) >> 4);
        }
        self.transit = Some(transit);
    }

    /// Records an SR from the source: its NTP timestamp and our arrival time (1/65536 s).
    pub fn on_sr(&mut self, ntp: u64, now_16: u64) {
        self.last_sr = Some((((ntp >> 16) & 0xffff_ffff) as u32, now_16));
    }

    /// A report block (§6.4.1) at `now_16` (1/65536 s), updating the interval counters.
    pub fn report_block(&mut self, now_16: u64) -> [u8; 24] {
        let ext_max = self.cycles + u32::from(self.max_seq);
        let expected = ext_max.wrapping_sub(self.base_seq).wrapping_add(1);
        let lost = i64::from(expected) - i64::from(self.received);
        let exp_int = expected.wrapping_sub(self.expected_prior);
        let rec_int = self.received.wrapping_sub(self.received_prior);
        self.expected_prior = expected;
        self.received_prior = self.received;
        let lost_int = i64::from(exp_int) - i64::from(rec_int);
        let fraction = if exp_int == 0 || lost_int <= 0 {
            0
        } else {
            ((lost_int << 8) / i64::from(exp_int)).min(255) as u8
        };
        let cum = lost.clamp(-0x80_0000, 0x7f_ffff) as i32 as u32 & 0x00ff_ffff;
        let (lsr, dlsr) = match self.last_sr {
            Some((lsr, at)) => (
                lsr,
                now_16.saturating_sub(at).min(u64::from(u32::MAX)) as u32,
            ),
            None => (0, 0),
        };
        let mut b = [0u8; 24];
        b[0..4].copy_from_slice(&self.ssrc.to_be_bytes());
        b[4] = fraction;
        b[5..8].copy_from_slice(&cum.to_be_bytes()[1..]);
        b[8..12].copy_from_slice(&ext_max.to_be_bytes());
        b[12..16].copy_from_slice(&(self.jitter16 >> 4).to_be_bytes());
        b[16..20].copy_from_slice(&lsr.to_be_bytes());
        b[20..24].copy_from_slice(&dlsr.to_be_bytes());
        b
    }

    /// Packets received so far.
    pub fn received(&self) -> u32 {
        self.received
    }
}

/// What we sent, for the sender info of an SR (§6.4.1).
#[derive(Debug, Clone, Copy, Default)]
pub struct SenderInfo {
    /// NTP timestamp (64-bit, seconds since 1900 in the high half).
    pub ntp: u64,
    /// RTP timestamp corresponding to `ntp`.
    pub rtp_ts: u32,
    /// Packets sent.
    pub packets: u32,
    /// Payload octets sent.
    pub octets: u32,
}

fn sdes_cname(ssrc: u32, cname: &str) -> Vec<u8> {
    let name = &cname.as_bytes()[..cname.len().min(255)];
    let mut chunk = ssrc.to_be_bytes().to_vec();
    chunk.push(1);
    chunk.push(name.len() as u8);
    chunk.extend_from_slice(name);
    chunk.push(0);
    while !chunk.len().is_multiple_of(4) {
        chunk.push(0);
    }
    let words = (chunk.len() / 4) as u16;
    let mut out = vec![0x81, 202];
    out.extend_from_slice(&words.to_be_bytes());
    out.extend(chunk);
    out
}

/// A compound RTCP packet: SR when `sender` is given, else RR; with a report block when `stats` has received
/// packets; then SDES CNAME.
pub fn compound(
    ssrc: u32,
    sender: Option<SenderInfo>,
    stats: Option<&mut ReceiverStats>,
    now_16: u64,
    cname: &str,
) -> Vec<u8> {
    let block = stats
        .filter(|s| s.received() > 0)
        .map(|s| s.report_block(now_16));
    let rc = u8::from(block.is_some());
    let mut out = Vec::with_capacity(100);
    let (pt, body_words) = match sender {
        Some(_) => (200u8, 6 + 6 * u16::from(rc)),
        None => (201u8, 1 + 6 * u16::from(rc)),
    };
    out.push(0x80 | rc);
    out.push(pt);
    out.extend_from_slice(&body_words.to_be_bytes());
    out.extend_from_slice(&ssrc.to_be_bytes());
    if let Some(s) = sender {
        out.extend_from_slice(&s.ntp.to_be_bytes());
        out.extend_from_slice(&s.rtp_ts.to_be_bytes());
        out.extend_from_slice(&s.packets.to_be_bytes());
        out.extend_from_slice(&s.octets.to_be_bytes());
    }
    if let Some(b) = block {
        out.extend_from_slice(&b);
    }
    out.extend(sdes_cname(ssrc, cname));
    out
}

/// The SRs in a compound packet: (sender SSRC, NTP timestamp). Stops at the first malformed header.
pub fn sender_reports(buf: &[u8]) -> Vec<(u32, u64)> {
    let mut out = Vec::new();
    let mut off = 0;
    while off + 4 <= buf.len() {
        let len = (usize::from(u16::from_be_bytes([buf[off + 2], buf[off + 3]])) + 1) * 4;
        if buf[off] >> 6 != 2 || off + len > buf.len() {
            break;
        }
        if buf[off + 1] == 200 && len >= 28 {
            let p = &buf[off..off + len];
            let ssrc = u32::from_be_bytes([p[4], p[5], p[6], p[7]]);
            let ntp = u64::from_be_bytes([p[8], p[9], p[10], p[11], p[12], p[13], p[14], p[15]]);
            out.push((ssrc, ntp));
        }
        off += len;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rr_reports_loss_and_highest_seq() {
        let mut s = ReceiverStats::default();
        for seq in [100u16, 101, 103, 104] {
            s.on_rtp(9, seq, u32::from(seq) * 160, u32::from(seq) * 160);
        }
        let pkt = compound(1, None, Some(&mut s), 0, "sb");
        assert_eq!(pkt[1], 201);
        assert_eq!(pkt[0] & 0x1f, 1);
        let block = &pkt[8..32];
        assert_eq!(u32::from_be_bytes(block[0..4].try_into().unwrap()), 9);
        assert_eq!(block[4], 51, "1 of 5 lost: 256 / 5");
        assert_eq!(u32::from_be_bytes([0, block[5], block[6], block[7]]), 1);
        assert_eq!(u32::from_be_bytes(block[8..12].try_into().unwrap()), 104);
        assert_eq!(
            u32::from_be_bytes(block[12..16].try_into().unwrap()),
            0,
            "no jitter"
        );
        // The compound packet's lengths add up.
        let rr_len = (usize::from(u16::from_be_bytes([pkt[2], pkt[3]])) + 1) * 4;
        let sdes_len =
            (usize::from(u16::from_be_bytes([pkt[rr_len + 2], pkt[rr_len + 3]])) + 1) * 4;
        assert_eq!(rr_len + sdes_len, pkt.len());
    }

    #[test]
    fn sr_round_trip() {
        let sr = compound(
            7,
            Some(SenderInfo {
                ntp: 0x1122_3344_5566_7788,
                rtp_ts: 1,
                packets: 2,
                octets: 320,
            }),
            None,
            0,
            "x",
        );
        assert_eq!(sender_reports(&sr), vec![(7, 0x1122_3344_5566_7788)]);
        assert!(sender_reports(&sr[..10]).is_empty());
        assert!(sender_reports(&[0xff; 3]).is_empty());
    }
}
