//! Session timers (RFC 4028), the UAS side of the gateway's inbound dialogs: whether a dialog uses
//! one, who refreshes it, and when a refresh is due or the session has expired. Sans-IO: headers in,
//! decisions and instants out; the UA sends the requests.
//!
//! - The INVITE's `Session-Expires` (seconds, optional `refresher=uac|uas`) is kept as it is (a UAS
//!   never raises it) when it is at least [`MIN_SE`]; a smaller one gets `422 Session Interval Too
//!   Small` with `Min-SE` the larger of 90 and the request's own (§9).
//! - A caller that supports the extension (`Supported: timer`) refreshes itself unless it asked us
//!   to (`refresher=uas`); the 2xx then carries `Require: timer`. A caller that does not support it
//!   (a proxy inserted the header) leaves refreshing to us (§9: `refresher=uas`, no `Require`).
//! - No `Session-Expires` in the request: no session timer (a UAS may add one only for callers
//!   that support it; the gateway does not impose one).
//! - We refresh at half the interval (§10); when the caller refreshes, the session expires
//!   `min(32, interval / 3)` seconds before the interval ends without a refresh, and we send BYE.

use std::time::{Duration, Instant};

/// The smallest session interval accepted, in seconds (RFC 4028 §4: the recommended and lowest
/// allowed `Min-SE`).
pub const MIN_SE: u32 = 90;

/// Who sends session refresh requests (RFC 4028 §4, the `refresher` parameter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refresher {
    /// The caller (the UAC of the dialog-creating INVITE).
    Uac,
    /// The gateway (UAS).
    Uas,
}

impl Refresher {
    /// `uac` or `uas`.
    pub fn as_str(self) -> &'static str {
        match self {
            Refresher::Uac => "uac",
            Refresher::Uas => "uas",
        }
    }
}

/// A parsed `Session-Expires` value: `delta-seconds *(;param)` (RFC 4028 §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionExpires {
    /// The session interval, seconds.
    pub interval: u32,
    /// The `refresher` parameter, when present and valid.
    pub refresher: Option<Refresher>,
}

/// Parses a `Session-Expires` (or compact `x`) header value; `None` when the delta-seconds are not
/// a number.
pub fn parse_session_expires(value: &str) -> Option<SessionExpires> {
    let mut parts = value.split(';');
    let interval = parts.next()?.trim().parse::<u32>().ok()?;
    let refresher = parts.find_map(|p| {
        let (name, v) = p.split_once('=')?;
        if !name.trim().eq_ignore_ascii_case("refresher") {
            return None;
        }
        match v.trim().to_ascii_lowercase().as_str() {
            "uac" => Some(Refresher::Uac),
            "uas" => Some(Refresher::Uas),
            _ => None,
        }
    });
    Some(SessionExpires {
        interval,
        refresher,
    })
}

/// Whether a header list value (`Supported`, `Require`) names the `timer` option tag.
pub fn lists_timer(value: &str) -> bool {
    value
        .split(',')
        .any(|t| t.trim().eq_ignore_ascii_case("timer"))
}

/// What the UAS does with a dialog-creating or refreshing request (RFC 4028 §9).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UasDecision {
    /// No session timer for this dialog.
    None,
    /// Use one: the 2xx carries `Session-Expires: <header>` and, when `require`, `Require: timer`.
    Use {
        /// Interval and refresher.
        timer: SessionExpires,
        /// Whether the 2xx carries `Require: timer` (the caller supports the extension).
        require: bool,
    },
    /// `422 Session Interval Too Small` with `Min-SE: <min_se>`.
    TooSmall {
        /// The `Min-SE` to send, seconds.
        min_se: u32,
    },
}

