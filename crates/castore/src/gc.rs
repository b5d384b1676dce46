//! What a garbage collection pass reports. The passes themselves are
//! backend methods (`collect_garbage` on both service traits); deciding
//! what is live is the caller's job (the store crate walks every PathInfo).

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
