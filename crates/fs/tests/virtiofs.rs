//! The virtio-fs device over a real Unix socket, driven by the vhost
//! crate's own VMM-side client: the vhost-user handshake (owner,
//! features, protocol features, queue count) completes with what a
//! virtio-fs device must offer, and the device ends when that client
//! disconnects. (A full guest boot under QEMU is not part of the test
//! suite.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use cairn_fs::{serve_virtiofs, StoreFs};
use cairn_store::Store;
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::VhostBackend;

fn memory_store() -> Store {
    Store {
        blobs: cairn_castore::addr::blob_service_from_addr("memory://").unwrap(),
        dirs: cairn_castore::addr::directory_service_from_addr("memory://").unwrap(),
        path_infos: cairn_store::addr::path_info_service_from_addr("memory://").unwrap(),
    }
}

#[test]
fn a_vmm_completes_the_vhost_user_handshake() {
    let tmp = tempfile::tempdir().unwrap();
    let socket = tmp.path().join("virtiofs.sock");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let fs = StoreFs::new(memory_store(), rt.handle().clone(), false);
    let serving = {
        let socket = socket.clone();
        std::thread::spawn(move || serve_virtiofs(fs, &socket))
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "the socket never appeared");
        std::thread::sleep(Duration::from_millis(10));
    }

    let mut vmm = Frontend::connect(&socket, 2).unwrap();
    vmm.set_owner().unwrap();
    let features = vmm.get_features().unwrap();
    assert_ne!(
        features & (1 << 32),
        0,
        "VIRTIO_F_VERSION_1 missing: {features:#x}"
    );
    let protocol_bit = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
    assert_ne!(
        features & protocol_bit,
        0,
        "no vhost-user protocol features"
    );
    vmm.set_features(features).unwrap();
    let protocol = vmm.get_protocol_features().unwrap();
    assert!(
        protocol.contains(VhostUserProtocolFeatures::MQ),
        "{protocol:?}"
    );
    vmm.set_protocol_features(VhostUserProtocolFeatures::MQ)
        .unwrap();
    assert_eq!(vmm.get_queue_num().unwrap(), 2);

    // Connected, the device keeps serving.
    std::thread::sleep(Duration::from_millis(200));
    assert!(!serving.is_finished());

    // A VMM that goes away ends it, without an error.
    drop(vmm);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !serving.is_finished() {
        assert!(
            Instant::now() < deadline,
            "the device still serves 10 s after the VMM disconnected"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let served = serving.join().unwrap();
    assert!(served.is_ok(), "{served:?}");
}