/// Decides from a request's `Session-Expires`, `Min-SE` and whether its `Supported` (or `Require`)
/// lists `timer`. A malformed `Session-Expires` is treated as absent.
pub fn negotiate_uas(
    session_expires: Option<&str>,
    min_se: Option<&str>,
    uac_supports_timer: bool,
) -> UasDecision {
    let Some(se) = session_expires.and_then(parse_session_expires) else {
        return UasDecision::None;
    };
    let their_min = min_se
        .and_then(|m| m.split(';').next()?.trim().parse::<u32>().ok())
        .unwrap_or(0);
    let floor = MIN_SE.max(their_min);
    if se.interval < MIN_SE {
        return UasDecision::TooSmall { min_se: floor };
    }
    let refresher = match (uac_supports_timer, se.refresher) {
        (false, _) => Refresher::Uas,
        (true, Some(r)) => r,
        (true, None) => Refresher::Uac,
    };
    // The UAS must not raise the interval (§9), whatever the request's Min-SE says.
    UasDecision::Use {
        timer: SessionExpires {
            interval: se.interval,
            refresher: Some(refresher),
        },
        require: uac_supports_timer,
    }
}

/// The session timer of one dialog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionTimer {
    /// Session interval, seconds.
    pub interval: u32,
    /// Who refreshes.
    pub refresher: Refresher,
    /// Whether our 2xx responses carry `Require: timer`.
    pub require: bool,
    refreshed_at: Instant,
    /// A failed refresh of ours is retried at this instant instead of at half the interval.
    retry_at: Option<Instant>,
}

impl SessionTimer {
    /// A timer negotiated by [`negotiate_uas`], running from `now` (the 2xx).
    pub fn new(timer: SessionExpires, require: bool, now: Instant) -> SessionTimer {
        SessionTimer {
            interval: timer.interval,
            refresher: timer.refresher.unwrap_or(Refresher::Uas),
            require,
            refreshed_at: now,
            retry_at: None,
        }
    }

    /// The `Session-Expires` value of our responses and refreshes: `90;refresher=uac`.
    pub fn header(&self) -> String {
        format!("{};refresher={}", self.interval, self.refresher.as_str())
    }

    /// A refresh succeeded at `now` (ours got a 2xx, or we answered the caller's with one).
    pub fn refreshed(&mut self, now: Instant) {
        self.refreshed_at = now;
        self.retry_at = None;
    }

    /// Our refresh failed without ending the dialog (491, 500...): try again at `now` + 10 s.
    pub fn retry_later(&mut self, now: Instant) {
        self.retry_at = Some(now + Duration::from_secs(10));
    }

    /// When we should send a refresh (we are the refresher): half the interval after the last one
    /// (§10), or the retry instant after a failure.
    pub fn refresh_due(&self) -> Option<Instant> {
        (self.refresher == Refresher::Uas).then(|| {
            self.retry_at
                .unwrap_or(self.refreshed_at + Duration::from_secs(u64::from(self.interval) / 2))
        })
    }

