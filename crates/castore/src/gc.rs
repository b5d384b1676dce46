//! What a garbage collection pass reports, and which unreachable objects
//! it keeps for their age. The passes themselves are
//! backend methods (`collect_garbage` on both service traits); deciding
//! what is live is the caller's job (the store crate walks every PathInfo).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The outcome of one backend's garbage collection (or of a dry run).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct GcReport {
    /// Objects kept because they are live.
    pub live: u64,
    /// Unreachable objects kept because they are younger than the grace period.
    pub young: u64,
    /// Objects deleted (or, in a dry run, that would be).
    pub deleted: u64,
    /// Their bytes on disk (encoded bytes for directories).
    pub deleted_bytes: u64,
}

/// Which unreachable objects a collection keeps for their age: those
/// written (or reused) at or after one instant, fixed when the collection
/// starts. Fixed once, so that however long the marking or a bucket's
/// listing takes, an import still running keeps its whole grace period;
/// every backend of one collection is handed the same value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeepYoung {
    /// Writes at or after this are young; `None`: nothing is.
    since: Option<SystemTime>,
}

impl KeepYoung {
    /// Keeps nothing for its age: everything unreachable goes, even an
    /// object whose clock (a bucket's) runs ahead of this host's.
    pub const NOTHING: KeepYoung = KeepYoung { since: None };

    /// Keeps what was written within `grace` before `now`. A grace of
    /// zero is [`KeepYoung::NOTHING`]; one reaching before the epoch
    /// keeps everything.
    pub fn within(grace: Duration, now: SystemTime) -> KeepYoung {
        if grace.is_zero() {
            return KeepYoung::NOTHING;
        }
        KeepYoung {
            since: Some(now.checked_sub(grace).unwrap_or(UNIX_EPOCH)),
        }
    }

    /// Whether an object written at `written` is kept for its age.
    pub fn keeps(&self, written: SystemTime) -> bool {
        self.since.is_some_and(|since| written >= since)
    }

    /// [`KeepYoung::keeps`] for a time recorded in whole seconds since
    /// the epoch (the embedded indexes): a write in the cutoff's own second
    /// is kept, erring towards keeping.
    pub fn keeps_unix_secs(&self, written: u64) -> bool {
        self.since.is_some_and(|since| {
            let since = since.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
            written >= since
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_grace_keeps_nothing_not_even_the_future() {
        let now = SystemTime::now();
        let keep = KeepYoung::within(Duration::ZERO, now);
        assert_eq!(keep, KeepYoung::NOTHING);
        assert!(!keep.keeps(now + Duration::from_secs(3600)));
        assert!(!keep.keeps_unix_secs(u64::MAX));
    }

    #[test]
    fn a_grace_keeps_what_was_written_since_its_start() {
        let now = UNIX_EPOCH + Duration::from_secs(10_000);
        let keep = KeepYoung::within(Duration::from_secs(60), now);
        assert!(keep.keeps(now - Duration::from_secs(60)));
        assert!(keep.keeps(now + Duration::from_secs(5)));
        assert!(!keep.keeps(now - Duration::from_secs(61)));
        assert!(keep.keeps_unix_secs(10_000 - 60));
        assert!(!keep.keeps_unix_secs(10_000 - 61));
    }

    #[test]
    fn a_grace_longer_than_the_epoch_keeps_everything() {
        let keep = KeepYoung::within(Duration::MAX, SystemTime::now());
        assert!(keep.keeps(UNIX_EPOCH));
        assert!(keep.keeps_unix_secs(0));
    }
}
