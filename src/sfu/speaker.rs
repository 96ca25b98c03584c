//! Speaker detection for one room from RFC 6464 audio levels: who is speaking (with hysteresis), and
//! the dominant-speaker order.
//!
//! Pure: levels and the time come in as arguments, changes come out as return values.
//!
//! Levels are RFC 6464 `-dBov` values, 0 (loudest) to 127 (silence). Each packet's level moves a
//! smoothed level; a participant counts as "above" while the smoothed level is louder than
//! [`SPEECH_LEVEL`], and as silent while no packet arrives (muted, or DTX, RFC 7587 §3.1.3).
//! `speaking` switches on after [`SPEAKING_ON_AFTER`] above and off after [`SPEAKING_OFF_AFTER`]
//! below, so a short blip or a short pause changes nothing. Speech adds energy (how far above the
//! threshold, times how long) to a sum that decays with [`ENERGY_HALF_LIFE`]; the dominant-speaker
//! list orders everyone who spoke by that sum, recomputed at most once per [`RANKING_INTERVAL`].

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::types::ParticipantId;

/// Smoothed levels at least this loud (`-dBov` at most this) count as speech. Speech is typically
/// -20 to -40 dBov, room noise below -50 dBov.
pub(crate) const SPEECH_LEVEL: f32 = 50.0;

/// Above the threshold this long before `speaking` turns on.
pub(crate) const SPEAKING_ON_AFTER: Duration = Duration::from_millis(200);

/// Below the threshold (or no packets) this long before `speaking` turns off.
pub(crate) const SPEAKING_OFF_AFTER: Duration = Duration::from_millis(600);

/// Least time between two dominant-speaker computations.
pub(crate) const RANKING_INTERVAL: Duration = Duration::from_secs(1);

/// Half-life of the speech energy that orders dominant speakers.
pub(crate) const ENERGY_HALF_LIFE: Duration = Duration::from_secs(3);

/// Without a packet for this long, a participant is silent (Opus sends a packet every 20 ms while
/// not in DTX).
const SILENT_AFTER: Duration = Duration::from_millis(100);

/// Weight of a new packet's level in the smoothed level (a packet per 20 ms: about 60 ms to
/// follow a step).
const SMOOTHING: f32 = 0.3;

/// How often [`SpeakerDetector::poll_timeout`] asks for a tick while someone may change state.
const TICK: Duration = Duration::from_millis(100);

/// A participant's `speaking` flag changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SpeakingChange {
    pub(crate) participant: ParticipantId,
    pub(crate) speaking: bool,
}

#[derive(Debug)]
struct Voice {
    /// Smoothed loudness: 127 minus the smoothed `-dBov` (0 = silence), so larger is louder.
    loudness: f32,
    last_packet: Option<Instant>,
    /// Since when the smoothed level has been on the other side of the threshold from `speaking`.
    crossing_since: Option<Instant>,
    speaking: bool,
    /// Decaying sum of speech energy, valid at `energy_at`.
    energy: f64,
    energy_at: Instant,
    /// Ever spoke since joining: listed among dominant speakers.
    spoke: bool,
}

impl Voice {
    fn new(now: Instant) -> Voice {
        Voice {
            loudness: 0.0,
            last_packet: None,
            crossing_since: None,
            speaking: false,
            energy: 0.0,
            energy_at: now,
            spoke: false,
        }
    }

    fn above(&self, now: Instant) -> bool {
        let fresh = self
            .last_packet
            .is_some_and(|t| now.saturating_duration_since(t) < SILENT_AFTER);
        fresh && self.loudness >= 127.0 - SPEECH_LEVEL
    }

