//! Serving a [`StoreFs`] on a FUSE mount point: mount with `fusermount3`
//! (no root needed), then a pool of threads, each with its own channel to
//! `/dev/fuse`, answering requests until the mount goes away.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use cairn_store::Store;
use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::transport::FuseSession;
use tokio::runtime::Handle;
use tokio::sync::Notify;

use crate::StoreFs;

/// How to mount.
#[derive(Debug, Clone)]
pub struct MountOptions {
    /// Listing the root enumerates every store path.
    pub list_root: bool,
    /// Let users other than the one mounting read the mount (needs
    /// `user_allow_other` in /etc/fuse.conf unless mounting as root).
    pub allow_other: bool,
    /// Threads answering requests.
    pub threads: usize,
    /// The kernel's read-ahead for the mount, in KiB: how much it asks
    /// for at once when a file is read sequentially (the kernel's default
    /// for FUSE is 128). Setting it needs root; without, the default
    /// stays. 0 leaves it alone.
    pub read_ahead_kib: u32,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            list_root: false,
            allow_other: false,
            threads: std::thread::available_parallelism()
                .map(|n| n.get() * 2)
                .unwrap_or(4)
                .max(2),
            // One request of the largest size FUSE allows (MAX_PAGES):
            // an eighth of the round trips of the default.
            read_ahead_kib: 1024,
        }
    }
}

/// Why a mount failed.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// Mounting failed: no FUSE, no permission, a bad mount point.
    #[error(
        "cannot mount at {mountpoint}: {reason} (FUSE needs /dev/fuse and fusermount3: \
         on Debian, apt-get install fuse3)"
    )]
    Mount {
        /// The mount point.
        mountpoint: PathBuf,
        /// What the FUSE layer said.
        reason: String,
    },
    /// Unmounting failed (something still uses the mount?).
    #[error("cannot unmount {mountpoint}: {reason}")]
    Unmount {
        /// The mount point.
        mountpoint: PathBuf,
        /// What the FUSE layer said.
        reason: String,
    },
}

/// A live mount. Dropping it unmounts.
pub struct Mounted {
    session: FuseSession,
    threads: Vec<JoinHandle<()>>,
    mountpoint: PathBuf,
    gone: Arc<Notify>,
    /// Set before unmounting: channels failing after it is expected.
    stopping: Arc<AtomicBool>,
}

/// Mounts `store` read-only at `mountpoint`, calling the services through
/// `rt`.
pub fn mount(
    store: Store,
    rt: Handle,
    mountpoint: &Path,
    options: &MountOptions,
) -> Result<Mounted, MountError> {
    let failed = |reason: String| MountError::Mount {
        mountpoint: mountpoint.to_owned(),
        reason,
    };
    // As the mount table will name it (resolved now: once mounted, resolving
    // it would ask this filesystem).
    let resolved = std::fs::canonicalize(mountpoint).unwrap_or_else(|_| mountpoint.to_owned());
    let mut session =
        FuseSession::new(mountpoint, "cairn", "cairn", true).map_err(|e| failed(e.to_string()))?;
    session.set_allow_other(options.allow_other);
    session.mount().map_err(|e| failed(e.to_string()))?;
    let server = Arc::new(Server::new(Arc::new(StoreFs::new(
        store,
        rt,
        options.list_root,
    ))));
    let gone = Arc::new(Notify::new());
    let stopping = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    for i in 0..options.threads.max(1) {
        let mut channel = match session.new_channel() {
            Ok(c) => c,
            Err(e) => {
                let _ = session.umount();
                return Err(failed(format!("FUSE channel: {e}")));
            }
        };
        let server = server.clone();
        let gone = gone.clone();
        let stopping = stopping.clone();
        let resolved = resolved.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("cairn-fuse-{i}"))
            .spawn(move || {
                loop {
                    match channel.get_request() {
                        Ok(Some((reader, writer))) => {
                            if let Err(e) = server.handle_message(reader, writer.into(), None, None)
                            {
                                // A request the kernel gave up on (interrupted) cannot be
                                // answered; anything else is worth a line.
                                tracing::debug!(error = %e, "FUSE request failed");
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            // Every thread sees the end; one line says why.
                            if !stopping.swap(true, Ordering::Relaxed) {
                                if is_mounted(&resolved) {
                                    tracing::warn!(error = %e, "FUSE channel failed");
                                } else {
                                    tracing::debug!(
                                        mountpoint = %resolved.display(),
                                        "unmounted from outside (fusermount3 -u)"
                                    );
                                }
                            }
                            break;
                        }
                    }
                }
                gone.notify_one();
            });
        match spawned {
            Ok(t) => threads.push(t),
            Err(e) => {
                let _ = session.umount();
                return Err(failed(format!("cannot start a thread: {e}")));
            }
        }
    }
    if options.read_ahead_kib > 0 {
        // Needs the serving threads: stat-ing the mount point asks them.
        if let Err(e) = set_read_ahead(mountpoint, options.read_ahead_kib) {
            tracing::info!(error = %e, "kernel read-ahead for the mount left at its default");
        }
    }
    Ok(Mounted {
        session,
        threads,
        mountpoint: mountpoint.to_owned(),
        gone,
        stopping,
    })
}

