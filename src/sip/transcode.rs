//! Audio conversion between a SIP leg and the SFU (issue 5, media bridge): G.711 at 8 kHz on the
//! phone side, Opus (RFC 6716; RTP clock 48 kHz, RFC 7587) in the room. Pure computation (no IO, no
//! clock): libopus through the `opus` crate, mono 20 ms frames.
//!
//! libopus runs at an API sample rate of 8 kHz both ways, so it does the 8 <-> 48 kHz conversion
//! itself: the encoder codes the narrowband signal G.711 carries (SILK narrowband: nothing above
//! 4 kHz exists to code) and the decoder renders any Opus stream straight to 8 kHz (SILK's own
//! resampler, CELT's decimating synthesis). A separate resampler (rubato's FFT one at first) cost
//! more CPU than the codec's path and added a block of delay; `benches/sip.rs` and
//! `loadtest/sip-transcode.sh` measure the difference (docs/performance.md).

use std::collections::VecDeque;

use crate::proto::sip::g711;
use crate::proto::sip::sdp::G711;

/// Samples in 20 ms at 8 kHz (one G.711 packet at ptime 20).
pub const FRAME_8K: usize = 160;
/// RTP timestamp units in 20 ms of Opus (its RTP clock is always 48 kHz, RFC 7587 §4.1).
pub const FRAME_48K: usize = 960;
/// Longest Opus frame (120 ms) at 8 kHz, the decode buffer size (RFC 6716 §2.1.4).
const MAX_OPUS_FRAME_8K: usize = 960;
/// libopus's API sample rate both ways.
const API_RATE: u32 = 8_000;
/// Encoder bitrate (bit/s): SILK narrowband is transparent for G.711 sources well below it.
const UPLINK_BITRATE: i32 = 24_000;
const UPLINK_COMPLEXITY: i32 = 5;

/// Why a codec could not be built or used.
#[derive(Debug, thiserror::Error)]
pub enum TranscodeError {
    /// libopus refused.
    #[error("opus: {0}")]
    Opus(#[from] opus::Error),
}

fn to_f32(s: i16) -> f32 {
    f32::from(s) / 32768.0
}

fn to_i16(s: f32) -> i16 {
    (s * 32767.0).round().clamp(-32768.0, 32767.0) as i16
}

/// RFC 6464 audio level of a frame: -dBov, 0 (loudest) ..= 127 (silence).
pub fn audio_level(samples: &[f32]) -> u8 {
    if samples.is_empty() {
        return 127;
    }
    let mean_square = samples.iter().map(|s| s * s).sum::<f32>() / samples.len() as f32;
    if mean_square <= 0.0 {
        return 127;
    }
    let dbov = 10.0 * mean_square.log10();
    (-dbov).round().clamp(0.0, 127.0) as u8
}

/// Phone -> room: G.711 payloads in, 20 ms Opus frames out.
pub struct Uplink {
    codec: G711,
    /// 8 kHz samples waiting for a full 20 ms frame (G.711 packets need not be 20 ms).
    pending: Vec<i16>,
    encoder: opus::Encoder,
    out: Vec<u8>,
}

impl std::fmt::Debug for Uplink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Uplink")
            .field("codec", &self.codec)
            .finish()
    }
}

impl Uplink {
    /// For a leg that negotiated `codec`: a VoIP-mode Opus encoder at 8 kHz, 24 kbit/s.
    ///
    /// # Errors
    /// libopus refusing the settings.
    pub fn new(codec: G711) -> Result<Uplink, TranscodeError> {
        let mut encoder =
            opus::Encoder::new(API_RATE, opus::Channels::Mono, opus::Application::Voip)?;
        encoder.set_bitrate(opus::Bitrate::Bits(UPLINK_BITRATE))?;
        encoder.set_complexity(UPLINK_COMPLEXITY)?;
        Ok(Uplink {
            codec,
            pending: Vec::with_capacity(2 * FRAME_8K),
            encoder,
            out: vec![0; 1500],
        })
    }

    /// Decodes one G.711 payload and returns the Opus frames now complete, each with its audio
    /// level (RFC 6464).
    ///
    /// # Errors
    /// libopus failing.
    pub fn push_g711(&mut self, payload: &[u8]) -> Result<Vec<(Vec<u8>, u8)>, TranscodeError> {
        self.pending
            .extend(payload.iter().map(|b| match self.codec {
                G711::Pcmu => g711::ulaw_decode(*b),
                G711::Pcma => g711::alaw_decode(*b),
            }));
        let mut frames = Vec::new();
        let mut start = 0;
        while self.pending.len() - start >= FRAME_8K {
            let pcm = &self.pending[start..start + FRAME_8K];
            let level = audio_level(&pcm.iter().map(|s| to_f32(*s)).collect::<Vec<_>>());
            let n = self.encoder.encode(pcm, &mut self.out)?;
            frames.push((self.out[..n].to_vec(), level));
            start += FRAME_8K;
        }
        self.pending.drain(..start);
        Ok(frames)
    }
}

