//! Downlink congestion control of one subscriber connection: when its bandwidth estimate caps the
//! simulcast layers it gets, and what str0m's estimator is asked to probe for.
//!
//! A send-side estimate (TWCC, draft-holmer-rmcat-transport-wide-cc-extensions; GCC,
//! draft-ietf-rmcat-gcc) only measures what was sent: on an underused link it says little about
//! the capacity, so it caps layers only once it showed congestion (it fell below the rate sent,
//! or the pacer queue backed up while packets were lost). The connection is then *constrained*:
//! layers fit the estimate, and after a short hold the estimator is asked to probe for the
//! preferred layers every [`PROBE_INTERVAL`]. A probe on a link that is still narrow measures it
//! and changes nothing; on a link that has recovered it lifts the estimate (str0m probes
//! exponentially up to twice the desired rate). Once the estimate covers the preferred layers,
//! the link is checked with padding up to their rate for [`VERIFY`], and the connection is
//! unconstrained again: the layers jump straight to the preferred ones.
//!
//! What holds probing back is loss: no probing during [`CONGESTION_HOLD`] after the congestion,
//! nor while the subscriber loses packets, so a link that is dropping packets is not overfilled
//! by probes on top of media. Loss is measured from the TWCC feedback over the last second
//! (str0m's `PeerStats::egress_loss_fraction`, every [`STATS_INTERVAL`]): a sample without loss
//! ends the hold at once. RTCP receiver reports (the fraction lost, RFC 3550 §6.4.1) are only the
//! fallback without TWCC: each m-line's last report is repeated until its next one (5 s apart for
//! audio in Chrome), so they kept probing held for seconds after the link recovered. A
//! constrained estimate that keeps sinking without loss (the loss and delay controllers settling
//! after the congestion) holds nothing back: it must not delay the probes that find out the link
//! has recovered. NACK counts are no loss measure here: a receiver asks again for a missing packet
//! every round trip until it gives up, so a few packets lost under the cap are NACKed for seconds
//! after the link recovered.
//!
//! The estimate str0m emits (`Event::EgressBitrateEstimate`) is an average over 3 s: after a
//! probe that got through it takes seconds to climb. Lifting the cap and restarting the estimator
//! go by the estimator's own value (`PeerStats::bwe_tx`, sampled with the stats) while it is
//! fresh; samples from before the congestion do not count. A probe's result that the estimator
//! drops again within half a second without loss (its loss controller still recovering) restarts
//! it from that result. The smoothed estimate still sets the layers' budget while constrained and
//! is what shows congestion.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How long after the congestion that constrained the connection no probing happens.
pub(crate) const CONGESTION_HOLD: Duration = Duration::from_secs(2);

/// How long after a loss sample (TWCC, or a receiver report without TWCC) no probing happens,
/// unless a TWCC sample without loss comes first.
const LOSS_HOLD: Duration = Duration::from_secs(1);

/// How often str0m reports the stats that carry the TWCC loss and the unsmoothed estimate
/// (`RtcConfig::set_stats_interval`).
pub(crate) const STATS_INTERVAL: Duration = Duration::from_millis(500);

/// An unsmoothed estimate older than this is not used (stats stopped, e.g. no TWCC feedback).
const RAW_FRESH: Duration = Duration::from_secs(2);

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

/// How long a constrained link must carry padding up to the preferred layers' rate, without
/// loss and with the estimate still covering them, before the cap is lifted. A probe can
/// overstate a narrow link (a shaper lets a short cluster through at line rate from its token
/// bucket, and media far below the cap never corrects the estimate): the padding does not fit
/// through such a link, shows loss within a stats sample or two, and the estimator falls.
const VERIFY: Duration = Duration::from_secs(1);

/// An estimator is restarted at most once per this interval, and only when probing is allowed
/// (never within [`LOSS_HOLD`] of loss: a link still narrow keeps losing, and restarting into it
/// would overfill it with probes).
const RESET_INTERVAL: Duration = Duration::from_secs(2);

/// A probe that left the estimate below this factor of its value at the previous probe failed:
/// a probe that gets through lifts the estimate to about the rate probed (the desired rate, many
/// times the estimate of a constrained link), while str0m's loss controller, recovering without
/// probes, adds some 10–20 % a second, which would take 10 s from the lowest to the top layer.
const STAGNANT_GROWTH: f64 = 1.5;

