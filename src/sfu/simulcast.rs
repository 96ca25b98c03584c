//! Simulcast: measuring the layers (RFC 8853 rids) a publisher sends on one m-line, and choosing the
//! layer each subscriber m-line gets.
//!
//! Layers are ranked by the resolution their keyframes carry (VP8, RFC 6386 §9.1), or, when a
//! layer's resolution is unknown, by the bitrate measured over the last [`RATE_WINDOW`]: never by
//! the order of the rids in the SDP (Chrome lists them low -> high, Firefox high -> low).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use str0m::media::{MediaData, Rid};

/// Window of the per-layer bitrate measurement.
pub(crate) const RATE_WINDOW: Duration = Duration::from_secs(2);

/// A layer that sent nothing for this long is taken as paused and not chosen.
const LAYER_IDLE: Duration = Duration::from_secs(1);

/// How long after its first layer a track waits for the others before any is chosen, so that
/// subscribers do not start on whichever layer arrived first and switch right after.
const SETTLE: Duration = Duration::from_millis(500);

/// Headroom the downlink estimate must have over a higher layer's bitrate before switching up to it,
/// so a subscriber near a threshold does not flap between two layers.
const UPGRADE_HEADROOM: f64 = 1.15;

/// One layer of a publisher track, as the selection sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct LayerView {
    pub(crate) rid: Rid,
    /// From the layer's last keyframe; 0 when unknown.
    pub(crate) width: u32,
    pub(crate) height: u32,
    /// Measured over the last [`RATE_WINDOW`], in bit/s.
    pub(crate) bitrate: u64,
    /// Whether `bitrate` was measured over a whole [`RATE_WINDOW`] of sending: not while the
    /// layer is paused (dynacast), nor for that long after it resumed. A layer paused during the
    /// publisher's start-up ramp keeps the low rate it had then.
    pub(crate) measured: bool,
}

#[derive(Debug)]
struct LayerStats {
    rid: Rid,
    width: u32,
    height: u32,
    /// (arrival, bytes) of the frames within the window.
    window: VecDeque<(Instant, usize)>,
    first_seen: Instant,
    last_seen: Instant,
    /// Paused at the publisher by the SFU (dynacast): still a candidate, with the bitrate it had.
    paused: Option<u64>,
    /// Bitrate it had before a pause, used until its first frame after the pause.
    resuming: Option<u64>,
    /// Its first frame after the last pause.
    resumed_at: Option<Instant>,
}

/// The layers of one publisher m-line.
#[derive(Debug, Default)]
pub(crate) struct TrackLayers {
    layers: Vec<LayerStats>,
    first_seen: Option<Instant>,
}

impl TrackLayers {
    /// Accounts a received frame of layer `rid`.
    pub(crate) fn observe(&mut self, rid: Rid, data: &MediaData) {
        let at = data.network_time;
        self.first_seen.get_or_insert(at);
        let index = match self.layers.iter().position(|l| l.rid == rid) {
            Some(i) => i,
            None => {
                self.layers.push(LayerStats {
                    rid,
                    width: 0,
                    height: 0,
                    window: VecDeque::new(),
                    first_seen: at,
                    last_seen: at,
                    paused: None,
                    resuming: None,
                    resumed_at: None,
                });
                self.layers.len() - 1
            }
        };
        let Some(layer) = self.layers.get_mut(index) else {
            return;
        };
        layer.last_seen = layer.last_seen.max(at);
        // A paused layer stays paused here: its frames may still be in flight, or the publisher
        // may not pause layers at all.
        if layer.resuming.take().is_some() {
            layer.resumed_at = Some(at);
        }
        layer.window.push_back((at, data.data.len()));
        prune(layer, at);
        if data.is_keyframe()
            && let Some((w, h)) = keyframe_resolution(data)
        {
            layer.width = w;
            layer.height = h;
        }
    }