/// Whether a FUSE filesystem is mounted at `mountpoint` (per this
/// process's mount table; unreadable counts as mounted, so a failure is
/// reported).
fn is_mounted(mountpoint: &Path) -> bool {
    let Ok(table) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return true;
    };
    let wanted = mountpoint.to_string_lossy();
    // Field 5 is the mount point (spaces and the like octal-escaped); the
    // type follows the " - " separator (ours: fuse.cairn).
    table.lines().any(|line| {
        let at = line.split(' ').nth(4).map(unescape_mountinfo);
        let fstype = line
            .split_once(" - ")
            .and_then(|(_, rest)| rest.split(' ').next());
        at.as_deref() == Some(&*wanted) && fstype.is_some_and(|t| t.starts_with("fuse"))
    })
}

/// Undoes mountinfo's `\NNN` octal escapes.
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| {
            std::str::from_utf8(d)
                .ok()
                .and_then(|d| u8::from_str_radix(d, 8).ok())
        });
        match (bytes[i], octal) {
            (b'\\', Some(b)) => {
                out.push(b);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Sets the read-ahead of the mount at `mountpoint` through sysfs (FUSE
/// offers no mount option for it).
fn set_read_ahead(mountpoint: &Path, kib: u32) -> std::io::Result<()> {
    let dev = rustix::fs::stat(mountpoint)?.st_dev;
    let (major, minor) = (rustix::fs::major(dev), rustix::fs::minor(dev));
    let knob = format!("/sys/class/bdi/{major}:{minor}/read_ahead_kb");
    std::fs::write(&knob, kib.to_string())
        .map_err(|e| std::io::Error::new(e.kind(), format!("{knob}: {e}")))
}

impl Mounted {
    /// Resolves when the mount went away from outside (`fusermount3 -u`).
    pub async fn unmounted_elsewhere(&self) {
        self.gone.notified().await;
    }

    /// Unmounts and waits for the serving threads.
    pub fn unmount(mut self) -> Result<(), MountError> {
        self.stop()
    }

    fn stop(&mut self) -> Result<(), MountError> {
        self.stopping.store(true, Ordering::Relaxed);
        let result = self.session.umount().map_err(|e| MountError::Unmount {
            mountpoint: self.mountpoint.clone(),
            reason: e.to_string(),
        });
        let _ = self.session.wake();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        result
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            if let Err(e) = self.stop() {
                tracing::warn!(error = %e, "unmounting on drop");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_table_escapes_are_undone() {
        assert_eq!(unescape_mountinfo("/tmp/a\\040b\\134c"), "/tmp/a b\\c");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
        // Not an escape: kept as it is.
        assert_eq!(unescape_mountinfo("/x\\9"), "/x\\9");
    }
}
