//! Keeps a constrained subscriber's video out of a backed-up pacer queue.
//!
//! str0m paces what it was handed at about its bandwidth estimate and cannot take a packet back
//! out of its queue. When a downlink narrows, the estimate lags behind it: frames of the larger
//! layer handed over meanwhile wait in the queue and then drain into the narrow link for seconds,
//! at high loss, delaying the lower layer behind them (its keyframe included). So the SFU stops
//! handing over video once the queue holds more than [`PAUSE_AT`] of it beyond what the last
//! keyframe written explains (a keyframe is paced out over hundreds of milliseconds on a narrow
//! link; that alone is no congestion). Frames are then dropped at the SFU, where nothing was
//! sent of them yet, until the queue is down to [`RESUME_AT`]; the m-line resumes at a keyframe of
//! the layer chosen then (asked for through the throttled keyframe request path), so the
//! subscriber's decoder never sees a frame whose reference was dropped.
//!
//! Only while the downlink is constrained ([`super::downlink::Downlink::budget`]) and the m-line
//! still carries a larger layer than the one chosen for it (a switch down is pending): on a link
//! not known to be narrow, a queue is the estimate lagging behind a rate just switched up to,
//! which the pacer catches up with; on the layer chosen, frames fit the estimate, and a queue is
//! resends of what the larger layer lost (str0m clears them past its RTX ratio cap) or an
//! estimate below the lowest layer, which dropping frames for keyframes only makes worse. Audio
//! never goes through the gate (str0m does not pace it).

use std::time::{Duration, Instant};

/// Pacer backlog, beyond what the last keyframe still explains, at which video stops being
/// handed to str0m. Five frames of a layer sent at twice the estimate; a keyframe alone stays
/// under it, whatever its size.
pub(crate) const PAUSE_AT: Duration = Duration::from_millis(300);

/// Pacer backlog at or below which a paused m-line waits for a keyframe to resume: the
/// keyframe, asked for now, arrives about a round trip to the publisher later, when the rest
/// is out.
pub(crate) const RESUME_AT: Duration = Duration::from_millis(60);

/// How long the backlog must stay at or above [`PAUSE_AT`] before frames are dropped: a sample
/// of str0m's queue is taken at its last timeout and may still hold resends it is about to clear
/// (its RTX ratio cap), so one sample is no backed-up queue.
pub(crate) const CONFIRM: Duration = Duration::from_millis(30);

/// What a subscriber m-line does with a video frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Admit {
    /// Forward it as usual.
    Write,
    /// Drop it: the pacer queue is backed up.
    Drop,
    /// Drop it unless it is a keyframe of the layer wanted, and ask for one; call
    /// [`Backlog::on_keyframe_written`] when one is written.
    Keyframe,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum State {
    #[default]
    Flowing,
    /// Frames are dropped until the queue is down to [`RESUME_AT`].
    Draining,
    /// The queue drained; the next keyframe of the layer wanted resumes the m-line.
    AwaitingKeyframe,
}

/// The gate of one subscriber video m-line. Sans-IO: fed the pacer backlog with the time it was
/// read.
#[derive(Clone, Debug, Default)]
pub(crate) struct Backlog {
    state: State,
    /// When the last keyframe was written, and how long the pacer takes to send it at the
    /// estimate of then.
    keyframe: Option<(Instant, Duration)>,
    /// Since when the backlog is at or above [`PAUSE_AT`] (while flowing).
    over_since: Option<Instant>,
}

impl Backlog {
    /// Whether the m-line now forwards frames as usual (not paused, not awaiting a keyframe).
    pub(crate) fn is_flowing(&self) -> bool {
        self.state == State::Flowing
    }

    /// Decides on a video frame at `now`, when the pacer would need `queued` to send what it
    /// holds for the connection (queued bytes at the estimate), the downlink is `constrained` or
    /// not, and the m-line's layer is `oversized` (above the one chosen for it) or not. Returns
    /// the decision and whether the state changed.
    pub(crate) fn admit(
        &mut self,
        now: Instant,
        queued: Duration,
        constrained: bool,
        oversized: bool,
    ) -> (Admit, bool) {
        let before = self.state;
        let over =
            constrained && oversized && queued.saturating_sub(self.keyframe_left(now)) >= PAUSE_AT;
        let over_since = if over {
            *self.over_since.get_or_insert(now)
        } else {
            self.over_since = None;
            now
        };
        self.state = match self.state {
            State::Flowing if over && now.saturating_duration_since(over_since) >= CONFIRM => {
                self.over_since = None;
                State::Draining
            }
            State::Draining if queued <= RESUME_AT => State::AwaitingKeyframe,
            // A connection no longer constrained has a link wide enough for what is queued.
            State::Draining if !constrained => State::AwaitingKeyframe,
            s => s,
        };
        let admit = match self.state {
            State::Flowing => Admit::Write,
            State::Draining => Admit::Drop,
            State::AwaitingKeyframe => Admit::Keyframe,
        };
        (admit, self.state != before)
    }

    /// A keyframe was written at `now` that the pacer needs `pacing` to send: the m-line flows
    /// again, and the queue this keyframe makes is not taken for congestion.
    pub(crate) fn on_keyframe_written(&mut self, now: Instant, pacing: Duration) {
        self.state = State::Flowing;
        self.keyframe = Some((now, pacing));
        self.over_since = None;
    }

