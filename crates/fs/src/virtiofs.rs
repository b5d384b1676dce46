//! The same [`StoreFs`] served to a virtual machine as a vhost-user
//! virtio-fs device (`cairn virtiofs SOCKET`): the VMM (cloud-hypervisor,
//! QEMU with `vhost-user-fs-pci`) connects to the socket and hands over
//! the guest's memory and queues; each request popped from a queue is a
//! FUSE message, answered by the same server as a FUSE mount.
//!
//! Two queues (the high-priority one and one request queue), each served
//! on the thread the vhost-user library gives it.

use std::io;
use std::path::Path;
use std::sync::{Arc, RwLock};

use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::transport::{Reader, VirtioFsWriter};
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackendMut, VhostUserDaemon, VringRwLock, VringT};
use virtio_bindings::bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::bindings::virtio_ring::{
    VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
};
use virtio_queue::QueueT;
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EventFd, EFD_CLOEXEC, EFD_NONBLOCK};

use crate::StoreFs;

/// The high-priority queue and one request queue.
const QUEUES: usize = 2;
/// Descriptors per queue.
const QUEUE_SIZE: usize = 1024;

/// Why the virtio-fs device failed.
#[derive(Debug, thiserror::Error)]
pub enum VirtioFsError {
    /// Setting up or running the vhost-user daemon failed.
    #[error("vhost-user on {socket}: {reason}")]
    Daemon {
        /// The socket.
        socket: String,
        /// What failed.
        reason: String,
    },
}

struct Backend {
    server: Arc<Server<Arc<StoreFs>>>,
    mem: Option<GuestMemoryAtomic<GuestMemoryMmap>>,
    event_idx: bool,
    /// Written by the library when the VMM has gone: the queue thread
    /// watches it and ends. Without one it would wait on the queues
    /// forever, and the device with it.
    exit: EventFd,
}

fn invalid(what: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

impl Backend {
    /// Answers every request waiting on `vring`.
    fn process(&self, vring: &VringRwLock) -> io::Result<()> {
        let Some(atomic) = &self.mem else {
            return Err(invalid("no guest memory yet"));
        };
        let mem = atomic.memory();
        loop {
            let chain = vring
                .get_mut()
                .get_queue_mut()
                .pop_descriptor_chain(mem.clone());
            let Some(chain) = chain else { break };
            let head = chain.head_index();
            let reader = Reader::from_descriptor_chain(&*mem, chain.clone()).map_err(invalid)?;
            let writer = VirtioFsWriter::new(&*mem, chain).map_err(invalid)?;
            let used = self
                .server
                .handle_message(reader, writer.into(), None, None)
                .unwrap_or_else(|e| {
                    tracing::debug!(error = %e, "virtio-fs request failed");
                    0
                });
            vring.add_used(head, used as u32).map_err(invalid)?;
            if !self.event_idx || vring.needs_notification().map_err(invalid)? {
                vring.signal_used_queue()?;
            }
        }
        Ok(())
    }
}

impl VhostUserBackendMut for Backend {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        QUEUES
    }

    fn max_queue_size(&self) -> usize {
        QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        (1 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_RING_F_INDIRECT_DESC)
            | (1 << VIRTIO_RING_F_EVENT_IDX)
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::MQ
    }

    fn exit_event(&self, _thread_index: usize) -> Option<EventFd> {
        match self.exit.try_clone() {
            Ok(fd) => Some(fd),
            Err(e) => {
                tracing::warn!(error = %e, "no exit event: the device will outlive its VMM");
                None
            }
        }
    }

    fn set_event_idx(&mut self, enabled: bool) {
        self.event_idx = enabled;
    }

    fn update_memory(&mut self, mem: GuestMemoryAtomic<GuestMemoryMmap>) -> io::Result<()> {
        self.mem = Some(mem);
        Ok(())
    }

    fn handle_event(
        &mut self,
        device_event: u16,
        evset: EventSet,
        vrings: &[VringRwLock],
        _thread_id: usize,
    ) -> io::Result<()> {
        if evset != EventSet::IN {
            return Err(invalid(format!("unexpected event set {evset:?}")));
        }
        let vring = vrings
            .get(usize::from(device_event))
            .ok_or_else(|| invalid(format!("no queue {device_event}")))?;
        if self.event_idx {
            // Process until no new request arrived while notifications
            // were off (the event-index protocol).
            loop {
                vring.disable_notification().map_err(invalid)?;
                self.process(vring)?;
                if !vring.enable_notification().map_err(invalid)? {
                    break;
                }
            }
            Ok(())
        } else {
            self.process(vring)
        }
    }
}

/// Serves `fs` as a virtio-fs device on the Unix socket `socket` (which
/// is created) until the VMM disconnects.
pub fn serve_virtiofs(fs: StoreFs, socket: &Path) -> Result<(), VirtioFsError> {
    let failed = |reason: String| VirtioFsError::Daemon {
        socket: socket.display().to_string(),
        reason,
    };
    let exit = EventFd::new(EFD_NONBLOCK | EFD_CLOEXEC)
        .map_err(|e| failed(format!("cannot make an eventfd: {e}")))?;
    let backend = Arc::new(RwLock::new(Backend {
        server: Arc::new(Server::new(Arc::new(fs))),
        mem: None,
        event_idx: false,
        exit,
    }));
    let mut daemon = VhostUserDaemon::new(
        "cairn-virtiofs".to_owned(),
        backend,
        GuestMemoryAtomic::new(GuestMemoryMmap::new()),
    )
    .map_err(|e| failed(e.to_string()))?;
    daemon.serve(socket).map_err(|e| failed(e.to_string()))
}
