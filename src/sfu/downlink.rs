//! Downlink congestion control of one subscriber connection: when its bandwidth estimate caps the
//! simulcast layers it gets, and what str0m's estimator is asked to probe for.
//!
//! A send-side estimate (TWCC, draft-holmer-rmcat-transport-wide-cc-extensions; GCC,
//! draft-ietf-rmcat-gcc) only measures what was sent: on an underused link it says little about
//! the capacity, so it caps layers only once it showed congestion (it fell below the rate sent).
//! The connection is then *constrained*: layers fit the estimate, and after a short hold the
//! estimator is asked to probe for the preferred layers every [`PROBE_INTERVAL`]. A probe on a
//! link that is still narrow measures it and changes nothing; on a link that has recovered it
//! lifts the estimate (str0m probes exponentially up to twice the desired rate), the layers
//! climb, and once the estimate covers the preferred layers the connection is unconstrained
//! again.
//!
//! What holds probing back is loss the subscriber reports (the fraction lost of its RTCP receiver
//! reports, RFC 3550 §6.4.1): no probing during [`CONGESTION_HOLD`] after the congestion, nor
//! within [`LOSS_HOLD`] of a report with loss, so a link that is dropping packets is not
//! overfilled by probes on top of media. A constrained estimate that keeps sinking without loss
//! (the loss and delay controllers settling after the congestion) holds nothing back: it must
//! not delay the probes that find out the link has recovered. NACK counts are no loss measure
//! here: a receiver asks again for a missing packet every round trip until it gives up, so a few
//! packets lost under the cap are NACKed for seconds after the link recovered.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How long after the congestion that constrained the connection no probing happens.
pub(crate) const CONGESTION_HOLD: Duration = Duration::from_secs(2);

/// How long after a receiver report with loss no probing happens.
const LOSS_HOLD: Duration = Duration::from_secs(1);

/// A receiver report whose fraction lost is at least this shows loss (0.02 = 2 %: about one
/// video packet in a second of the lowest layer; a 1/256 step of the report's 8-bit fraction is
/// noise).
const LOSSY_FRACTION: f32 = 0.02;

/// Time between two probes of a constrained connection. A probe needs the desired rate to rise
/// above what it was (str0m's allocation probes fire on increases only), so [`Downlink::targets`]
/// must be called at least twice per interval: between probes it lowers the desired rate again.
pub(crate) const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// Margin of the rate probed for over the preferred layers' bitrate, so that a successful probe
/// leaves room for the layer-switch headroom of [`super::simulcast`].
const PROBE_HEADROOM: f64 = 1.3;

/// How far the estimate must cover the preferred layers' bitrate to end the constraint.
const RELEASE_HEADROOM: f64 = 1.15;

/// An estimator is restarted at most once per this interval, and only when probing is allowed
/// (never within [`LOSS_HOLD`] of loss: a link still narrow keeps losing, and restarting into it
/// would overfill it with probes).
const RESET_INTERVAL: Duration = Duration::from_secs(2);

/// A probe that left the estimate below this factor of its value at the previous probe failed:
/// a probe that gets through lifts the estimate to about the rate probed (the desired rate, many
/// times the estimate of a constrained link), while str0m's loss controller, recovering without
/// probes, adds some 10–20 % a second, which would take 10 s from the lowest to the top layer.
const STAGNANT_GROWTH: f64 = 1.5;

/// Slack on [`PROBE_INTERVAL`]: [`Downlink::targets`] is called about every 500 ms, not exactly.
const PROBE_SLACK: Duration = Duration::from_millis(100);

/// Longest wait between two restarts of an estimator that stagnates without loss: the wait
/// doubles from [`RESET_INTERVAL`] after each such restart that did not end the constraint. It
/// bounds how late a link that recovered is found out (str0m's own probes stay blocked after
/// loss): a restart, then about two seconds for the estimate to climb to the preferred layers.
const MAX_STAGNANT_INTERVAL: Duration = Duration::from_secs(4);

/// A packet waiting this long in str0m's pacer queue of a video m-line, in two samples in a row,
/// is congestion: the pacer sends at about the estimate, so the layers send more than the
/// estimate allows, and every frame queued now drains into the narrow link later. (One sample
/// may be a large keyframe being paced out.)
const QUEUE_CONGESTION: Duration = Duration::from_millis(300);

