//! In-band DTMF with the Goertzel algorithm (ITU-T Q.23/Q.24 frequencies), for trunks that negotiate no
//! telephone-event: detection (input 8 kHz 16-bit linear samples, blocks of [`BLOCK`] samples) and generation
//! ([`tone`], what the gateway plays to such a trunk for a browser's `sendDtmf`).
//!
//! A digit is reported once when the same row/column pair dominates two consecutive blocks, and again only after
//! two blocks without it (so a long press is one digit).

/// Samples per analysis block (205 at 8 kHz = 25.6 ms, the classic choice that puts each DTMF frequency near a bin).
pub const BLOCK: usize = 205;
const ROWS: [f32; 4] = [697.0, 770.0, 852.0, 941.0];
const COLS: [f32; 4] = [1209.0, 1336.0, 1477.0, 1633.0];
const KEYS: [[char; 4]; 4] = [
    ['1', '2', '3', 'A'],
    ['4', '5', '6', 'B'],
    ['7', '8', '9', 'C'],
    ['*', '0', '#', 'D'],
];
/// Minimum tone power relative to a full-scale block, so silence and line noise never trigger.
const MIN_POWER: f32 = 1.0e-4;

fn goertzel(samples: &[f32], freq: f32) -> f32 {
    let k = (samples.len() as f32 * freq / 8000.0).round();
    let w = 2.0 * std::f32::consts::PI * k / samples.len() as f32;
    let coeff = 2.0 * w.cos();
    let (mut s1, mut s2) = (0.0f32, 0.0f32);
    for &x in samples {
        let s = x + coeff * s1 - s2;
        s2 = s1;
        s1 = s;
    }
    s1 * s1 + s2 * s2 - coeff * s1 * s2
}

/// The two frequencies of a DTMF key (row, column), Hz; `None` for other characters.
pub fn frequencies(key: char) -> Option<(f32, f32)> {
    let key = key.to_ascii_uppercase();
    KEYS.iter().enumerate().find_map(|(r, row)| {
        row.iter()
            .position(|k| *k == key)
            .map(|c| (ROWS[r], COLS[c]))
    })
}

/// `ms` milliseconds of the DTMF tone of `key` at 8 kHz: both frequencies at -10 dBFS each (ITU-T Q.23 levels
/// are -6 to -12 dBm0 per frequency), starting at phase 0. `None` for a character that is not a key.
pub fn tone(key: char, ms: u32) -> Option<Vec<i16>> {
    let (row, col) = frequencies(key)?;
    let amplitude = 32767.0 * 10f32.powf(-10.0 / 20.0);
    let n = (ms as usize) * 8;
    Some(
        (0..n)
            .map(|i| {
                let t = i as f32 / 8000.0;
                let v = (2.0 * std::f32::consts::PI * row * t).sin()
                    + (2.0 * std::f32::consts::PI * col * t).sin();
                (amplitude * v).clamp(-32768.0, 32767.0) as i16
            })
            .collect(),
    )
}

/// Streaming in-band detector.
#[derive(Debug, Clone, Default)]
pub struct ToneDetector {
    buf: Vec<f32>,
    candidate: Option<char>,
    hits: u32,
    reported: Option<char>,
    misses: u32,
}

impl ToneDetector {
    /// A fresh detector.
    pub fn new() -> Self {
        ToneDetector::default()
    }

    fn block(&self) -> Option<char> {
        let x = &self.buf[..BLOCK];
        let energy: f32 = x.iter().map(|v| v * v).sum::<f32>();
        let n = BLOCK as f32;
        if energy / n < MIN_POWER {
            return None;
        }
        let rows: Vec<f32> = ROWS.iter().map(|f| goertzel(x, *f)).collect();
        let cols: Vec<f32> = COLS.iter().map(|f| goertzel(x, *f)).collect();
        let (ri, rp) = rows
            .iter()
            .enumerate()
            .fold((0, 0.0f32), |a, (i, p)| if *p > a.1 { (i, *p) } else { a });
        let (ci, cp) = cols
            .iter()
            .enumerate()
            .fold((0, 0.0f32), |a, (i, p)| if *p > a.1 { (i, *p) } else { a });
        // Each tone well above the other candidates of its group (6 dB) ...
        if rows
            .iter()
            .enumerate()
            .any(|(i, p)| i != ri && *p * 4.0 > rp)
            || cols
                .iter()
                .enumerate()
                .any(|(i, p)| i != ci && *p * 4.0 > cp)
        {
            return None;
        }
        // ... twist within 8 dB ...
        if rp > cp * 6.3 || cp > rp * 6.3 {
            return None;
        }
        // ... and the two tones carry most of the block's energy (a Goertzel bin of a pure tone of amplitude a
        // gives (a n / 2)^2, and the block energy is a^2 n / 2, so a pure tone has power / energy = n / 2).
        if (rp + cp) / (energy * n / 2.0) < 0.6 {
            return None;
        }
        Some(KEYS[ri][ci])
    }

