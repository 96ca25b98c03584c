//! Synthetic media payloads: Opus-sized audio frames and VP8-shaped video frames that carry a [`Stamp`] (who sent
//! the frame, which frame, and when), so receivers can measure added forwarding latency and loss.
//!
//! The SFU forwards in str0m frame mode (depacketize, repacketize), so the stamp sits inside the frame:
//! - audio: byte 0 is an Opus TOC byte (`0xF8`: CELT fullband 20 ms, mono, one frame), the stamp follows;
//! - video: a 10-byte VP8 frame head (RFC 6386 §9.1): on a keyframe the 3-byte frame tag with bit 0 clear, the start
//!   code `9d 01 2a` and the 14-bit width and height the SFU reads to rank simulcast layers; on a delta frame a tag
//!   with bit 0 set and seven zero bytes. The stamp follows at byte 10.
//!
//! The rest of a frame is filler up to the requested size.

/// Magic bytes that start a stamp ("SB").
const MAGIC: [u8; 2] = [0x53, 0x42];
/// Encoded length of a [`Stamp`], bytes.
pub const STAMP_LEN: usize = 20;
/// Where the stamp starts in an audio frame, bytes.
pub const AUDIO_STAMP_OFFSET: usize = 1;
/// Where the stamp starts in a VP8 frame, bytes.
pub const VIDEO_STAMP_OFFSET: usize = 10;
/// Opus TOC byte of the synthetic audio frames.
const OPUS_TOC: u8 = 0xf8;

/// What a track carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// Opus-sized audio, 50 frames/s.
    Audio,
    /// VP8-shaped video.
    Video,
}

/// The identity and send time of one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Index of the publishing client in this run.
    pub publisher: u32,
    /// Audio or video.
    pub kind: Kind,
    /// Simulcast layer (0 lowest); 0 without simulcast.
    pub layer: u8,
    /// Frame number on the track, from 0; the same on every simulcast layer for the same instant.
    pub seq: u32,
    /// Send time, microseconds since the run's epoch (one process, one monotonic clock).
    pub sent_us: u64,
}

impl Stamp {
    /// Writes the stamp into `out[..STAMP_LEN]`.
    ///
    /// # Panics
    /// If `out` is shorter than [`STAMP_LEN`] (callers size frames to at least that).
    pub fn encode(&self, out: &mut [u8]) {
        let out = &mut out[..STAMP_LEN];
        out[0..2].copy_from_slice(&MAGIC);
        out[2..6].copy_from_slice(&self.publisher.to_be_bytes());
        out[6] = match self.kind {
            Kind::Audio => 0,
            Kind::Video => 1,
        };
        out[7] = self.layer;
        out[8..12].copy_from_slice(&self.seq.to_be_bytes());
        out[12..20].copy_from_slice(&self.sent_us.to_be_bytes());
    }

    /// Reads a stamp from the start of `bytes`; `None` if too short or not a stamp.
    pub fn decode(bytes: &[u8]) -> Option<Stamp> {
        let b = bytes.get(..STAMP_LEN)?;
        if b[0..2] != MAGIC {
            return None;
        }
        let kind = match b[6] {
            0 => Kind::Audio,
            1 => Kind::Video,
            _ => return None,
        };
        // The slices below have the exact lengths of the arrays, so the conversions cannot fail.
        Some(Stamp {
            publisher: u32::from_be_bytes(b[2..6].try_into().expect("4 bytes")),
            kind,
            layer: b[7],
            seq: u32::from_be_bytes(b[8..12].try_into().expect("4 bytes")),
            sent_us: u64::from_be_bytes(b[12..20].try_into().expect("8 bytes")),
        })
    }
}

/// An audio frame of `size` bytes (at least 1 + [`STAMP_LEN`]) carrying `stamp`.
pub fn audio_frame(stamp: &Stamp, size: usize) -> Vec<u8> {
    let mut f = vec![0u8; size.max(AUDIO_STAMP_OFFSET + STAMP_LEN)];
    f[0] = OPUS_TOC;
    stamp.encode(&mut f[AUDIO_STAMP_OFFSET..]);
    f
}