/// How long a rate must have been sent before an estimate below it counts as congestion.
const SENDING_WINDOW: Duration = Duration::from_secs(2);

/// A fall of the estimate below this fraction of the previous one, and below
/// [`CONGESTION_SENT_FRACTION`] of the rate sent, is congestion.
const CONGESTION_DROP: f64 = 0.95;
const CONGESTION_SENT_FRACTION: f64 = 0.9;

/// The bitrates to give str0m's estimator (`Bwe::set_bitrate`), bit/s.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BitrateTargets {
    /// Rate to sustain with media and padding: what the chosen layers send.
    pub(crate) minimum: u64,
    /// Rate to discover by probing.
    pub(crate) desired: u64,
    /// Restart the estimator from this rate first (`Bwe::reset`).
    pub(crate) reset: Option<u64>,
}

/// The congestion state of one subscriber's downlink. Sans-IO: fed estimates and rates with the
/// time they were taken.
#[derive(Clone, Debug, Default)]
pub(crate) struct Downlink {
    /// Latest estimate, bit/s.
    estimate: Option<u64>,
    /// Video rate sent by the layers chosen, bit/s, with when it was reported, over the last
    /// [`SENDING_WINDOW`].
    sending: VecDeque<(Instant, u64)>,
    /// Layers fit the estimate until it covers the preferred ones again.
    constrained: bool,
    /// No probing before this (the congestion that constrained the connection plus
    /// [`CONGESTION_HOLD`]).
    hold_until: Option<Instant>,
    /// When the last probe was asked for.
    last_probe: Option<Instant>,
    /// When the subscriber last reported loss (a receiver report at or above [`LOSSY_FRACTION`]).
    last_loss: Option<Instant>,
    /// When the estimator was last restarted.
    last_reset: Option<Instant>,
    /// The estimate when the last probe was asked for, bit/s.
    probed_estimate: Option<u64>,
    /// Whether the previous pacer queue sample was at least [`QUEUE_CONGESTION`].
    queue_delayed: bool,
    /// Wait between restarts of a stagnating estimator ([`RESET_INTERVAL`] doubling to
    /// [`MAX_STAGNANT_INTERVAL`]); zero until the first such restart of a constraint.
    stagnant_interval: Duration,
}

impl Downlink {
    /// Takes a new estimate (bit/s). Returns `true` when it shows congestion: it fell by more
    /// than 5 % and below 90 % of the rate sent. Congestion of an unconstrained connection
    /// constrains it and starts the hold ([`CONGESTION_HOLD`]); once constrained, what holds
    /// probing back is reported loss ([`Downlink::on_loss_report`]), not a sinking estimate.
    pub(crate) fn on_estimate(&mut self, now: Instant, estimate: u64) -> bool {
        let previous = self.estimate.replace(estimate);
        let congested = previous.is_some_and(|p| (estimate as f64) < p as f64 * CONGESTION_DROP)
            && (estimate as f64) < self.sustained_rate() as f64 * CONGESTION_SENT_FRACTION;
        if congested && !self.constrained {
            self.constrain(now);
        }
        congested
    }

    /// The lowest video rate sent over the last [`SENDING_WINDOW`], bit/s: right after a switch
    /// up the estimator has not seen the new rate yet, and an estimate below it is no congestion.
    fn sustained_rate(&self) -> u64 {
        self.sending.iter().map(|(_, r)| *r).min().unwrap_or(0)
    }

    /// The oldest packet queued in str0m's pacer for one of its video m-lines has waited `delay`
    /// at `now` (sampled with each [`Downlink::targets`]). Returns `true` when that makes an
    /// unconstrained connection congested (at least [`QUEUE_CONGESTION`] in this sample and the
    /// previous one): the estimate caps its layers from now on, and the hold starts. An
    /// estimate that lags behind a rate just switched up to ([`SENDING_WINDOW`]) is no excuse
    /// here: the queue grows whatever the reason.
    pub(crate) fn on_queue_delay(&mut self, now: Instant, delay: Duration) -> bool {
        let delayed = std::mem::replace(&mut self.queue_delayed, delay >= QUEUE_CONGESTION);
        if self.constrained || !delayed || !self.queue_delayed || self.estimate.is_none() {
            return false;
        }
        self.constrain(now);
        true
    }