    /// Moves the energy sum to `now`: decay, plus the speech since `energy_at` when above.
    fn accumulate(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.energy_at).as_secs_f64();
        if dt == 0.0 {
            return;
        }
        let decay = 0.5f64.powf(dt / ENERGY_HALF_LIFE.as_secs_f64());
        self.energy *= decay;
        if self.above(self.energy_at) {
            let excess = f64::from(self.loudness - (127.0 - SPEECH_LEVEL)) + 1.0;
            self.energy += excess * dt;
            self.spoke = true;
        }
        self.energy_at = now;
    }

    /// Applies the hysteresis at `now`; returns the new `speaking` when it flips.
    fn update(&mut self, now: Instant) -> Option<bool> {
        if self.above(now) == self.speaking {
            self.crossing_since = None;
            return None;
        }
        let since = *self.crossing_since.get_or_insert_with(|| {
            // Silence starts when the last packet stopped being fresh, not when we notice.
            match self.last_packet {
                Some(t) if self.speaking && now.saturating_duration_since(t) >= SILENT_AFTER => {
                    t + SILENT_AFTER
                }
                _ => now,
            }
        });
        let needed = if self.speaking {
            SPEAKING_OFF_AFTER
        } else {
            SPEAKING_ON_AFTER
        };
        if now.saturating_duration_since(since) >= needed {
            self.speaking = !self.speaking;
            self.crossing_since = None;
            return Some(self.speaking);
        }
        None
    }
}

/// Speaker state of one room.
#[derive(Debug, Default)]
pub(crate) struct SpeakerDetector {
    voices: HashMap<ParticipantId, Voice>,
    /// The last emitted dominant-speaker order.
    ranking: Vec<ParticipantId>,
    last_ranking: Option<Instant>,
    /// Latest time given to any method.
    last_seen: Option<Instant>,
    last_tick: Option<Instant>,
    /// Energy or membership changed since the last ranking: one is due. (Pure decay keeps the
    /// order, so a silent room needs no more rankings.)
    dirty: bool,
}

impl SpeakerDetector {
    /// Records one audio packet's level (RFC 6464 `-dBov`, 0..=127; larger values are clamped) from
    /// `participant`. Returns a change of its `speaking` flag.
    pub(crate) fn observe(
        &mut self,
        now: Instant,
        participant: ParticipantId,
        level: u8,
    ) -> Option<SpeakingChange> {
        let voice = self
            .voices
            .entry(participant)
            .or_insert_with(|| Voice::new(now));
        voice.accumulate(now);
        let loudness = 127.0 - f32::from(level.min(127));
        voice.loudness = if voice
            .last_packet
            .is_some_and(|t| now.saturating_duration_since(t) < SILENT_AFTER)
        {
            voice.loudness + SMOOTHING * (loudness - voice.loudness)
        } else {
            // After silence the first packet counts at its weight against zero loudness.
            SMOOTHING * loudness
        };
        voice.last_packet = Some(now);
        self.last_seen = self.last_seen.max(Some(now));
        self.dirty = true;
        voice.update(now).map(|speaking| SpeakingChange {
            participant,
            speaking,
        })
    }

    /// Forgets `participant` (it left). Its absence shows in the next ranking.
    pub(crate) fn remove(&mut self, participant: ParticipantId) {
        if self.voices.remove(&participant).is_some() {
            self.dirty = true;
        }
    }

