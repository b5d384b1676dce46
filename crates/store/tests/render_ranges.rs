//! The seekable renderer: any byte range equals the same slice of the
//! whole NAR, and file offsets point at the files' contents.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use cairn_castore::addr::{blob_service_from_addr, directory_service_from_addr};
use cairn_castore::import::{fs::import_path, NoProgress};
use cairn_castore::{BlobService, Node};
use cairn_nix::nar::fs::dump_path;
use cairn_store::render::{NarLayout, RenderError};
use cairn_testkit::{generated_trees, pseudo_random_bytes};
use proptest::prelude::*;

struct Fixture {
    blobs: Arc<dyn BlobService>,
    layouts: Vec<(NarLayout, Vec<u8>)>,
    _work: tempfile::TempDir,
}

fn fixture(rt: &tokio::runtime::Runtime) -> Fixture {
    rt.block_on(async {
        let work = tempfile::tempdir().unwrap();
        std::fs::create_dir(work.path().join("gen")).unwrap();
        let mut trees = generated_trees(&work.path().join("gen"));
        // Chunked blobs, so ranges start inside chunks of a large file,
        // several in a row, so the renderer fetches pieces of the next
        // while handing on the last.
        let big = work.path().join("big");
        std::fs::create_dir_all(big.join("sub")).unwrap();
        std::fs::write(big.join("a"), pseudo_random_bytes(1, 3 * 1024 * 1024 + 5)).unwrap();
        std::fs::write(big.join("a2"), pseudo_random_bytes(2, 2 * 1024 * 1024 + 1)).unwrap();
        std::fs::write(big.join("a3"), pseudo_random_bytes(3, 1536 * 1024)).unwrap();
        std::fs::write(big.join("sub/b"), b"small").unwrap();
        std::fs::write(big.join("sub/c"), pseudo_random_bytes(4, 1024 * 1024 + 9)).unwrap();
        std::fs::write(big.join("sub/empty"), b"").unwrap();
        trees.push(big);
        let store = work.path().join("store");
        let blobs =
            blob_service_from_addr(&format!("objects://{}/objects", store.display())).unwrap();
        let dirs = directory_service_from_addr("memory://").unwrap();
        let mut layouts = Vec::new();
        for tree in trees {
            let node: Node = import_path(blobs.clone(), dirs.as_ref(), &tree, &NoProgress)
                .await
                .unwrap();
            let layout = NarLayout::of(&node, dirs.as_ref()).await.unwrap();
            let nar = dump_path(&tree, Vec::new()).unwrap();
            assert_eq!(layout.size(), nar.len() as u64, "{}", tree.display());
            layouts.push((layout, nar));
        }
        Fixture {
            blobs,
            layouts,
            _work: work,
        }
    })
}

#[test]
fn whole_nar_and_file_offsets_match() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let f = fixture(&rt);
    rt.block_on(async {
        for (layout, nar) in &f.layouts {
            let all = layout
                .write_range(f.blobs.as_ref(), Vec::new(), 0..layout.size())
                .await
                .unwrap();
            assert!(all == *nar);
            for file in layout.files() {
                let at = file.offset as usize;
                let contents = &nar[at..at + file.size as usize];
                assert_eq!(cairn_castore::B3Digest::of(contents), file.digest);
            }
        }
        let (layout, _) = &f.layouts[0];
        let size = layout.size();
        #[allow(clippy::reversed_empty_ranges)] // a backwards range must be refused
        for bad in [size..size + 1, 5..4] {
            let err = layout
                .write_range(f.blobs.as_ref(), Vec::new(), bad.clone())
                .await
                .unwrap_err();
            assert!(
                matches!(err, RenderError::BadRange { .. }),
                "{bad:?}: {err}"
            );
        }
    });
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]
    #[test]
    fn any_range_equals_the_same_slice(which in any::<prop::sample::Index>(), a in any::<u64>(), b in any::<u64>()) {
        thread_local! {
            static RT: tokio::runtime::Runtime = tokio::runtime::Runtime::new().unwrap();
            static F: Fixture = RT.with(fixture);
        }
        RT.with(|rt| F.with(|f| {
            let (layout, nar) = &f.layouts[which.index(f.layouts.len())];
            let size = layout.size() + 1;
            let (x, y) = (a % size, b % size);
            let range = x.min(y)..x.max(y);
            let got = rt
                .block_on(layout.write_range(f.blobs.as_ref(), Vec::new(), range.clone()))
                .unwrap();
            prop_assert!(got == nar[range.start as usize..range.end as usize], "range {:?}", range);
            Ok(())
        }))?;
    }
}