/// A VP8-shaped frame of `size` bytes (at least 10 + [`STAMP_LEN`]) carrying `stamp`; a keyframe when `key` gives
/// its picture size (width, height in pixels, below 16384).
pub fn vp8_frame(stamp: &Stamp, size: usize, key: Option<(u16, u16)>) -> Vec<u8> {
    let mut f = vec![0u8; size.max(VIDEO_STAMP_OFFSET + STAMP_LEN)];
    match key {
        Some((w, h)) => {
            // Frame tag: keyframe (bit 0 clear), version 0, show_frame; then the start code and the size.
            f[..6].copy_from_slice(&[0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a]);
            f[6..8].copy_from_slice(&(w & 0x3fff).to_le_bytes());
            f[8..10].copy_from_slice(&(h & 0x3fff).to_le_bytes());
        }
        None => f[..3].copy_from_slice(&[0x11, 0x02, 0x00]),
    }
    stamp.encode(&mut f[VIDEO_STAMP_OFFSET..]);
    for (i, b) in f[VIDEO_STAMP_OFFSET + STAMP_LEN..].iter_mut().enumerate() {
        *b = i as u8; // filler that does not compress to nothing
    }
    f
}

/// The stamp in a received frame of `kind`, if it carries one.
pub fn stamp_of(kind: Kind, frame: &[u8]) -> Option<Stamp> {
    let offset = match kind {
        Kind::Audio => AUDIO_STAMP_OFFSET,
        Kind::Video => VIDEO_STAMP_OFFSET,
    };
    Stamp::decode(frame.get(offset..)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(kind: Kind) -> Stamp {
        Stamp {
            publisher: 7,
            kind,
            layer: 2,
            seq: 0xdead_beef,
            sent_us: 1_234_567_890_123,
        }
    }

    #[test]
    fn stamp_round_trips() {
        for kind in [Kind::Audio, Kind::Video] {
            let mut buf = [0u8; STAMP_LEN];
            stamp(kind).encode(&mut buf);
            assert_eq!(Stamp::decode(&buf), Some(stamp(kind)));
        }
    }

    #[test]
    fn garbage_is_not_a_stamp() {
        assert_eq!(Stamp::decode(&[0x53, 0x42, 0, 0]), None);
        assert_eq!(Stamp::decode(&[0u8; 40]), None);
        let mut buf = [0u8; STAMP_LEN];
        stamp(Kind::Audio).encode(&mut buf);
        buf[6] = 9;
        assert_eq!(Stamp::decode(&buf), None);
    }

    #[test]
    fn audio_frame_is_opus_sized_and_stamped() {
        let f = audio_frame(&stamp(Kind::Audio), 80);
        assert_eq!(f.len(), 80);
        assert_eq!(f[0], 0xf8);
        assert_eq!(stamp_of(Kind::Audio, &f), Some(stamp(Kind::Audio)));
        assert_eq!(audio_frame(&stamp(Kind::Audio), 3).len(), 1 + STAMP_LEN);
    }

    #[test]
    fn vp8_keyframe_carries_the_size_the_sfu_reads() {
        let f = vp8_frame(&stamp(Kind::Video), 3000, Some((1280, 720)));
        assert_eq!(f.len(), 3000);
        assert_eq!(f[0] & 1, 0, "keyframe bit clear");
        assert_eq!(&f[3..6], &[0x9d, 0x01, 0x2a]);
        assert_eq!(u16::from_le_bytes([f[6], f[7]]) & 0x3fff, 1280);
        assert_eq!(u16::from_le_bytes([f[8], f[9]]) & 0x3fff, 720);
        assert_eq!(stamp_of(Kind::Video, &f), Some(stamp(Kind::Video)));
        let d = vp8_frame(&stamp(Kind::Video), 500, None);
        assert_eq!(d[0] & 1, 1, "delta frame");
        assert_eq!(stamp_of(Kind::Video, &d), Some(stamp(Kind::Video)));
    }
}