    fn constrain(&mut self, now: Instant) {
        self.hold_until = Some(now + CONGESTION_HOLD);
        self.last_probe = None;
        self.probed_estimate = None;
        self.stagnant_interval = Duration::ZERO;
        self.constrained = true;
    }

    /// The subscriber's receiver report at `now` says it lost `fraction_lost` (0.0–1.0) of the
    /// packets of one of its m-lines since its previous report (RFC 3550 §6.4.1).
    pub(crate) fn on_loss_report(&mut self, now: Instant, fraction_lost: f32) {
        if fraction_lost >= LOSSY_FRACTION {
            self.last_loss = Some(now);
        }
    }

    /// Latest estimate, bit/s.
    pub(crate) fn estimate(&self) -> Option<u64> {
        self.estimate
    }

    /// Whether the estimate caps the layers now.
    pub(crate) fn is_constrained(&self) -> bool {
        self.constrained
    }

    /// The downlink rate the video layers must fit, bit/s; `None` (no cap) unless constrained.
    pub(crate) fn budget(&self) -> Option<u64> {
        if self.constrained {
            self.estimate
        } else {
            None
        }
    }

    /// Given the video rate the chosen layers send (`current`), the rate of the lowest layers
    /// (`floor`: what is sent however narrow the link) and the rate of the preferred layers
    /// (`desired`), all bit/s, updates the state and returns the targets for the estimator. Call
    /// at least twice per [`PROBE_INTERVAL`].
    pub(crate) fn targets(
        &mut self,
        now: Instant,
        current: u64,
        floor: u64,
        desired: u64,
    ) -> BitrateTargets {
        self.sending.push_back((now, current));
        while self
            .sending
            .front()
            .is_some_and(|(t, _)| now.saturating_duration_since(*t) > SENDING_WINDOW)
        {
            self.sending.pop_front();
        }
        let desired = desired.max(current);
        if self.constrained
            && self
                .estimate
                .is_some_and(|e| e as f64 >= desired as f64 * RELEASE_HEADROOM)
        {
            self.constrained = false;
            self.last_probe = None;
        }
        // Keep the desired rate at what is sent, so that the next raise is an increase.
        let steady = BitrateTargets {
            minimum: current,
            desired: current,
            reset: None,
        };
        if !self.constrained {
            return BitrateTargets { desired, ..steady };
        }
        let in_hold = self.hold_until.is_some_and(|t| now < t);
        let probe_due = self
            .last_probe
            .is_none_or(|t| now.saturating_duration_since(t) + PROBE_SLACK >= PROBE_INTERVAL);
        if in_hold || !probe_due {
            return steady;
        }
        let lossy = self
            .last_loss
            .is_some_and(|t| now.saturating_duration_since(t) < LOSS_HOLD);
        // An estimate below what is sent is stuck in the estimator's loss-limited state, in which
        // str0m makes no probes and paces below the media rate (its queue then grows until it is
        // drained in bursts): restart it from the rate sent, so that its initial probes (3x and
        // 6x, at most twice the desired rate) find out whether the link recovered. Not while the
        // subscriber reports loss, unless it gets the lowest layers already: it gets them however
        // narrow the link is, and a starving pacer only makes their loss worse.
        let at_floor = current <= floor;
        let since_reset = self
            .last_reset
            .map_or(Duration::MAX, |t| now.saturating_duration_since(t));
        let stuck = self
            .estimate
            .is_some_and(|e| (e as f64) < current as f64 * CONGESTION_SENT_FRACTION);
        // An estimate that the last probe did not lift, with no loss, is held back by str0m's
        // loss controller (which blocks probing while it recovers, for many seconds at the
        // packet rate of the lowest layers): restart it from its value so that its initial probes
        // go above it. A link still narrow fails those probes too, so such restarts back off.
        let stagnant = !lossy
            && self
                .estimate
                .zip(self.probed_estimate)
                .is_some_and(|(e, p)| (e as f64) < p as f64 * STAGNANT_GROWTH)
            && since_reset >= self.stagnant_interval.max(RESET_INTERVAL);
        let reset = if stuck && since_reset >= RESET_INTERVAL && (!lossy || at_floor) {
            Some(current)
        } else if stagnant {
            self.stagnant_interval =
                (self.stagnant_interval * 2).clamp(RESET_INTERVAL, MAX_STAGNANT_INTERVAL);
            self.estimate.map(|e| e.max(current))
        } else {
            None
        };
        if let Some(rate) = reset {
            self.estimate = Some(rate);
            self.last_reset = Some(now);
        }
        if lossy {
            // No probing into a link that is losing packets (a restart at the floor probes up to
            // twice what is sent only).
            return BitrateTargets { reset, ..steady };
        }
        self.last_probe = Some(now);
        self.probed_estimate = self.estimate;
        BitrateTargets {
            minimum: current,
            desired: (desired as f64 * PROBE_HEADROOM) as u64,
            reset,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);
    const H: Duration = Duration::from_millis(500);

    #[test]
    fn unconstrained_link_is_not_capped_and_asks_for_the_preferred_rate() {
        let t0 = Instant::now();
        let mut d = Downlink::default();
        assert!(!d.on_estimate(t0, 1_500_000));
        let t = d.targets(t0, 150_000, 0, 2_000_000);
        assert_eq!(t.desired, 2_000_000);
        assert_eq!(t.minimum, 150_000);
        assert_eq!(d.budget(), None);
        // An estimate that falls while above what is sent only tracks an underused link.
        assert!(!d.on_estimate(t0 + S, 1_000_000));
        assert_eq!(d.budget(), None);
    }

    #[test]
    fn congestion_caps_layers_and_holds_probing() {
        let t0 = Instant::now();
        let mut d = Downlink::default();
        d.on_estimate(t0, 2_500_000);
        d.targets(t0, 2_000_000, 0, 2_000_000);
        assert!(d.on_estimate(t0 + S, 400_000));
        assert_eq!(d.budget(), Some(400_000));
        // Held: the desired rate is what is sent, no probe.
        let t = d.targets(t0 + S, 150_000, 0, 2_000_000);
        assert_eq!(t.desired, 150_000);
        let t = d.targets(t0 + 2 * S, 150_000, 0, 2_000_000);
        assert_eq!(t.desired, 150_000);
        // After the hold: a probe above the preferred rate, back down to re-arm, probe again.
        let t = d.targets(t0 + 3 * S, 150_000, 0, 2_000_000);
        assert_eq!(t.desired, 2_600_000);
        let t = d.targets(t0 + 3 * S + H, 150_000, 0, 2_000_000);
        assert_eq!(t.desired, 150_000);
        let t = d.targets(t0 + 4 * S, 150_000, 0, 2_000_000);
        assert_eq!(t.desired, 2_600_000);
        assert!(d.is_constrained());
    }

    #[test]
    fn loss_after_a_probe_holds_probing_back_but_a_sinking_estimate_does_not() {
        let t0 = Instant::now();
        let mut d = Downlink::default();
        d.on_estimate(t0, 2_500_000);
        d.targets(t0, 2_000_000, 0, 2_000_000);
        assert!(d.on_estimate(t0 + S, 400_000));
        let t = d.targets(t0 + 3 * S, 150_000, 0, 2_000_000);
        assert_eq!(t.desired, 2_600_000, "the first probe after the hold");
        // The estimate sinks after the probe (the estimator settling), without loss: no hold.
        assert!(d.on_estimate(t0 + 3 * S + H, 120_000));
        d.targets(t0 + 3 * S + H, 150_000, 0, 2_000_000);
        let t = d.targets(t0 + 4 * S, 150_000, 0, 2_000_000);
        assert_eq!(t.desired, 2_600_000, "probing every second");
        // The probe overfilled a link still narrow: the subscriber reports 5 % loss.
        d.on_loss_report(t0 + 4 * S + H, 0.05);
        let t = d.targets(t0 + 5 * S, 150_000, 0, 2_000_000);
        assert_eq!(t.desired, 150_000, "within 1 s of the loss");
        let t = d.targets(t0 + 5 * S + H, 150_000, 0, 2_000_000);
        assert_eq!(t.desired, 2_600_000, "1 s after the loss");
        // A report under 2 % (one packet in a hundred) is no loss.
        d.on_loss_report(t0 + 6 * S + H, 0.01);
        let t = d.targets(t0 + 6 * S + H, 150_000, 0, 2_000_000);
        assert_eq!(t.desired, 2_600_000);
    }

    #[test]
    fn a_sinking_estimate_without_probes_does_not_hold_probing_back() {
        let t0 = Instant::now();
        let mut d = Downlink::default();
        d.on_estimate(t0, 2_500_000);
        d.targets(t0, 2_000_000, 0, 2_000_000);
        assert!(d.on_estimate(t0 + S, 400_000));
        d.targets(t0 + S, 150_000, 0, 2_000_000);
        // The estimate keeps sinking during the hold: the hold still ends at 3 s.
        assert!(d.on_estimate(t0 + 2 * S, 120_000));
        assert!(d.on_estimate(t0 + 2 * S + H, 100_000));
        let t = d.targets(t0 + 3 * S, 150_000, 0, 2_000_000);
        assert_eq!(t.desired, 2_600_000);
    }

    #[test]
    fn an_estimate_stuck_below_the_rate_carried_is_restarted_at_the_probe() {
        let t0 = Instant::now();
        let mut d = Downlink::default();
        d.on_estimate(t0, 2_500_000);
        d.targets(t0, 2_000_000, 0, 2_000_000);
        assert!(d.on_estimate(t0 + S, 400_000));
        d.targets(t0 + S, 150_000, 0, 2_000_000);
        d.on_estimate(t0 + 2 * S, 60_000);
        let t = d.targets(t0 + 3 * S, 150_000, 0, 2_000_000);
        assert_eq!(t.reset, Some(150_000));
        assert_eq!(t.desired, 2_600_000);
        assert_eq!(d.budget(), Some(150_000));
        // No restart while the estimate covers what is sent.
        d.on_estimate(t0 + 3 * S + H, 200_000);
        let t = d.targets(t0 + 4 * S, 150_000, 0, 2_000_000);
        assert_eq!(t.reset, None);
        // Nor while the subscriber reports loss, nor more often than every 2 s.
        d.on_estimate(t0 + 5 * S, 60_000);
        d.on_loss_report(t0 + 5 * S, 0.1);
        let t = d.targets(t0 + 5 * S + H, 150_000, 0, 2_000_000);
        assert_eq!(t.reset, None, "loss 0.5 s ago");
        let t = d.targets(t0 + 6 * S + H, 150_000, 0, 2_000_000);
        assert_eq!(t.reset, Some(150_000), "no loss for 1.5 s");
        d.on_estimate(t0 + 7 * S, 60_000);
        let t = d.targets(t0 + 7 * S + H, 150_000, 0, 2_000_000);
        assert_eq!(t.reset, None, "1 s after the last restart");
    }

    #[test]
    fn a_starving_estimate_at_the_lowest_layers_is_restarted_despite_loss_without_probing() {
        let t0 = Instant::now();
        let mut d = Downlink::default();
        d.on_estimate(t0, 2_500_000);
        d.targets(t0, 2_000_000, 150_000, 2_000_000);
        assert!(d.on_estimate(t0 + S, 400_000));
        d.on_estimate(t0 + 2 * S, 60_000);
        d.on_loss_report(t0 + 3 * S, 0.3);
        // On a higher layer than the lowest: loss holds everything back.
        let t = d.targets(t0 + 3 * S + H, 300_000, 150_000, 2_000_000);
        assert_eq!((t.reset, t.desired), (None, 300_000));
        // On the lowest layers: restarted from their rate, no probe for the preferred layers.
        let t = d.targets(t0 + 3 * S + H, 150_000, 150_000, 2_000_000);
        assert_eq!((t.reset, t.desired), (Some(150_000), 150_000));
        assert_eq!(d.budget(), Some(150_000));
    }

    #[test]
    fn a_stagnant_estimate_without_loss_is_restarted_from_its_value_with_backoff() {
        let t0 = Instant::now();
        let mut d = Downlink::default();
        d.on_estimate(t0, 2_500_000);
        d.targets(t0, 2_000_000, 150_000, 2_000_000);
        assert!(d.on_estimate(t0 + S, 400_000));
        // Probes after the hold that do not lift the estimate (400 kbit/s, over the 150 sent).
        let mut restarts = vec![];
        for half in 6..60u32 {
            let now = t0 + H * half;
            if let Some(rate) = d.targets(now, 150_000, 150_000, 2_000_000).reset {
                restarts.push((half, rate));
            }
        }
        // The first probe at 3 s sets the reference; restarts at 4 s, then 2, 4, 4 s apart.
        assert_eq!(
            restarts,
            [8, 12, 20, 28, 36, 44, 52]
                .into_iter()
                .map(|half| (half, 400_000))
                .collect::<Vec<_>>()
        );
        // A probe that lifts the estimate by half or more is no stagnation.
        d.on_estimate(t0 + H * 60, 700_000);
        let t = d.targets(t0 + H * 70, 150_000, 150_000, 2_000_000);
        assert_eq!(t.reset, None);
    }

    #[test]
    fn a_backed_up_pacer_queue_is_congestion_even_right_after_a_switch_up() {
        let t0 = Instant::now();
        let mut d = Downlink::default();
        d.on_estimate(t0, 500_000);
        d.targets(t0, 150_000, 150_000, 2_000_000);
        d.targets(t0 + S, 1_500_000, 150_000, 2_000_000);
        assert!(!d.on_queue_delay(t0 + S, Duration::from_millis(400)));
        assert!(!d.on_queue_delay(t0 + S + H, Duration::from_millis(200)));
        assert!(!d.on_queue_delay(t0 + 2 * S, Duration::from_millis(400)));
        assert!(
            !d.is_constrained(),
            "one sample at a time: a keyframe being paced out"
        );
        assert!(d.on_queue_delay(t0 + 2 * S + H, Duration::from_millis(600)));
        assert_eq!(d.budget(), Some(500_000));
        // Once constrained, the queue changes nothing more (the hold is not renewed by it).
        assert!(!d.on_queue_delay(t0 + 3 * S, Duration::from_secs(1)));
        let t = d.targets(t0 + 4 * S + H, 150_000, 150_000, 2_000_000);
        assert_eq!(t.desired, 2_600_000, "probing after the 2 s hold");
    }

    #[test]
    fn an_estimate_below_a_rate_just_switched_to_is_not_congestion() {
        let t0 = Instant::now();
        let mut d = Downlink::default();
        d.on_estimate(t0, 500_000);
        d.targets(t0, 150_000, 0, 2_000_000);
        d.targets(t0 + H, 150_000, 0, 2_000_000);
        // Switched up: the estimator has not seen 1.5 Mbit/s yet.
        d.targets(t0 + S, 1_500_000, 0, 2_000_000);
        assert!(!d.on_estimate(t0 + S + H, 450_000));
        assert!(!d.is_constrained());
        // Sent for the whole window and the estimate still falls: congestion.
        d.targets(t0 + 2 * S, 1_500_000, 0, 2_000_000);
        d.targets(t0 + 3 * S, 1_500_000, 0, 2_000_000);
        d.targets(t0 + 3 * S + H, 1_500_000, 0, 2_000_000);
        assert!(d.on_estimate(t0 + 3 * S + H, 400_000));
    }

    #[test]
    fn recovered_estimate_releases_the_cap() {
        let t0 = Instant::now();
        let mut d = Downlink::default();
        d.on_estimate(t0, 2_500_000);
        d.targets(t0, 2_000_000, 0, 2_000_000);
        assert!(d.on_estimate(t0 + S, 300_000));
        // A successful probe lifts the estimate in steps: the budget follows it.
        assert!(!d.on_estimate(t0 + 4 * S, 900_000));
        assert_eq!(d.budget(), Some(900_000));
        assert!(!d.on_estimate(t0 + 5 * S, 2_400_000));
        let t = d.targets(t0 + 5 * S, 500_000, 0, 2_000_000);
        assert!(!d.is_constrained());
        assert_eq!(d.budget(), None);
        assert_eq!(t.desired, 2_000_000);
    }

    #[test]
    fn estimate_below_what_is_sent_but_not_falling_is_not_congestion() {
        let t0 = Instant::now();
        let mut d = Downlink::default();
        d.targets(t0, 1_000_000, 0, 1_000_000);
        assert!(!d.on_estimate(t0, 500_000));
        assert!(!d.on_estimate(t0 + S, 490_000));
        assert!(!d.is_constrained());
    }
}