    /// The live layers, lowest quality first: by resolution when every live layer's is known, else
    /// by measured bitrate. Empty while fewer than `expected` layers were seen, for [`SETTLE`].
    pub(crate) fn ranked(&self, now: Instant, expected: usize) -> Vec<LayerView> {
        if self.layers.len() < expected
            && self
                .first_seen
                .is_none_or(|t| now.saturating_duration_since(t) < SETTLE)
        {
            return Vec::new();
        }
        let mut views: Vec<LayerView> = self
            .layers
            .iter()
            .filter(|l| {
                l.paused.is_some() || now.saturating_duration_since(l.last_seen) < LAYER_IDLE
            })
            .map(|l| LayerView {
                rid: l.rid,
                width: l.width,
                height: l.height,
                bitrate: l.paused.or(l.resuming).unwrap_or_else(|| bitrate(l, now)),
                measured: l.paused.is_none()
                    && l.resuming.is_none()
                    && l.resumed_at
                        .is_none_or(|t| now.saturating_duration_since(t) >= RATE_WINDOW),
            })
            .collect();
        if views.iter().all(|v| v.width > 0 && v.height > 0) {
            views.sort_by_key(|v| (u64::from(v.width) * u64::from(v.height), v.bitrate));
        } else {
            views.sort_by_key(|v| v.bitrate);
        }
        views
    }
}

impl TrackLayers {
    /// Marks layer `rid` paused at the publisher (dynacast): it stays a candidate of
    /// [`TrackLayers::ranked`] with the bitrate measured now, until its frames come again.
    pub(crate) fn pause(&mut self, rid: Rid, now: Instant) {
        if let Some(l) = self.layers.iter_mut().find(|l| l.rid == rid) {
            l.paused = Some(bitrate(l, now));
        }
    }

    /// Ends the pause of layer `rid` (the publisher was asked to send it again): it counts as live
    /// for [`LAYER_IDLE`] from `now`, and is dropped from the candidates if no frame comes by then.
    pub(crate) fn resume(&mut self, rid: Rid, now: Instant) {
        if let Some(l) = self.layers.iter_mut().find(|l| l.rid == rid)
            && l.paused.is_some()
        {
            l.resuming = l.paused.take();
            l.last_seen = l.last_seen.max(now);
        }
    }

    /// Whether the SFU paused layer `rid`.
    pub(crate) fn is_paused(&self, rid: Rid) -> bool {
        self.layers
            .iter()
            .any(|l| l.rid == rid && l.paused.is_some())
    }
}

fn prune(layer: &mut LayerStats, now: Instant) {
    while let Some(&(at, _)) = layer.window.front() {
        if now.saturating_duration_since(at) <= RATE_WINDOW {
            break;
        }
        layer.window.pop_front();
    }
}

fn bitrate(layer: &LayerStats, now: Instant) -> u64 {
    let bytes: usize = layer
        .window
        .iter()
        .filter(|(at, _)| now.saturating_duration_since(*at) <= RATE_WINDOW)
        .map(|(_, len)| len)
        .sum();
    // A young layer is measured over the time it had to send, at least 250 ms.
    let span = now
        .saturating_duration_since(layer.first_seen)
        .clamp(Duration::from_millis(250), RATE_WINDOW);
    (bytes as f64 * 8.0 / span.as_secs_f64()) as u64
}

/// The picture size of a keyframe, where the codec carries it in the frame itself.
fn keyframe_resolution(data: &MediaData) -> Option<(u32, u32)> {
    let codec = data.params.spec().codec;
    match codec {
        str0m::format::Codec::Vp8 => vp8_keyframe_size(&data.data),
        _ => None,
    }
}

/// VP8 key frame header (RFC 6386 §9.1): 3-byte frame tag with bit 0 clear, start code
/// `9d 01 2a`, then 14-bit width and height (little endian, upper 2 bits are scaling).
pub(crate) fn vp8_keyframe_size(frame: &[u8]) -> Option<(u32, u32)> {
    let header = frame.get(..10)?;
    if header[0] & 1 != 0 || header[3..6] != [0x9d, 0x01, 0x2a] {
        return None;
    }
    let w = u32::from(u16::from_le_bytes([header[6], header[7]]) & 0x3fff);
    let h = u32::from(u16::from_le_bytes([header[8], header[9]]) & 0x3fff);
    (w > 0 && h > 0).then_some((w, h))
}