/// An unsmoothed estimate that falls to this fraction or less of the previous sample, without
/// loss, was a probe's result pulled back by str0m's loss controller ([`Downlink::on_peer_stats`]).
const PULLED_BACK: f64 = 3.0;

/// Slack on [`PROBE_INTERVAL`]: [`Downlink::targets`] is called about every 500 ms, not exactly.
const PROBE_SLACK: Duration = Duration::from_millis(100);

/// Longest wait between two restarts of an estimator that stagnates, or lost packets since the
/// last probe: the wait doubles from [`RESET_INTERVAL`] after each such restart that did not end
/// the constraint. It bounds how late a link that recovered is found out (str0m's own probes
/// stay blocked after loss): a restart, its initial probes, then [`VERIFY`].
const MAX_STAGNANT_INTERVAL: Duration = Duration::from_secs(3);

/// A packet waiting this long in str0m's pacer queue of a video m-line, in two samples in a row,
/// while the subscriber loses packets, is congestion: the pacer sends at about the estimate, so
/// the layers send more than the link takes, and every frame queued now drains into the narrow
/// link later. (One sample may be a large keyframe being paced out.) Without loss a queue is the
/// estimate lagging behind a link that carries what is sent (the start-up ramp, a switch up):
/// the pacer catches up, and a link that really narrowed shows loss or a falling estimate.
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
    /// When the first rate was reported.
    sending_since: Option<Instant>,
    /// Layers fit the estimate until it covers the preferred ones again.
    constrained: bool,
    /// No probing before this (the congestion that constrained the connection plus
    /// [`CONGESTION_HOLD`]).
    hold_until: Option<Instant>,
    /// When the last probe was asked for.
    last_probe: Option<Instant>,
    /// When the subscriber last lost packets (a sample at or above [`LOSSY_FRACTION`]); cleared
    /// by a TWCC sample without loss.
    last_loss: Option<Instant>,
    /// Whether packets were lost since the last probe (or the congestion).
    lost_since_probe: bool,
    /// Whether TWCC loss samples come ([`Downlink::on_peer_stats`]): receiver reports are then
    /// ignored.
    twcc_loss: bool,
    /// Latest unsmoothed estimate (bit/s) with when it was sampled; `None` from the congestion
    /// that constrained the connection until the next sample.
    raw: Option<(Instant, u64)>,
    /// The preferred layers' rate of the latest [`Downlink::targets`], bit/s.
    desired: u64,
    /// Since when the estimate covers the preferred layers and the link is checked with padding
    /// up to their rate ([`VERIFY`]).
    verifying: Option<Instant>,
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
            && (estimate as f64) < self.sustained_rate(now) as f64 * CONGESTION_SENT_FRACTION;
        if congested && !self.constrained {
            self.constrain(now);
        }
        congested
    }

    /// The lowest video rate sent over the last [`SENDING_WINDOW`], bit/s: right after a switch
    /// up the estimator has not seen the new rate yet, and an estimate below it is no congestion.
    /// Zero during the first [`SENDING_WINDOW`] of sending: the estimate of a new connection
    /// swings from its initial value while the first layers start.
    fn sustained_rate(&self, now: Instant) -> u64 {
        if self
            .sending_since
            .is_none_or(|t| now.saturating_duration_since(t) < SENDING_WINDOW)
        {
            return 0;
        }
        self.sending.iter().map(|(_, r)| *r).min().unwrap_or(0)
    }

    /// The oldest packet queued in str0m's pacer for one of its video m-lines has waited `delay`
    /// at `now` (sampled with each [`Downlink::targets`]). Returns `true` when that makes an
    /// unconstrained connection congested (at least [`QUEUE_CONGESTION`] in this sample and the
    /// previous one, with loss within [`LOSS_HOLD`]): the estimate caps its layers from now on,
    /// and the hold starts. Once packets are lost, an estimate that lags behind a rate just
    /// switched up to ([`SENDING_WINDOW`]) is no excuse: the queue drains into a full link.
    pub(crate) fn on_queue_delay(&mut self, now: Instant, delay: Duration) -> bool {
        let delayed = std::mem::replace(&mut self.queue_delayed, delay >= QUEUE_CONGESTION);
        if self.constrained
            || !delayed
            || !self.queue_delayed
            || self.estimate.is_none()
            || !self.lossy(now)
        {
            return false;
        }
        self.constrain(now);
        true
    }

    fn constrain(&mut self, now: Instant) {
        self.hold_until = Some(now + CONGESTION_HOLD);
        // Sampled before the congestion: it must not lift the cap it caused.
        self.raw = None;
        self.verifying = None;
        self.last_probe = None;
        self.probed_estimate = None;
        self.stagnant_interval = Duration::ZERO;
        self.constrained = true;
    }

    /// The subscriber's receiver report at `now` says it lost `fraction_lost` (0.0–1.0) of the
    /// packets of one of its m-lines since its previous report (RFC 3550 §6.4.1). Ignored once
    /// TWCC loss samples come ([`Downlink::on_peer_stats`]).
    pub(crate) fn on_loss_report(&mut self, now: Instant, fraction_lost: f32) {
        if !self.twcc_loss && fraction_lost >= LOSSY_FRACTION {
            self.last_loss = Some(now);
            self.lost_since_probe = true;
        }
    }

    /// str0m's connection stats at `now` (every [`STATS_INTERVAL`]): its estimator's unsmoothed
    /// estimate (bit/s) and the fraction of the packets sent over the last second that TWCC
    /// feedback reported lost. A sample without loss ends the loss hold; an estimate that
    /// covers the preferred layers may lift the cap ([`Downlink::release`]). Returns the targets
    /// to give the estimator now when this sample starts the check with padding (rather than at
    /// the next [`Downlink::targets`], up to half a second later).
    pub(crate) fn on_peer_stats(
        &mut self,
        now: Instant,
        estimate: Option<u64>,
        loss: Option<f32>,
    ) -> Option<BitrateTargets> {
        if let Some(loss) = loss {
            self.twcc_loss = true;
            self.last_loss = (loss >= LOSSY_FRACTION).then_some(now);
            self.lost_since_probe |= self.last_loss.is_some();
        }
        let previous = self.raw_estimate(now);
        if let Some(e) = estimate {
            self.raw = Some((now, e));
        }
        // A probe's result that the estimator dropped again without loss: str0m's loss
        // controller, still recovering from the congestion, pulls the estimate back down within
        // half a second. Restart the estimator from what the probe found (its restarts keep
        // their probes' results); a link still narrow loses the padding or probes that follow.
        let pulled_back = previous
            .zip(estimate)
            .filter(|&(p, e)| p as f64 >= e as f64 * PULLED_BACK)
            .map(|(p, _)| p);
        let reset = pulled_back.filter(|_| {
            self.constrained
                && !self.lossy(now)
                && self.hold_until.is_none_or(|t| now >= t)
                && self
                    .last_reset
                    .is_none_or(|t| now.saturating_duration_since(t) >= RESET_INTERVAL)
        });
        if let Some(rate) = reset {
            self.raw = Some((now, rate));
            self.last_reset = Some(now);
            self.last_probe = Some(now);
            self.probed_estimate = Some(rate);
            self.lost_since_probe = false;
            // The check with padding starts over with the restarted estimator.
            self.verifying = None;
        }
        let was_verifying = self.verifying.is_some();
        self.release(now);
        let current = self.sending.back().map_or(0, |(_, r)| *r);
        if self.verifying.is_some() && (!was_verifying || reset.is_some()) {
            Some(BitrateTargets {
                minimum: self.desired,
                desired: self.desired,
                reset,
            })
        } else {
            reset.map(|_| BitrateTargets {
                minimum: current,
                desired: (self.desired as f64 * PROBE_HEADROOM) as u64,
                reset,
            })
        }
    }

    /// Whether the subscriber lost packets within [`LOSS_HOLD`] (and no TWCC sample without loss
    /// came since).
    fn lossy(&self, now: Instant) -> bool {
        self.last_loss
            .is_some_and(|t| now.saturating_duration_since(t) < LOSS_HOLD)
    }

    /// The unsmoothed estimate, bit/s, unless older than [`RAW_FRESH`].
    fn raw_estimate(&self, now: Instant) -> Option<u64> {
        self.raw
            .filter(|(t, _)| now.saturating_duration_since(*t) <= RAW_FRESH)
            .map(|(_, e)| e)
    }

    /// The higher of the smoothed and the unsmoothed estimate, bit/s: what a constrained link
    /// has shown it carries, for restarts and for judging probes.
    fn best_estimate(&self, now: Instant) -> Option<u64> {
        self.estimate.max(self.raw_estimate(now))
    }

    /// Ends the constraint once the estimate (the unsmoothed one while fresh, else the smoothed
    /// one) covered the preferred layers with [`RELEASE_HEADROOM`], outside the hold and without
    /// loss, for [`VERIFY`] of padding up to their rate ([`Downlink::targets`]).
    fn release(&mut self, now: Instant) {
        let covers = self
            .raw_estimate(now)
            .or(self.estimate)
            .is_some_and(|e| e as f64 >= self.desired as f64 * RELEASE_HEADROOM);
        let settled = !self.lossy(now) && self.hold_until.is_none_or(|t| now >= t);
        if !self.constrained || self.desired == 0 || !covers || !settled {
            self.verifying = None;
            return;
        }
        let since = *self.verifying.get_or_insert(now);
        if now.saturating_duration_since(since) >= VERIFY {
            self.constrained = false;
            self.last_probe = None;
            self.verifying = None;
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
        self.sending_since.get_or_insert(now);
        while self
            .sending
            .front()
            .is_some_and(|(t, _)| now.saturating_duration_since(*t) > SENDING_WINDOW)
        {
            self.sending.pop_front();
        }
        let desired = desired.max(current);
        self.desired = desired;
        self.release(now);
        // Keep the desired rate at what is sent, so that the next raise is an increase.
        let steady = BitrateTargets {
            minimum: current,
            desired: current,
            reset: None,
        };
        if !self.constrained {
            return BitrateTargets { desired, ..steady };
        }
        if self.verifying.is_some() {
            // Padding up to the preferred layers' rate (str0m caps it at its estimate).
            return BitrateTargets {
                minimum: desired,
                desired,
                reset: None,
            };
        }
        let in_hold = self.hold_until.is_some_and(|t| now < t);
        let probe_due = self
            .last_probe
            .is_none_or(|t| now.saturating_duration_since(t) + PROBE_SLACK >= PROBE_INTERVAL);
        if in_hold || !probe_due {
            return steady;
        }
        let lossy = self.lossy(now);
        let best = self.best_estimate(now);
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
        let stuck = best.is_some_and(|e| (e as f64) < current as f64 * CONGESTION_SENT_FRACTION);
        // An estimate that the last probe did not lift, with no loss, or one that saw loss since
        // the last probe, is held back by str0m's loss controller (which blocks probing while it
        // recovers, for many seconds at the packet rate of the lowest layers): restart it from
        // its value so that its initial probes go above it. A link still narrow fails those
        // probes too, so such restarts back off.
        let stagnant = !lossy
            && (self.lost_since_probe
                || best
                    .zip(self.probed_estimate)
                    .is_some_and(|(e, p)| (e as f64) < p as f64 * STAGNANT_GROWTH))
            && since_reset >= self.stagnant_interval.max(RESET_INTERVAL);
        let reset = if stuck && since_reset >= RESET_INTERVAL && (!lossy || at_floor) {
            Some(current)
        } else if stagnant {
            self.stagnant_interval =
                (self.stagnant_interval * 2).clamp(RESET_INTERVAL, MAX_STAGNANT_INTERVAL);
            best.map(|e| e.max(current))
        } else {
            None
        };
        if let Some(rate) = reset {
            // The budget becomes at least what is sent (an estimate stuck below it), never the
            // unsmoothed value a restart starts from: that one lifts the cap only after the
            // check with padding.
            self.estimate = Some(self.estimate.map_or(rate, |e| e.max(current.min(rate))));
            self.raw = Some((now, rate));
            self.last_reset = Some(now);
        }
        if lossy {
            // No probing into a link that is losing packets (a restart at the floor probes up to
            // twice what is sent only).
            return BitrateTargets { reset, ..steady };
        }
        self.last_probe = Some(now);
        self.lost_since_probe = false;
        self.probed_estimate = self.best_estimate(now);
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

    /// A downlink that has reported rates since well before `t0` (none of them left by then).
    fn sending_for_a_while(t0: Instant) -> Downlink {
        let mut d = Downlink::default();
        d.targets(t0 - 3 * S, 0, 0, 0);
        d
    }

    #[test]
    fn unconstrained_link_is_not_capped_and_asks_for_the_preferred_rate() {
        let t0 = Instant::now();
        let mut d = sending_for_a_while(t0);
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
        let mut d = sending_for_a_while(t0);
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
        let mut d = sending_for_a_while(t0);
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
        let mut d = sending_for_a_while(t0);
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
        let mut d = sending_for_a_while(t0);
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
        let mut d = sending_for_a_while(t0);
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
        let mut d = sending_for_a_while(t0);
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
        // The first probe at 3 s sets the reference; restarts at 4 s, then 2, 3, 3 s apart.
        assert_eq!(
            restarts,
            [8, 12, 18, 24, 30, 36, 42, 48, 54]
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
    fn a_backed_up_pacer_queue_with_loss_is_congestion_even_right_after_a_switch_up() {
        let t0 = Instant::now();
        let mut d = sending_for_a_while(t0);
        d.on_estimate(t0, 500_000);
        d.targets(t0, 150_000, 150_000, 2_000_000);
        d.targets(t0 + S, 1_500_000, 150_000, 2_000_000);
        d.on_peer_stats(t0 + S, Some(450_000), Some(0.1));
        d.on_peer_stats(t0 + S + H, Some(450_000), Some(0.2));
        d.on_peer_stats(t0 + 2 * S, Some(400_000), Some(0.2));
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
        let mut d = sending_for_a_while(t0);
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
        let mut d = sending_for_a_while(t0);
        d.on_estimate(t0, 2_500_000);
        d.targets(t0, 2_000_000, 0, 2_000_000);
        assert!(d.on_estimate(t0 + S, 300_000));
        // A successful probe lifts the estimate in steps: the budget follows it.
        assert!(!d.on_estimate(t0 + 4 * S, 900_000));
        assert_eq!(d.budget(), Some(900_000));
        assert!(!d.on_estimate(t0 + 5 * S, 2_400_000));
        // Covered: first a second of padding up to the preferred rate.
        let t = d.targets(t0 + 5 * S, 500_000, 0, 2_000_000);
        assert!(d.is_constrained());
        assert_eq!((t.minimum, t.desired), (2_000_000, 2_000_000));
        let t = d.targets(t0 + 6 * S, 500_000, 0, 2_000_000);
        assert!(!d.is_constrained());
        assert_eq!(d.budget(), None);
        assert_eq!((t.minimum, t.desired), (500_000, 2_000_000));
    }

    #[test]
    fn estimate_below_what_is_sent_but_not_falling_is_not_congestion() {
        let t0 = Instant::now();
        let mut d = sending_for_a_while(t0);
        d.targets(t0, 1_000_000, 0, 1_000_000);
        assert!(!d.on_estimate(t0, 500_000));
        assert!(!d.on_estimate(t0 + S, 490_000));
        assert!(!d.is_constrained());
    }

    #[test]
    fn a_backed_up_pacer_queue_without_loss_is_the_start_up_ramp_not_congestion() {
        // The control subscriber of the e2e test: switched up to the top layer while its
        // estimate was still low from the call's start, its pacer queue reached 458 ms.
        let t0 = Instant::now();
        let mut d = sending_for_a_while(t0);
        d.on_estimate(t0, 232_000);
        d.targets(t0, 150_000, 150_000, 1_500_000);
        d.on_peer_stats(t0, Some(232_000), Some(0.0));
        d.targets(t0 + H, 1_500_000, 150_000, 1_500_000);
        for (i, ms) in [350, 458, 420, 380].into_iter().enumerate() {
            let now = t0 + H * (i as u32 + 1);
            d.on_peer_stats(now, Some(300_000 + 200_000 * i as u64), Some(0.0));
            assert!(!d.on_queue_delay(now, Duration::from_millis(ms)));
        }
        assert!(!d.is_constrained());
        assert_eq!(d.budget(), None);
        // The same queue once the subscriber loses packets: congestion.
        d.on_peer_stats(t0 + 3 * S, Some(900_000), Some(0.08));
        assert!(d.on_queue_delay(t0 + 3 * S, Duration::from_millis(400)));
    }

    #[test]
    fn a_receiver_report_with_loss_without_twcc_still_counts_for_the_queue() {
        let t0 = Instant::now();
        let mut d = sending_for_a_while(t0);
        d.on_estimate(t0, 500_000);
        d.targets(t0, 1_500_000, 150_000, 1_500_000);
        d.on_loss_report(t0, 0.1);
        assert!(!d.on_queue_delay(t0, Duration::from_millis(400)));
        assert!(d.on_queue_delay(t0 + H, Duration::from_millis(500)));
    }

    #[test]
    fn a_twcc_sample_without_loss_ends_the_loss_hold_and_stale_receiver_reports_are_ignored() {
        let t0 = Instant::now();
        let mut d = sending_for_a_while(t0);
        d.on_estimate(t0, 2_500_000);
        d.targets(t0, 2_000_000, 150_000, 2_000_000);
        assert!(d.on_estimate(t0 + S, 300_000));
        d.on_peer_stats(t0 + 3 * S, Some(280_000), Some(0.2));
        let t = d.targets(t0 + 3 * S + H / 2, 150_000, 150_000, 2_000_000);
        assert_eq!(t.desired, 150_000, "lossy: no probe");
        // The limit is lifted: the next sample shows no loss, the probe goes at once.
        d.on_peer_stats(t0 + 3 * S + H, Some(280_000), Some(0.0));
        // A receiver report repeating a fraction lost from under the limit changes nothing.
        d.on_loss_report(t0 + 3 * S + H, 0.12);
        let t = d.targets(t0 + 3 * S + H, 150_000, 150_000, 2_000_000);
        assert_eq!(t.desired, 2_600_000);
    }

    #[test]
    fn the_unsmoothed_estimate_lifts_the_cap_outside_the_hold_and_without_loss_only() {
        let t0 = Instant::now();
        let mut d = sending_for_a_while(t0);
        d.on_estimate(t0, 2_500_000);
        d.targets(t0, 1_500_000, 150_000, 1_500_000);
        d.on_peer_stats(t0 + H, Some(2_500_000), Some(0.0));
        assert!(d.on_estimate(t0 + S, 300_000));
        // Sampled before the congestion: forgotten.
        d.targets(t0 + S, 150_000, 150_000, 1_500_000);
        assert!(d.is_constrained());
        // A high sample within the hold, or with loss (a probe overfilling a narrow link), does
        // not lift the cap.
        d.on_peer_stats(t0 + 2 * S, Some(2_000_000), Some(0.0));
        assert!(d.is_constrained(), "within the hold");
        d.on_peer_stats(t0 + 3 * S + H, Some(2_000_000), Some(0.1));
        assert!(d.is_constrained(), "lossy");
        assert_eq!(
            d.budget(),
            Some(300_000),
            "the smoothed estimate sets the budget"
        );
        // Below the preferred layers with headroom (1.5 Mbit/s x 1.15): still capped.
        d.on_peer_stats(t0 + 4 * S, Some(1_700_000), Some(0.0));
        assert!(d.is_constrained());
        // Covering them, without loss, after the hold: padding up to their rate at once, for a
        // second, then lifted while the smoothed estimate lags.
        let t = d.on_peer_stats(t0 + 4 * S + H, Some(1_800_000), Some(0.0));
        assert_eq!(
            t,
            Some(BitrateTargets {
                minimum: 1_500_000,
                desired: 1_500_000,
                reset: None
            })
        );
        assert!(d.is_constrained());
        let t = d.targets(t0 + 4 * S + H, 150_000, 150_000, 1_500_000);
        assert_eq!(
            (t.minimum, t.desired, t.reset),
            (1_500_000, 1_500_000, None)
        );
        assert_eq!(
            d.on_peer_stats(t0 + 5 * S, Some(1_800_000), Some(0.0)),
            None
        );
        assert!(d.is_constrained());
        d.on_peer_stats(t0 + 5 * S + H, Some(1_800_000), Some(0.0));
        assert!(!d.is_constrained());
        assert_eq!(d.budget(), None);
        assert_eq!(d.estimate(), Some(300_000));
    }

    #[test]
    fn padding_that_a_narrow_link_loses_keeps_the_cap() {
        // A probe overstated a shaped link (its token bucket let the cluster through).
        let t0 = Instant::now();
        let mut d = sending_for_a_while(t0);
        d.on_estimate(t0, 2_500_000);
        d.targets(t0, 1_500_000, 150_000, 1_500_000);
        assert!(d.on_estimate(t0 + S, 300_000));
        d.on_peer_stats(t0 + 3 * S, Some(900_000), Some(0.0));
        d.targets(t0 + 3 * S, 150_000, 150_000, 1_500_000);
        d.on_peer_stats(t0 + 3 * S + H, Some(1_800_000), Some(0.0));
        let t = d.targets(t0 + 3 * S + H, 150_000, 150_000, 1_500_000);
        assert_eq!(t.minimum, 1_500_000, "padding");
        // The padding is lost; the estimator falls.
        d.on_peer_stats(t0 + 4 * S, Some(1_800_000), Some(0.3));
        let t = d.targets(t0 + 4 * S, 150_000, 150_000, 1_500_000);
        assert_eq!(
            (t.minimum, t.desired),
            (150_000, 150_000),
            "no padding, no probe"
        );
        d.on_peer_stats(t0 + 4 * S + H, Some(350_000), Some(0.1));
        d.on_peer_stats(t0 + 5 * S + H, Some(300_000), Some(0.0));
        assert!(d.is_constrained());
        assert_eq!(d.budget(), Some(300_000));
    }

    #[test]
    fn a_stagnation_restart_starts_from_the_unsmoothed_estimate_when_higher() {
        let t0 = Instant::now();
        let mut d = sending_for_a_while(t0);
        d.on_estimate(t0, 2_500_000);
        d.targets(t0, 2_000_000, 150_000, 2_000_000);
        assert!(d.on_estimate(t0 + S, 400_000));
        let t = d.targets(t0 + 3 * S, 150_000, 150_000, 2_000_000);
        assert_eq!((t.reset, t.desired), (None, 2_600_000));
        // The probe lifted the estimator to 550 kbit/s; the smoothed estimate still says 400.
        d.on_peer_stats(t0 + 3 * S + H, Some(550_000), Some(0.0));
        d.targets(t0 + 3 * S + H, 150_000, 150_000, 2_000_000);
        // Lifted by less than half: stagnant, restarted from the estimator's value, not 400.
        let t = d.targets(t0 + 4 * S, 150_000, 150_000, 2_000_000);
        assert_eq!(t.reset, Some(550_000));
        // The budget stays the smoothed estimate until that value is checked with padding.
        assert_eq!(d.budget(), Some(400_000));
    }

    #[test]
    fn the_first_probe_after_loss_restarts_the_estimator() {
        // str0m's loss controller blocks its probes for a while after loss: the probe after a
        // lossy sample is a restart, whatever the estimate did.
        let t0 = Instant::now();
        let mut d = sending_for_a_while(t0);
        d.on_estimate(t0, 2_500_000);
        d.targets(t0, 1_500_000, 150_000, 1_500_000);
        assert!(d.on_estimate(t0 + S, 300_000));
        d.on_peer_stats(t0 + S, Some(250_000), Some(0.2));
        let t = d.targets(t0 + 3 * S, 150_000, 150_000, 1_500_000);
        assert_eq!((t.reset, t.desired), (Some(300_000), 1_950_000));
        // That probe overfilled a narrow link; the next clean probe is a restart again, 2 s on.
        d.on_peer_stats(t0 + 3 * S + H, Some(320_000), Some(0.1));
        d.on_peer_stats(t0 + 4 * S, Some(330_000), Some(0.0));
        let t = d.targets(t0 + 4 * S, 150_000, 150_000, 1_500_000);
        assert_eq!(
            (t.reset, t.desired),
            (None, 1_950_000),
            "1 s after the last restart"
        );
        d.on_peer_stats(t0 + 4 * S + H, Some(330_000), Some(0.1));
        d.on_peer_stats(t0 + 5 * S, Some(340_000), Some(0.0));
        let t = d.targets(t0 + 5 * S, 150_000, 150_000, 1_500_000);
        assert_eq!(t.reset, Some(340_000));
        // A clean probe that lifted the estimate by half is no reason.
        d.on_peer_stats(t0 + 5 * S + H, Some(600_000), Some(0.0));
        d.on_peer_stats(t0 + 7 * S + H, Some(600_000), Some(0.0));
        let t = d.targets(t0 + 7 * S + H, 150_000, 150_000, 1_500_000);
        assert_eq!(t.reset, None);
    }

    #[test]
    fn an_estimate_falling_in_the_first_seconds_of_sending_is_not_congestion() {
        // The control subscriber at the call's start: switched to the top layer as the first
        // layers came, while the estimate fell from its initial value.
        let t0 = Instant::now();
        let mut d = Downlink::default();
        d.on_estimate(t0, 1_500_000);
        d.targets(t0, 300_000, 100_000, 1_500_000);
        assert!(!d.on_estimate(t0 + H, 137_000));
        d.targets(t0 + S, 300_000, 100_000, 1_500_000);
        assert!(!d.on_estimate(t0 + S + H, 120_000));
        assert!(!d.is_constrained());
        // Two seconds on, a falling estimate below the rate sent is congestion again.
        d.targets(t0 + 2 * S, 300_000, 100_000, 1_500_000);
        assert!(d.on_estimate(t0 + 2 * S, 100_000));
    }

    #[test]
    fn a_probe_result_pulled_back_without_loss_restarts_the_estimator_from_it() {
        let t0 = Instant::now();
        let mut d = sending_for_a_while(t0);
        d.on_estimate(t0, 2_500_000);
        d.targets(t0, 800_000, 150_000, 800_000);
        assert!(d.on_estimate(t0 + S, 300_000));
        d.targets(t0 + 3 * S, 150_000, 150_000, 800_000);
        // The probe got through (1.86 Mbit/s covers 800 x 1.15: padding starts), then the
        // estimator fell back to 136 kbit/s without loss.
        let t = d.on_peer_stats(t0 + 3 * S + H, Some(1_860_000), Some(0.0));
        assert_eq!(t.map(|t| (t.minimum, t.reset)), Some((800_000, None)));
        let t = d.on_peer_stats(t0 + 4 * S, Some(136_000), Some(0.0));
        assert_eq!(
            t,
            Some(BitrateTargets {
                minimum: 800_000,
                desired: 800_000,
                reset: Some(1_860_000)
            }),
            "restarted from the probe's result, padding on"
        );
        d.on_peer_stats(t0 + 4 * S + H, Some(1_700_000), Some(0.0));
        assert!(d.is_constrained());
        d.on_peer_stats(t0 + 5 * S, Some(1_700_000), Some(0.0));
        assert!(!d.is_constrained(), "a second of padding since the restart");
        assert_eq!(d.budget(), None);
    }

    #[test]
    fn a_pulled_back_estimate_below_the_preferred_layers_restarts_without_padding() {
        let t0 = Instant::now();
        let mut d = sending_for_a_while(t0);
        d.on_estimate(t0, 2_500_000);
        d.targets(t0, 800_000, 150_000, 800_000);
        assert!(d.on_estimate(t0 + S, 300_000));
        d.targets(t0 + 3 * S, 150_000, 150_000, 800_000);
        assert_eq!(
            d.on_peer_stats(t0 + 3 * S + H, Some(806_000), Some(0.0)),
            None
        );
        let t = d.on_peer_stats(t0 + 4 * S, Some(145_000), Some(0.0));
        assert_eq!(
            t,
            Some(BitrateTargets {
                minimum: 150_000,
                desired: 1_040_000,
                reset: Some(806_000)
            })
        );
        assert_eq!(
            d.budget(),
            Some(300_000),
            "the budget does not follow the restart"
        );
        // Not again within 2 s of that restart, nor with loss.
        d.on_peer_stats(t0 + 4 * S + H, Some(700_000), Some(0.0));
        assert_eq!(d.on_peer_stats(t0 + 5 * S, Some(150_000), Some(0.0)), None);
        d.on_peer_stats(t0 + 6 * S + H, Some(700_000), Some(0.0));
        assert_eq!(d.on_peer_stats(t0 + 7 * S, Some(150_000), Some(0.1)), None);
    }
}
