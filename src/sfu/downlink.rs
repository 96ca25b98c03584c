//! Downlink congestion control of one subscriber connection: when its bandwidth estimate caps the
//! simulcast layers it gets, and what str0m's estimator is asked to probe for.
//!
//! A send-side estimate (TWCC, draft-holmer-rmcat-transport-wide-cc-extensions; GCC,
//! draft-ietf-rmcat-gcc) only measures what was sent: on an underused link it says little about
//! the capacity, so it caps layers only once it showed congestion (it fell below the rate sent).
//! The connection is then *constrained*: layers fit the estimate, and after a short hold without
//! new congestion the estimator is asked to probe for the preferred layers every
//! [`PROBE_INTERVAL`]. A probe on a link that is still narrow measures it and changes nothing;
//! on a link that has recovered it lifts the estimate (str0m probes exponentially up to twice the
//! desired rate), the layers climb, and once the estimate covers the preferred layers the
//! connection is unconstrained again. Probing never happens during the hold, so a link that just
//! showed congestion is not overfilled by probes on top of media; a probe followed by congestion
//! starts the hold again. A constrained estimate that keeps sinking by itself (the loss and delay
//! controllers settling after the congestion) does not: it must not delay the probes that find
//! out the link has recovered.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How long after the last sign of congestion no probing happens.
pub(crate) const CONGESTION_HOLD: Duration = Duration::from_secs(2);

/// Time between two probes of a constrained connection. A probe needs the desired rate to rise
/// above what it was (str0m's allocation probes fire on increases only), so [`Downlink::targets`]
/// must be called at least twice per interval: between probes it lowers the desired rate again.
pub(crate) const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// Margin of the rate probed for over the preferred layers' bitrate, so that a successful probe
/// leaves room for the layer-switch headroom of [`super::simulcast`].
const PROBE_HEADROOM: f64 = 1.3;

/// How far the estimate must cover the preferred layers' bitrate to end the constraint.
const RELEASE_HEADROOM: f64 = 1.15;

/// An estimator is restarted only after the subscriber reported no loss for this long (a link
/// still narrow keeps losing, and restarting into it would overfill it with probes), and at most
/// once per [`RESET_INTERVAL`].
const LOSS_QUIET: Duration = Duration::from_millis(1000);
const RESET_INTERVAL: Duration = Duration::from_secs(2);

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
    /// No probing before this (the last congestion plus [`CONGESTION_HOLD`]).
    hold_until: Option<Instant>,
    /// When the last probe was asked for.
    last_probe: Option<Instant>,
    /// When the subscriber last reported loss (NACKs).
    last_loss: Option<Instant>,
    /// When the estimator was last restarted.
    last_reset: Option<Instant>,
}

impl Downlink {
    /// Takes a new estimate (bit/s). Returns `true` when it shows congestion: it fell by more
    /// than 5 % and below 90 % of the rate sent. Congestion constrains the connection and starts
    /// the hold; once constrained, only congestion within [`PROBE_INTERVAL`] of a probe starts it
    /// again.
    pub(crate) fn on_estimate(&mut self, now: Instant, estimate: u64) -> bool {
        let previous = self.estimate.replace(estimate);
        let congested = previous.is_some_and(|p| (estimate as f64) < p as f64 * CONGESTION_DROP)
            && (estimate as f64) < self.sustained_rate() as f64 * CONGESTION_SENT_FRACTION;
        if congested {
            let after_probe = self
                .last_probe
                .is_some_and(|t| now.saturating_duration_since(t) < PROBE_INTERVAL);
            if !self.constrained || after_probe {
                self.hold_until = Some(now + CONGESTION_HOLD);
            }
            self.constrained = true;
        }
        congested
    }

    /// The lowest video rate sent over the last [`SENDING_WINDOW`], bit/s: right after a switch
    /// up the estimator has not seen the new rate yet, and an estimate below it is no congestion.
    fn sustained_rate(&self) -> u64 {
        self.sending.iter().map(|(_, r)| *r).min().unwrap_or(0)
    }

