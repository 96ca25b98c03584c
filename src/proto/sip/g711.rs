//! G.711 µ-law and A-law (ITU-T G.711), 8 kHz, one byte per sample, to and from 16-bit linear PCM.

const BIAS: i32 = 0x84;
const CLIP: i32 = 32635;

/// Encodes one 16-bit sample to µ-law.
pub fn ulaw_encode(sample: i16) -> u8 {
    let mut s = i32::from(sample);
    let sign = if s < 0 {
        s = -s;
        0x80
    } else {
        0
    };
    s = s.min(CLIP) + BIAS;
    let mut exponent = 7;
    let mut mask = 0x4000;
    while exponent > 0 && s & mask == 0 {
        exponent -= 1;
        mask >>= 1;
    }
    let mantissa = (s >> (exponent + 3)) & 0x0f;
    !(sign | (exponent << 4) as u8 | mantissa as u8)
}

/// Decodes one µ-law byte to a 16-bit sample.
pub fn ulaw_decode(byte: u8) -> i16 {
    let u = !byte;
    let sign = u & 0x80;
    let exponent = i32::from((u >> 4) & 0x07);
    let mantissa = i32::from(u & 0x0f);
    let magnitude = (((mantissa << 3) + BIAS) << exponent) - BIAS;
    // magnitude is at most ((15 << 3) + 132) << 7 - 132 = 32124, within i16.
    let m = magnitude as i16;
    if sign != 0 { -m } else { m }
}

/// Encodes one 16-bit sample to A-law.
pub fn alaw_encode(sample: i16) -> u8 {
    let mut s = i32::from(sample) >> 3; // 13-bit magnitude domain
    let sign = if s >= 0 {
        0x80
    } else {
        s = -s - 1;
        0
    };
    let s = s.min(0x0fff);
    let byte = if s < 32 {
        (s >> 1) as u8
    } else {
        let mut seg = 1;
        let mut v = s >> 5;
        while v > 1 {
            v >>= 1;
            seg += 1;
        }
        ((seg << 4) | ((s >> seg) & 0x0f)) as u8
    };
    (byte | sign) ^ 0x55
}

/// Decodes one A-law byte to a 16-bit sample.
pub fn alaw_decode(byte: u8) -> i16 {
    let a = byte ^ 0x55;
    let seg = i32::from((a >> 4) & 0x07);
    let mant = i32::from(a & 0x0f);
    let mag = if seg == 0 {
        (mant << 4) + 8
    } else {
        ((mant << 4) + 0x108) << (seg - 1)
    };
    // mag is at most ((15 << 4) + 0x108) << 6 = 32256, within i16.
    let m = mag as i16;
    if a & 0x80 != 0 { m } else { -m }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_stay_close() {
        for s in (-32768i32..=32767).step_by(97) {
            let s = s as i16;
            let u = ulaw_decode(ulaw_encode(s));
            let a = alaw_decode(alaw_encode(s));
            let tol = (i32::from(s).abs() / 16).max(16);
            assert!(
                (i32::from(u) - i32::from(s)).abs() <= tol * 2,
                "ulaw {s} -> {u}"
            );
            assert!(
                (i32::from(a) - i32::from(s)).abs() <= tol * 2,
                "alaw {s} -> {a}"
            );
        }
    }

    #[test]
    fn known_codes() {
        // Silence: µ-law 0xff, A-law 0xd5 (G.711 tables).
        assert_eq!(ulaw_encode(0), 0xff);
        assert_eq!(alaw_encode(0), 0xd5);
        assert_eq!(ulaw_decode(0xff), 0);
        assert_eq!(ulaw_decode(0x00), -32124);
        assert_eq!(ulaw_decode(0x80), 32124);
        assert_eq!(alaw_decode(0xd5), 8);
        assert_eq!(alaw_decode(0xaa), 32256);
        assert_eq!(alaw_decode(0x2a), -32256);
    }

    #[test]
    fn every_byte_decodes_and_re_encodes_to_itself() {
        for b in 0..=255u8 {
            assert_eq!(alaw_encode(alaw_decode(b)), b, "alaw {b:#x}");
            let u = ulaw_encode(ulaw_decode(b));
            // 0x7f and 0xff both decode to 0 (µ-law has two zeros).
            assert!(u == b || (b == 0x7f && u == 0xff), "ulaw {b:#x} -> {u:#x}");
        }
    }
}
