//! Domain services, free of HTTP types: the store, deployment keys, identities and tokens, call control.

pub mod calls;
pub mod deployment;
pub mod identity;
pub mod store;

/// Seconds since the Unix epoch, from the system clock.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
