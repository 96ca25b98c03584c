//! Audio conversion between a SIP leg and the SFU (issue 5, media bridge): G.711 at 8 kHz on the
//! phone side, Opus at 48 kHz in the room. Pure computation (no IO, no clock): resampling with
//! rubato's FFT resampler, Opus (RFC 6716) with libopus through the `opus` crate, mono 20 ms frames.

use std::collections::VecDeque;

use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{Fft, FixedSync, Resampler as _};

use crate::proto::sip::g711;
use crate::proto::sip::sdp::G711;

/// Samples in 20 ms at 8 kHz (one G.711 packet at ptime 20).
pub const FRAME_8K: usize = 160;
/// Samples in 20 ms at 48 kHz (one Opus frame).
pub const FRAME_48K: usize = 960;
/// Longest Opus frame (120 ms at 48 kHz, RFC 6716 §2.1.4), the decode buffer size.
const MAX_OPUS_FRAME: usize = 5760;

/// Why a codec or resampler could not be built or used.
#[derive(Debug, thiserror::Error)]
pub enum TranscodeError {
    /// libopus refused.
    #[error("opus: {0}")]
    Opus(#[from] opus::Error),
    /// The resampler could not be built or failed.
    #[error("resampler: {0}")]
    Resampler(String),
}

/// A fixed-ratio resampler over a FIFO: push any number of samples, pop frames of any size once
/// enough are there. Delay: one FFT block (a few ms).
pub struct Resampler {
    inner: Fft<f32>,
    input: Vec<f32>,
    output: VecDeque<f32>,
    scratch: Vec<f32>,
}

impl std::fmt::Debug for Resampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resampler")
            .field("queued_in", &self.input.len())
            .field("queued_out", &self.output.len())
            .finish()
    }
}

impl Resampler {
    /// Mono, `from` Hz to `to` Hz, processing `chunk` input samples at a time.
    ///
    /// # Errors
    /// [`TranscodeError::Resampler`] for rates rubato refuses.
    pub fn new(from: usize, to: usize, chunk: usize) -> Result<Resampler, TranscodeError> {
        let inner = Fft::<f32>::new(from, to, chunk, 1, FixedSync::Input)
            .map_err(|e| TranscodeError::Resampler(e.to_string()))?;
        Ok(Resampler {
            inner,
            input: Vec::new(),
            output: VecDeque::new(),
            scratch: Vec::new(),
        })
    }

    /// Queues samples and converts every full input chunk.
    ///
    /// # Errors
    /// [`TranscodeError::Resampler`] if rubato fails (it does not for well-sized buffers).
    pub fn push(&mut self, samples: &[f32]) -> Result<(), TranscodeError> {
        self.input.extend_from_slice(samples);
        loop {
            let need = self.inner.input_frames_next();
            if self.input.len() < need {
                return Ok(());
            }
            let out_len = self.inner.output_frames_max();
            self.scratch.resize(out_len, 0.0);
            let input = InterleavedSlice::new(&self.input[..need], 1, need)
                .map_err(|e| TranscodeError::Resampler(e.to_string()))?;
            let mut output = InterleavedSlice::new_mut(&mut self.scratch[..], 1, out_len)
                .map_err(|e| TranscodeError::Resampler(e.to_string()))?;
            let (read, written) = self
                .inner
                .process_into_buffer(&input, &mut output, None)
                .map_err(|e| TranscodeError::Resampler(e.to_string()))?;
            self.input.drain(..read.min(self.input.len()));
            self.output
                .extend(self.scratch.iter().take(written).copied());
            if read == 0 {
                return Ok(());
            }
        }
    }

    /// The next `n` converted samples, once that many are ready.
    pub fn pop(&mut self, n: usize) -> Option<Vec<f32>> {
        (self.output.len() >= n).then(|| self.output.drain(..n).collect())
    }
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

/// Phone -> room: G.711 payloads in, 20 ms Opus frames (48 kHz mono) out.
pub struct Uplink {
    codec: G711,
    resampler: Resampler,
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
    /// For a leg that negotiated `codec`.
    ///
    /// # Errors
    /// libopus or the resampler refusing the settings.
    pub fn new(codec: G711) -> Result<Uplink, TranscodeError> {
        let mut encoder =
            opus::Encoder::new(48_000, opus::Channels::Mono, opus::Application::Voip)?;
        encoder.set_bitrate(opus::Bitrate::Bits(32_000))?;
        Ok(Uplink {
            codec,
            resampler: Resampler::new(8_000, 48_000, FRAME_8K)?,
            encoder,
            out: vec![0; 1500],
        })
    }

    /// Decodes one G.711 payload and returns the Opus frames now complete, each with its audio
    /// level (RFC 6464).
    ///
    /// # Errors
    /// The resampler or libopus failing.
    pub fn push_g711(&mut self, payload: &[u8]) -> Result<Vec<(Vec<u8>, u8)>, TranscodeError> {
        let samples: Vec<f32> = payload
            .iter()
            .map(|b| {
                to_f32(match self.codec {
                    G711::Pcmu => g711::ulaw_decode(*b),
                    G711::Pcma => g711::alaw_decode(*b),
                })
            })
            .collect();
        self.resampler.push(&samples)?;
        let mut frames = Vec::new();
        while let Some(frame) = self.resampler.pop(FRAME_48K) {
            let level = audio_level(&frame);
            let pcm: Vec<i16> = frame.iter().map(|s| to_i16(*s)).collect();
            let n = self.encoder.encode(&pcm, &mut self.out)?;
            frames.push((self.out[..n].to_vec(), level));
        }
        Ok(frames)
    }
}

/// Room -> phone, one per remote publisher: Opus frames in, 8 kHz frames of 20 ms out.
pub struct Downlink {
    decoder: opus::Decoder,
    resampler: Resampler,
    pcm: Vec<i16>,
}

impl std::fmt::Debug for Downlink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Downlink").finish_non_exhaustive()
    }
}

impl Downlink {
    /// A decoder at 48 kHz mono (libopus downmixes stereo streams).
    ///
    /// # Errors
    /// libopus or the resampler refusing the settings.
    pub fn new() -> Result<Downlink, TranscodeError> {
        Ok(Downlink {
            decoder: opus::Decoder::new(48_000, opus::Channels::Mono)?,
            resampler: Resampler::new(48_000, 8_000, FRAME_48K)?,
            pcm: vec![0; MAX_OPUS_FRAME],
        })
    }

    /// Decodes one Opus packet and returns the 8 kHz frames of [`FRAME_8K`] samples now complete.
    ///
    /// # Errors
    /// A packet libopus cannot decode (the caller drops it), or the resampler failing.
    pub fn push_opus(&mut self, packet: &[u8]) -> Result<Vec<Vec<f32>>, TranscodeError> {
        let n = self.decoder.decode(packet, &mut self.pcm, false)?;
        let samples: Vec<f32> = self.pcm[..n.min(self.pcm.len())]
            .iter()
            .map(|s| to_f32(*s))
            .collect();
        self.resampler.push(&samples)?;
        let mut frames = Vec::new();
        while let Some(f) = self.resampler.pop(FRAME_8K) {
            frames.push(f);
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
        // 1 s in: about 50 frames out (less the resamplers' and codec's delay).
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