    /// Advances time: flips `speaking` of participants that fell silent (or were above long
    /// enough), and, at most once per [`RANKING_INTERVAL`], returns the dominant-speaker order if
    /// it changed since it was last returned.
    pub(crate) fn tick(
        &mut self,
        now: Instant,
        changes: &mut Vec<SpeakingChange>,
    ) -> Option<Vec<ParticipantId>> {
        self.last_seen = self.last_seen.max(Some(now));
        self.last_tick = Some(now);
        let mut ids: Vec<ParticipantId> = self.voices.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            let Some(voice) = self.voices.get_mut(&id) else {
                continue;
            };
            voice.accumulate(now);
            if let Some(speaking) = voice.update(now) {
                changes.push(SpeakingChange {
                    participant: id,
                    speaking,
                });
            }
        }
        if self
            .last_ranking
            .is_some_and(|t| now.saturating_duration_since(t) < RANKING_INTERVAL)
        {
            return None;
        }
        if !self.dirty {
            return None;
        }
        self.last_ranking = Some(now);
        self.dirty = self
            .voices
            .values()
            .any(|v| v.speaking || v.crossing_since.is_some() || v.above(now));
        let ranking = self.rank();
        if ranking == self.ranking {
            return None;
        }
        self.ranking = ranking.clone();
        Some(ranking)
    }

    /// When [`SpeakerDetector::tick`] should run next; `None` while nothing can change.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        let busy = self
            .voices
            .values()
            .any(|v| v.speaking || v.crossing_since.is_some());
        if busy {
            return Some(self.last_tick.or(self.last_seen)? + TICK);
        }
        if self.dirty {
            return Some(match self.last_ranking {
                Some(t) => t + RANKING_INTERVAL,
                None => self.last_seen?,
            });
        }
        None
    }

    /// Everyone who spoke, by energy (ties: previous order, then id).
    fn rank(&self) -> Vec<ParticipantId> {
        let previous = |p: &ParticipantId| {
            self.ranking
                .iter()
                .position(|q| q == p)
                .unwrap_or(usize::MAX)
        };
        let mut ranked: Vec<(ParticipantId, f64)> = self
            .voices
            .iter()
            .filter(|(_, v)| v.spoke)
            .map(|(id, v)| (*id, v.energy))
            .collect();
        ranked.sort_by(|(a, ea), (b, eb)| {
            eb.total_cmp(ea)
                .then_with(|| previous(a).cmp(&previous(b)))
                .then_with(|| a.cmp(b))
        });
        ranked.into_iter().map(|(id, _)| id).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: ParticipantId = ParticipantId(1);
    const B: ParticipantId = ParticipantId(2);
    const C: ParticipantId = ParticipantId(3);

    const LOUD: u8 = 25;
    const QUIET: u8 = 40;
    const SILENT: u8 = 127;

    /// A room on a virtual clock: 20 ms audio packets, ticking as an IO shell would.
    struct Room {
        t0: Instant,
        now: Instant,
        detector: SpeakerDetector,
        changes: Vec<SpeakingChange>,
        rankings: Vec<(Duration, Vec<ParticipantId>)>,
    }

    impl Room {
        fn new() -> Room {
            let now = Instant::now();
            Room {
                t0: now,
                now,
                detector: SpeakerDetector::default(),
                changes: Vec::new(),
                rankings: Vec::new(),
            }
        }

        /// `duration` of 20 ms packets; `levels` gives each sender's level (`None`: sends nothing).
        fn run(&mut self, duration: Duration, levels: &[(ParticipantId, Option<u8>)]) {
            let end = self.now + duration;
            while self.now < end {
                self.now += Duration::from_millis(20);
                for (p, level) in levels {
                    if let Some(level) = level
                        && let Some(c) = self.detector.observe(self.now, *p, *level)
                    {
                        self.changes.push(c);
                    }
                }
                if self.detector.poll_timeout().is_some_and(|t| t <= self.now) {
                    let mut changes = Vec::new();
                    if let Some(r) = self.detector.tick(self.now, &mut changes) {
                        self.rankings.push((self.now - self.t0, r));
                    }
                    self.changes.extend(changes);
                }
            }
        }

        fn flips(&self, p: ParticipantId) -> Vec<bool> {
            self.changes
                .iter()
                .filter(|c| c.participant == p)
                .map(|c| c.speaking)
                .collect()
        }

        fn last_ranking(&self) -> Option<&[ParticipantId]> {
            self.rankings.last().map(|(_, r)| r.as_slice())
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn speaking_turns_on_after_sustained_speech_and_off_after_sustained_silence() {
        let mut room = Room::new();
        room.run(ms(500), &[(A, Some(SILENT))]);
        assert!(room.flips(A).is_empty());
        room.run(ms(180), &[(A, Some(LOUD))]);
        assert!(room.flips(A).is_empty(), "not before ~200 ms of speech");
        room.run(ms(200), &[(A, Some(LOUD))]);
        assert_eq!(room.flips(A), [true]);
        room.run(ms(500), &[(A, Some(SILENT))]);
        assert_eq!(room.flips(A), [true], "a pause under 600 ms keeps speaking");
        room.run(ms(300), &[(A, Some(SILENT))]);
        assert_eq!(room.flips(A), [true, false]);
    }

    #[test]
    fn short_blip_and_short_pause_do_not_flap() {
        let mut room = Room::new();
        room.run(ms(300), &[(A, Some(SILENT))]);
        room.run(ms(100), &[(A, Some(LOUD))]);
        room.run(ms(1000), &[(A, Some(SILENT))]);
        assert!(room.flips(A).is_empty(), "a 100 ms blip is no speech");

        room.run(ms(1000), &[(A, Some(LOUD))]);
        for _ in 0..5 {
            room.run(ms(100), &[(A, Some(SILENT))]);
            room.run(ms(400), &[(A, Some(LOUD))]);
        }
        assert_eq!(room.flips(A), [true], "100 ms gaps in speech keep speaking");
    }

    #[test]
    fn no_packets_is_silence() {
        let mut room = Room::new();
        room.run(ms(1000), &[(A, Some(LOUD))]);
        assert_eq!(room.flips(A), [true]);
        // Muted or DTX: nothing arrives, only timers run.
        room.run(ms(500), &[(A, None)]);
        assert_eq!(room.flips(A), [true]);
        room.run(ms(400), &[(A, None)]);
        assert_eq!(room.flips(A), [true, false]);
        // Nothing is pending once everything settled.
        room.run(ms(3000), &[(A, None)]);
        assert_eq!(room.detector.poll_timeout(), None);
    }

    #[test]
    fn background_noise_is_not_speech() {
        let mut room = Room::new();
        room.run(ms(3000), &[(A, Some(70)), (B, Some(SILENT))]);
        assert!(room.flips(A).is_empty());
        assert!(room.rankings.iter().all(|(_, r)| r.is_empty()));
    }

    #[test]
    fn dominant_speakers_follow_recent_speech_energy() {
        let mut room = Room::new();
        room.run(
            ms(3000),
            &[(A, Some(LOUD)), (B, Some(SILENT)), (C, Some(SILENT))],
        );
        assert_eq!(room.last_ranking(), Some(&[A][..]));
        room.run(
            ms(2000),
            &[(A, Some(SILENT)), (B, Some(QUIET)), (C, Some(SILENT))],
        );
        room.run(
            ms(6000),
            &[(A, Some(SILENT)), (B, Some(LOUD)), (C, Some(SILENT))],
        );
        assert_eq!(room.last_ranking(), Some(&[B, A][..]));
        // Everyone silent: energies decay alike, the order stays and nothing more is emitted.
        let emitted = room.rankings.len();
        room.run(ms(10_000), &[(A, None), (B, None), (C, None)]);
        assert_eq!(room.rankings.len(), emitted);
        assert_eq!(room.detector.poll_timeout(), None);
    }

    #[test]
    fn rankings_are_at_most_once_per_second_and_only_on_change() {
        let mut room = Room::new();
        // A and B take turns every 700 ms for 20 s.
        for turn in 0..28 {
            let (talker, listener) = if turn % 2 == 0 { (A, B) } else { (B, A) };
            room.run(ms(700), &[(talker, Some(LOUD)), (listener, Some(SILENT))]);
        }
        for pair in room.rankings.windows(2) {
            assert!(
                pair[1].0 - pair[0].0 >= RANKING_INTERVAL,
                "{:?}",
                room.rankings
            );
            assert_ne!(pair[0].1, pair[1].1, "only changes are emitted");
        }
        assert!(!room.rankings.is_empty());
    }

    #[test]
    fn leaving_speaker_is_dropped_from_the_ranking() {
        let mut room = Room::new();
        room.run(ms(2000), &[(A, Some(LOUD)), (B, Some(SILENT))]);
        room.run(ms(2000), &[(A, Some(SILENT)), (B, Some(LOUD))]);
        assert_eq!(room.last_ranking().map(<[_]>::len), Some(2));
        room.detector.remove(B);
        room.run(ms(1100), &[(A, Some(SILENT))]);
        assert_eq!(room.last_ranking(), Some(&[A][..]));
    }
}