    /// Feeds samples; returns the digits that started in them.
    pub fn push(&mut self, samples: &[i16]) -> Vec<char> {
        let mut out = Vec::new();
        self.buf
            .extend(samples.iter().map(|s| f32::from(*s) / 32768.0));
        while self.buf.len() >= BLOCK {
            let found = self.block();
            self.buf.drain(..BLOCK);
            match found {
                Some(d) if Some(d) == self.candidate => self.hits += 1,
                Some(d) => {
                    self.candidate = Some(d);
                    self.hits = 1;
                }
                None => {
                    self.candidate = None;
                    self.hits = 0;
                }
            }
            if found.is_some() && found == self.reported {
                self.misses = 0;
            } else if found != self.reported {
                self.misses += 1;
                if self.misses >= 2 {
                    self.reported = None;
                }
            }
            if self.hits >= 2
                && self.reported.is_none()
                && let Some(d) = self.candidate
            {
                self.reported = Some(d);
                self.misses = 0;
                out.push(d);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::sip::g711;

    fn tone(f1: f32, f2: f32, ms: usize, amp: f32) -> Vec<i16> {
        (0..ms * 8)
            .map(|i| {
                let t = i as f32 / 8000.0;
                (amp * 0.5
                    * ((2.0 * std::f32::consts::PI * f1 * t).sin()
                        + (2.0 * std::f32::consts::PI * f2 * t).sin())
                    * 32767.0) as i16
            })
            .collect()
    }

    fn through_pcmu(x: &[i16]) -> Vec<i16> {
        x.iter()
            .map(|s| g711::ulaw_decode(g711::ulaw_encode(*s)))
            .collect()
    }

    #[test]
    fn detects_each_key_once_through_g711() {
        for (r, row) in KEYS.iter().enumerate() {
            for (c, key) in row.iter().enumerate() {
                let mut d = ToneDetector::new();
                let mut got = Vec::new();
                let mut sig = tone(ROWS[r], COLS[c], 120, 0.5);
                sig.extend(vec![0i16; 8 * 80]);
                sig.extend(tone(ROWS[r], COLS[c], 300, 0.5));
                sig.extend(vec![0i16; 8 * 80]);
                for chunk in through_pcmu(&sig).chunks(160) {
                    got.extend(d.push(chunk));
                }
                assert_eq!(got, vec![*key, *key], "key {key}");
            }
        }
    }

    #[test]
    fn silence_single_tones_and_noise_do_not_trigger() {
        let mut d = ToneDetector::new();
        assert!(d.push(&vec![0; 8000]).is_empty());
        assert!(d.push(&tone(1000.0, 1000.0, 500, 0.5)).is_empty());
        assert!(d.push(&tone(697.0, 697.0, 500, 0.5)).is_empty());
        let mut x: u32 = 1;
        let noise: Vec<i16> = (0..8000)
            .map(|_| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                ((x >> 16) as i16) / 4
            })
            .collect();
        assert!(d.push(&noise).is_empty());
    }

    #[test]
    fn generated_tones_are_detected_as_their_key() {
        for key in "0123456789*#ABCD".chars() {
            let mut d = ToneDetector::new();
            let mut samples = super::tone(key, 100).unwrap();
            samples.extend(std::iter::repeat_n(0, 800));
            assert_eq!(d.push(&samples), vec![key], "key {key}");
        }
        assert_eq!(super::tone('x', 100), None);
        assert_eq!(frequencies('5'), Some((770.0, 1336.0)));
        assert_eq!(super::tone('1', 100).unwrap().len(), 800);
    }
}