/// The layer a subscriber m-line should get: the smallest layer at least `preferred` (the top one
/// without a preference, or when none is large enough or sizes are unknown), then lowered to the
/// highest layer whose bitrate fits `budget` (bit/s; the lowest when none fits). `current` is the
/// layer forwarded now: moving above it needs [`UPGRADE_HEADROOM`]. `None` when the track has no
/// live layer or the m-line is not rendered (`0 x 0`).
pub(crate) fn select(
    layers: &[LayerView],
    preferred: Option<(u32, u32)>,
    budget: Option<u64>,
    current: Option<Rid>,
) -> Option<Rid> {
    if preferred == Some((0, 0)) || layers.is_empty() {
        return None;
    }
    let top = layers.len() - 1;
    let mut index = match preferred {
        None => top,
        Some((pw, ph)) => {
            if layers.iter().any(|l| l.width == 0 || l.height == 0) {
                top
            } else {
                layers
                    .iter()
                    .position(|l| l.width >= pw && l.height >= ph)
                    .unwrap_or(top)
            }
        }
    };
    if let Some(budget) = budget {
        let current_index = current.and_then(|c| layers.iter().position(|l| l.rid == c));
        while index > 0 {
            let needed = needed_rate(layers, index) as f64;
            let needed = if current_index.is_some_and(|c| index > c) {
                needed * UPGRADE_HEADROOM
            } else {
                needed
            };
            if needed <= budget as f64 {
                break;
            }
            index -= 1;
        }
    }
    layers.get(index).map(|l| l.rid)
}

/// The rate layer `index` needs, bit/s: its bitrate, and for a layer not [`LayerView::measured`]
/// at least twice what the layer below needs (a larger picture costs more; a paused layer's rate
/// may be from the publisher's start-up ramp), so that a budget does not resume it on a stale
/// low rate.
fn needed_rate(layers: &[LayerView], index: usize) -> u64 {
    layers.iter().take(index + 1).fold(0, |below, l| {
        if l.measured {
            l.bitrate
        } else {
            l.bitrate.max(below * 2)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(rid: &str, width: u32, height: u32, bitrate: u64) -> LayerView {
        LayerView {
            rid: rid.into(),
            width,
            height,
            bitrate,
            measured: true,
        }
    }

    fn layers() -> Vec<LayerView> {
        vec![
            view("q", 320, 180, 150_000),
            view("h", 640, 360, 500_000),
            view("f", 1280, 720, 1_500_000),
        ]
    }

    #[test]
    fn smallest_layer_at_least_the_preferred_size() {
        let l = layers();
        assert_eq!(select(&l, Some((1280, 720)), None, None), Some("f".into()));
        assert_eq!(select(&l, Some((320, 180)), None, None), Some("q".into()));
        assert_eq!(select(&l, Some((321, 180)), None, None), Some("h".into()));
        assert_eq!(select(&l, Some((1920, 1080)), None, None), Some("f".into()));
        assert_eq!(select(&l, None, None, None), Some("f".into()));
        assert_eq!(select(&l, Some((0, 0)), None, None), None);
        assert_eq!(select(&[], None, None, None), None);
    }

    #[test]
    fn budget_caps_the_layer_with_headroom_to_go_up() {
        let l = layers();
        assert_eq!(select(&l, None, Some(1_000_000), None), Some("h".into()));
        assert_eq!(select(&l, None, Some(100_000), None), Some("q".into()));
        assert_eq!(
            select(&l, None, Some(1_600_000), Some("h".into())),
            Some("h".into())
        );
        assert_eq!(
            select(&l, None, Some(1_600_000), Some("f".into())),
            Some("f".into())
        );
        assert_eq!(
            select(&l, None, Some(1_800_000), Some("h".into())),
            Some("f".into())
        );
    }

    #[test]
    fn vp8_keyframe_header_gives_the_size() {
        let key = [
            0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a, 0x00, 0x05, 0xd0, 0x02, 0,
        ];
        assert_eq!(vp8_keyframe_size(&key), Some((1280, 720)));
        let delta = [
            0x11, 0x02, 0x00, 0x9d, 0x01, 0x2a, 0x00, 0x05, 0xd0, 0x02, 0,
        ];
        assert_eq!(vp8_keyframe_size(&delta), None);
        assert_eq!(vp8_keyframe_size(&key[..5]), None);
    }

    #[test]
    fn a_budget_does_not_resume_a_layer_on_the_low_rate_it_was_paused_at() {
        // h paused while the publisher ramped up: its recorded 100 kbit/s would fit 192.
        let mut l = layers();
        l[0].bitrate = 147_000;
        l[1].bitrate = 100_000;
        l[1].measured = false;
        let q = Some(Rid::from("q"));
        assert_eq!(select(&l, Some((1280, 720)), Some(192_000), q), q);
        // Twice the layer below, with the switch-up headroom, fits: chosen.
        assert_eq!(
            select(&l, Some((1280, 720)), Some(340_000), q),
            Some(Rid::from("h"))
        );
        // Measured again: its own rate counts.
        l[1].measured = true;
        assert_eq!(
            select(&l, Some((1280, 720)), Some(192_000), q),
            Some(Rid::from("h"))
        );
    }
}