    /// How much of the last keyframe's pacing time is still to come at `now`.
    fn keyframe_left(&self, now: Instant) -> Duration {
        self.keyframe.map_or(Duration::ZERO, |(at, pacing)| {
            pacing.saturating_sub(now.saturating_duration_since(at))
        })
    }
}

/// How long a pacer sending at `estimate` bit/s takes for `bytes`; zero without an estimate.
pub(crate) fn pacing_time(bytes: usize, estimate: Option<u64>) -> Duration {
    match estimate {
        Some(e) if e > 0 => Duration::from_secs_f64(bytes as f64 * 8.0 / e as f64),
        _ => Duration::ZERO,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn the_layer_chosen_is_never_gated() {
        let t0 = Instant::now();
        let mut b = Backlog::default();
        assert_eq!(b.admit(t0, 2000 * MS, true, false), (Admit::Write, false));
        assert_eq!(
            b.admit(t0 + 40 * MS, 2000 * MS, true, false),
            (Admit::Write, false)
        );
    }

    #[test]
    fn an_unconstrained_link_is_never_gated() {
        let t0 = Instant::now();
        let mut b = Backlog::default();
        assert_eq!(b.admit(t0, 2000 * MS, false, true), (Admit::Write, false));
        assert!(b.is_flowing());
    }

    #[test]
    fn a_backed_up_queue_drops_frames_until_drained_then_resumes_at_a_keyframe() {
        let t0 = Instant::now();
        let mut b = Backlog::default();
        assert_eq!(b.admit(t0, 250 * MS, true, true), (Admit::Write, false));
        assert_eq!(
            b.admit(t0 + 33 * MS, 300 * MS, true, true),
            (Admit::Write, false)
        );
        assert_eq!(
            b.admit(t0 + 66 * MS, 320 * MS, true, true),
            (Admit::Drop, true)
        );
        assert!(!b.is_flowing());
        assert_eq!(
            b.admit(t0 + 99 * MS, 200 * MS, true, true),
            (Admit::Drop, false)
        );
        assert_eq!(
            b.admit(t0 + 400 * MS, 60 * MS, true, true),
            (Admit::Keyframe, true)
        );
        // However long the keyframe takes: only it resumes the m-line.
        assert_eq!(
            b.admit(t0 + 433 * MS, Duration::ZERO, true, true),
            (Admit::Keyframe, false)
        );
        b.on_keyframe_written(t0 + 500 * MS, 100 * MS);
        assert!(b.is_flowing());
        assert_eq!(
            b.admit(t0 + 533 * MS, 50 * MS, true, true),
            (Admit::Write, false)
        );
    }

    #[test]
    fn the_queue_a_keyframe_makes_is_no_congestion() {
        let t0 = Instant::now();
        let mut b = Backlog::default();
        // A 10 kB keyframe at 150 kbit/s: 533 ms of pacing.
        let pacing = pacing_time(10_000, Some(150_000));
        assert_eq!(pacing.as_millis(), 533);
        b.on_keyframe_written(t0, pacing);
        assert_eq!(
            b.admit(t0 + 33 * MS, 530 * MS, true, true),
            (Admit::Write, false)
        );
        assert_eq!(
            b.admit(t0 + 300 * MS, 500 * MS, true, true),
            (Admit::Write, false)
        );
        // What is left of it plus 300 ms of more, for 30 ms: backed up.
        assert_eq!(
            b.admit(t0 + 400 * MS, 440 * MS, true, true),
            (Admit::Write, false)
        );
        assert_eq!(
            b.admit(t0 + 433 * MS, 410 * MS, true, true),
            (Admit::Drop, true)
        );
    }

    #[test]
    fn a_constraint_ending_while_draining_resumes_at_a_keyframe() {
        let t0 = Instant::now();
        let mut b = Backlog::default();
        b.admit(t0, 400 * MS, true, true);
        assert_eq!(b.admit(t0 + 33 * MS, 400 * MS, true, true).0, Admit::Drop);
        assert_eq!(
            b.admit(t0 + 66 * MS, 400 * MS, false, true).0,
            Admit::Keyframe
        );
    }

    #[test]
    fn one_sample_of_a_backed_up_queue_is_not_enough() {
        let t0 = Instant::now();
        let mut b = Backlog::default();
        // Resends str0m clears at once (its RTX ratio cap).
        assert_eq!(b.admit(t0, 700 * MS, true, true), (Admit::Write, false));
        assert_eq!(
            b.admit(t0 + 4 * MS, Duration::ZERO, true, true),
            (Admit::Write, false)
        );
        assert_eq!(
            b.admit(t0 + 40 * MS, 700 * MS, true, true),
            (Admit::Write, false)
        );
    }

    #[test]
    fn pacing_time_without_an_estimate_is_zero() {
        assert_eq!(pacing_time(10_000, None), Duration::ZERO);
        assert_eq!(pacing_time(10_000, Some(0)), Duration::ZERO);
        assert_eq!(pacing_time(37_500, Some(300_000)), Duration::from_secs(1));
    }
}