    /// The subscriber reported loss (NACKs) at `now`.
    pub(crate) fn on_loss(&mut self, now: Instant) {
        self.last_loss = Some(now);
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

    /// Given the rate the chosen layers send (`current`) and the rate of the preferred layers
    /// (`desired`), both bit/s, updates the state and returns the targets for the estimator. Call
    /// about once a second.
    pub(crate) fn targets(&mut self, now: Instant, current: u64, desired: u64) -> BitrateTargets {
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
        if !self.constrained {
            return BitrateTargets {
                minimum: current,
                desired,
                reset: None,
            };
        }
        let holding = self.hold_until.is_some_and(|t| now < t);
        let probe_due = self
            .last_probe
            .is_none_or(|t| now.saturating_duration_since(t) >= PROBE_INTERVAL);
        if holding || !probe_due {
            // Keep the desired rate at what is sent, so that the next raise is an increase.
            return BitrateTargets {
                minimum: current,
                desired: current,
                reset: None,
            };
        }
        self.last_probe = Some(now);
        // An estimate below what the link carries now, with no loss reported any more, is stuck
        // in the estimator's loss-limited state, in which str0m makes no probes: start it again
        // from the rate carried, so that its initial probes (3x and 6x) find out whether the link
        // recovered.
        let quiet = self
            .last_loss
            .is_none_or(|t| now.saturating_duration_since(t) >= LOSS_QUIET);
        let reset_due = self
            .last_reset
            .is_none_or(|t| now.saturating_duration_since(t) >= RESET_INTERVAL);
        let reset = (quiet
            && reset_due
            && self
                .estimate
                .is_some_and(|e| (e as f64) < current as f64 * CONGESTION_SENT_FRACTION))
        .then_some(current);
        if let Some(rate) = reset {
            self.estimate = Some(rate);
            self.last_reset = Some(now);
        }
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
        let t = d.targets(t0, 150_000, 2_000_000);
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
        d.targets(t0, 2_000_000, 2_000_000);
        assert!(d.on_estimate(t0 + S, 400_000));
        assert_eq!(d.budget(), Some(400_000));
        // Held: the desired rate is what is sent, no probe.
        let t = d.targets(t0 + S, 150_000, 2_000_000);
        assert_eq!(t.desired, 150_000);
        let t = d.targets(t0 + 2 * S, 150_000, 2_000_000);
        assert_eq!(t.desired, 150_000);
        // After the hold: a probe above the preferred rate, back down to re-arm, probe again.
        let t = d.targets(t0 + 3 * S, 150_000, 2_000_000);
        assert_eq!(t.desired, 2_600_000);
        let t = d.targets(t0 + 3 * S + H, 150_000, 2_000_000);
        assert_eq!(t.desired, 150_000);
        let t = d.targets(t0 + 4 * S, 150_000, 2_000_000);
        assert_eq!(t.desired, 2_600_000);
        assert!(d.is_constrained());
    }

    #[test]
    fn congestion_after_a_probe_restarts_the_hold() {
        let t0 = Instant::now();
        let mut d = Downlink::default();
        d.on_estimate(t0, 2_500_000);
        d.targets(t0, 2_000_000, 2_000_000);
        assert!(d.on_estimate(t0 + S, 400_000));
        d.targets(t0 + 3 * S, 150_000, 2_000_000);
        // The probe overfilled a link still narrow.
        assert!(d.on_estimate(t0 + 3 * S + H, 120_000));
        let t = d.targets(t0 + 5 * S, 150_000, 2_000_000);
        assert_eq!(
            t.desired, 150_000,
            "still within the hold restarted at 3.5 s"
        );
        let t = d.targets(t0 + 5 * S + H + H, 150_000, 2_000_000);
        assert_eq!(t.desired, 2_600_000);
    }

    #[test]
    fn a_sinking_estimate_without_probes_does_not_hold_probing_back() {
        let t0 = Instant::now();
        let mut d = Downlink::default();
        d.on_estimate(t0, 2_500_000);
        d.targets(t0, 2_000_000, 2_000_000);
        assert!(d.on_estimate(t0 + S, 400_000));
        d.targets(t0 + S, 150_000, 2_000_000);
        // The estimate keeps sinking during the hold: the hold still ends at 3 s.
        assert!(d.on_estimate(t0 + 2 * S, 120_000));
        assert!(d.on_estimate(t0 + 2 * S + H, 100_000));
        let t = d.targets(t0 + 3 * S, 150_000, 2_000_000);
        assert_eq!(t.desired, 2_600_000);
    }

    #[test]
    fn an_estimate_stuck_below_the_rate_carried_is_restarted_at_the_probe() {
        let t0 = Instant::now();
        let mut d = Downlink::default();
        d.on_estimate(t0, 2_500_000);
        d.targets(t0, 2_000_000, 2_000_000);
        assert!(d.on_estimate(t0 + S, 400_000));
        d.targets(t0 + S, 150_000, 2_000_000);
        d.on_estimate(t0 + 2 * S, 60_000);
        let t = d.targets(t0 + 3 * S, 150_000, 2_000_000);
        assert_eq!(t.reset, Some(150_000));
        assert_eq!(t.desired, 2_600_000);
        assert_eq!(d.budget(), Some(150_000));
        // No restart while the estimate covers what is sent.
        d.on_estimate(t0 + 3 * S + H, 200_000);
        let t = d.targets(t0 + 4 * S, 150_000, 2_000_000);
        assert_eq!(t.reset, None);
        // Nor while the subscriber reports loss, nor more often than every 2 s.
        d.on_estimate(t0 + 5 * S, 60_000);
        d.on_loss(t0 + 5 * S);
        let t = d.targets(t0 + 5 * S + H, 150_000, 2_000_000);
        assert_eq!(t.reset, None, "loss 0.5 s ago");
        let t = d.targets(t0 + 6 * S + H, 150_000, 2_000_000);
        assert_eq!(t.reset, Some(150_000), "quiet for 1.5 s");
        d.on_estimate(t0 + 7 * S, 60_000);
        let t = d.targets(t0 + 7 * S + H, 150_000, 2_000_000);
        assert_eq!(t.reset, None, "1 s after the last restart");
    }

    #[test]
    fn an_estimate_below_a_rate_just_switched_to_is_not_congestion() {
        let t0 = Instant::now();
        let mut d = Downlink::default();
        d.on_estimate(t0, 500_000);
        d.targets(t0, 150_000, 2_000_000);
        d.targets(t0 + H, 150_000, 2_000_000);
        // Switched up: the estimator has not seen 1.5 Mbit/s yet.
        d.targets(t0 + S, 1_500_000, 2_000_000);
        assert!(!d.on_estimate(t0 + S + H, 450_000));
        assert!(!d.is_constrained());
        // Sent for the whole window and the estimate still falls: congestion.
        d.targets(t0 + 2 * S, 1_500_000, 2_000_000);
        d.targets(t0 + 3 * S, 1_500_000, 2_000_000);
        d.targets(t0 + 3 * S + H, 1_500_000, 2_000_000);
        assert!(d.on_estimate(t0 + 3 * S + H, 400_000));
    }

    #[test]
    fn recovered_estimate_releases_the_cap() {
        let t0 = Instant::now();
        let mut d = Downlink::default();
        d.on_estimate(t0, 2_500_000);
        d.targets(t0, 2_000_000, 2_000_000);
        assert!(d.on_estimate(t0 + S, 300_000));
        // A successful probe lifts the estimate in steps: the budget follows it.
        assert!(!d.on_estimate(t0 + 4 * S, 900_000));
        assert_eq!(d.budget(), Some(900_000));
        assert!(!d.on_estimate(t0 + 5 * S, 2_400_000));
        let t = d.targets(t0 + 5 * S, 500_000, 2_000_000);
        assert!(!d.is_constrained());
        assert_eq!(d.budget(), None);
        assert_eq!(t.desired, 2_000_000);
    }

    #[test]
    fn estimate_below_what_is_sent_but_not_falling_is_not_congestion() {
        let t0 = Instant::now();
        let mut d = Downlink::default();
        d.targets(t0, 1_000_000, 1_000_000);
        assert!(!d.on_estimate(t0, 500_000));
        assert!(!d.on_estimate(t0 + S, 490_000));
        assert!(!d.is_constrained());
    }
}