    /// When the session has expired without a refresh and we send BYE (§10): the interval less
    /// `min(32, interval / 3)` seconds after the last refresh. For our own refreshes the whole
    /// interval (a refresh in flight may still be answered).
    pub fn expires_at(&self) -> Instant {
        let interval = u64::from(self.interval);
        let margin = match self.refresher {
            Refresher::Uac => 32.min(interval / 3),
            Refresher::Uas => 0,
        };
        self.refreshed_at + Duration::from_secs(interval - margin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_interval_and_refresher() {
        assert_eq!(
            parse_session_expires("1800;refresher=uac"),
            Some(SessionExpires {
                interval: 1800,
                refresher: Some(Refresher::Uac)
            })
        );
        assert_eq!(
            parse_session_expires(" 90 ; Refresher = UAS ;x=1"),
            Some(SessionExpires {
                interval: 90,
                refresher: Some(Refresher::Uas)
            })
        );
        assert_eq!(
            parse_session_expires("600;refresher=both"),
            Some(SessionExpires {
                interval: 600,
                refresher: None
            })
        );
        assert_eq!(parse_session_expires("soon"), None);
        assert_eq!(parse_session_expires(""), None);
        assert_eq!(parse_session_expires("-5"), None);
        assert_eq!(parse_session_expires("99999999999"), None);
        assert!(lists_timer("replaces, Timer"));
        assert!(!lists_timer("replaces, 100rel"));
    }

    #[test]
    fn a_supporting_caller_refreshes_unless_it_asks_us_to() {
        let uac = negotiate_uas(Some("1800"), None, true);
        assert_eq!(
            uac,
            UasDecision::Use {
                timer: SessionExpires {
                    interval: 1800,
                    refresher: Some(Refresher::Uac)
                },
                require: true
            }
        );
        let uas = negotiate_uas(Some("1800;refresher=uas"), None, true);
        assert!(matches!(
            uas,
            UasDecision::Use {
                timer: SessionExpires {
                    refresher: Some(Refresher::Uas),
                    ..
                },
                require: true
            }
        ));
    }

    #[test]
    fn a_caller_without_the_extension_leaves_refreshing_to_us_without_require() {
        // A proxy inserted Session-Expires (refresher=uac even): the UAC cannot refresh (§9).
        let d = negotiate_uas(Some("900;refresher=uac"), None, false);
        assert_eq!(
            d,
            UasDecision::Use {
                timer: SessionExpires {
                    interval: 900,
                    refresher: Some(Refresher::Uas)
                },
                require: false
            }
        );
    }

    #[test]
    fn too_small_intervals_get_422_with_our_min_se_and_min_se_raises_the_interval() {
        assert_eq!(
            negotiate_uas(Some("60"), None, true),
            UasDecision::TooSmall { min_se: 90 }
        );
        assert_eq!(
            negotiate_uas(Some("60"), Some("120"), true),
            UasDecision::TooSmall { min_se: 120 }
        );
        // The interval is never raised (§9: a UAS must not increase it), whatever the request's Min-SE says;
        // a huge Min-SE cannot stretch the session beyond what the caller asked.
        assert!(matches!(
            negotiate_uas(Some("100"), Some("120"), true),
            UasDecision::Use {
                timer: SessionExpires { interval: 100, .. },
                ..
            }
        ));
        assert!(matches!(
            negotiate_uas(Some("90"), Some("4294967295"), true),
            UasDecision::Use {
                timer: SessionExpires { interval: 90, .. },
                ..
            }
        ));
        assert_eq!(negotiate_uas(None, Some("120"), true), UasDecision::None);
        assert_eq!(negotiate_uas(Some("x"), None, true), UasDecision::None);
    }

    #[test]
    fn we_refresh_at_half_the_interval_and_retry_after_a_failure() {
        let t0 = Instant::now();
        let mut t = SessionTimer::new(
            SessionExpires {
                interval: 90,
                refresher: Some(Refresher::Uas),
            },
            false,
            t0,
        );
        assert_eq!(t.header(), "90;refresher=uas");
        assert_eq!(t.refresh_due(), Some(t0 + Duration::from_secs(45)));
        assert_eq!(t.expires_at(), t0 + Duration::from_secs(90));
        let failed = t0 + Duration::from_secs(45);
        t.retry_later(failed);
        assert_eq!(t.refresh_due(), Some(failed + Duration::from_secs(10)));
        let ok = t0 + Duration::from_secs(56);
        t.refreshed(ok);
        assert_eq!(t.refresh_due(), Some(ok + Duration::from_secs(45)));
    }

    #[test]
    fn a_caller_that_stops_refreshing_expires_the_session_before_the_interval_ends() {
        let t0 = Instant::now();
        let t = |interval| {
            SessionTimer::new(
                SessionExpires {
                    interval,
                    refresher: Some(Refresher::Uac),
                },
                true,
                t0,
            )
        };
        // min(32, interval / 3): 30 s early for 90 s, 32 s early for 1800 s.
        assert_eq!(t(90).expires_at(), t0 + Duration::from_secs(60));
        assert_eq!(t(1800).expires_at(), t0 + Duration::from_secs(1768));
        assert_eq!(t(90).refresh_due(), None);
        assert_eq!(t(1800).header(), "1800;refresher=uac");
    }
}