/// Room -> phone, one per remote publisher: Opus frames in, 8 kHz frames of 20 ms out.
pub struct Downlink {
    decoder: opus::Decoder,
    pcm: Vec<i16>,
    /// Decoded 8 kHz samples not yet handed out as a full frame (10 ms Opus packets, say).
    pending: VecDeque<f32>,
}

impl std::fmt::Debug for Downlink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Downlink").finish_non_exhaustive()
    }
}

impl Downlink {
    /// A decoder rendering mono at 8 kHz (libopus downmixes stereo streams and converts the rate).
    ///
    /// # Errors
    /// libopus refusing the settings.
    pub fn new() -> Result<Downlink, TranscodeError> {
        Ok(Downlink {
            decoder: opus::Decoder::new(API_RATE, opus::Channels::Mono)?,
            pcm: vec![0; MAX_OPUS_FRAME_8K],
            pending: VecDeque::with_capacity(2 * FRAME_8K),
        })
    }

    /// Decodes one Opus packet and returns the 8 kHz frames of [`FRAME_8K`] samples now complete.
    ///
    /// # Errors
    /// A packet libopus cannot decode (the caller drops it).
    pub fn push_opus(&mut self, packet: &[u8]) -> Result<Vec<Vec<f32>>, TranscodeError> {
        let n = self.decoder.decode(packet, &mut self.pcm, false)?;
        self.pending
            .extend(self.pcm[..n.min(self.pcm.len())].iter().map(|s| to_f32(*s)));
        let mut frames = Vec::new();
        while self.pending.len() >= FRAME_8K {
            frames.push(self.pending.drain(..FRAME_8K).collect());
        }
        Ok(frames)
    }
}

/// Mixes 8 kHz frames (sums, clipped) and encodes them as one G.711 payload.
pub fn mix_to_g711(codec: G711, frames: &[Vec<f32>]) -> Vec<u8> {
    (0..FRAME_8K)
        .map(|i| {
            let sum: f32 = frames.iter().filter_map(|f| f.get(i)).sum();
            let s = to_i16(sum.clamp(-1.0, 1.0));
            match codec {
                G711::Pcmu => g711::ulaw_encode(s),
                G711::Pcma => g711::alaw_encode(s),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone_g711(codec: G711, freq: f32, n: usize, offset: usize) -> Vec<u8> {
        (0..n)
            .map(|i| {
                let t = (i + offset) as f32 / 8000.0;
                let s = to_i16(0.5 * (2.0 * std::f32::consts::PI * freq * t).sin());
                match codec {
                    G711::Pcmu => g711::ulaw_encode(s),
                    G711::Pcma => g711::alaw_encode(s),
                }
            })
            .collect()
    }

    #[test]
    fn a_tone_survives_g711_to_opus_to_g711() {
        let mut up = Uplink::new(G711::Pcma).unwrap();
        let mut down = Downlink::new().unwrap();
        let mut out = Vec::new();
        for k in 0..50 {
            let payload = tone_g711(G711::Pcma, 440.0, FRAME_8K, k * FRAME_8K);
            for (opus, level) in up.push_g711(&payload).unwrap() {
                assert!(opus.len() > 2 && opus.len() < 400, "{}", opus.len());
                assert!(level < 127);
                out.extend(down.push_opus(&opus).unwrap());
            }
        }
        // 1 s in: about 50 frames out (less the codec's delay).
        assert!(out.len() >= 40, "{} frames", out.len());
        let tail: Vec<f32> = out[out.len() - 10..].concat();
        let level = audio_level(&tail);
        // A 0.5-amplitude sine is about -9 dBov; transcoding keeps it within a few dB.
        assert!((6..=14).contains(&level), "level {level}");
        let g = mix_to_g711(G711::Pcmu, &out[out.len() - 2..]);
        assert_eq!(g.len(), FRAME_8K);
    }

    #[test]
    fn silence_has_level_127_and_full_scale_0() {
        assert_eq!(audio_level(&[0.0; 160]), 127);
        assert_eq!(audio_level(&[1.0; 160]), 0);
        assert_eq!(audio_level(&[]), 127);
    }

    #[test]
    fn garbage_opus_is_an_error_not_a_panic() {
        let mut down = Downlink::new().unwrap();
        // TOC byte announcing code 3 with a frame count of 0: invalid (RFC 6716 §3.2.5).
        assert!(down.push_opus(&[0x03, 0x00]).is_err());
    }
}
