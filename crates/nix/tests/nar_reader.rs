//! The NAR reader against hand-made archives: every malformation is refused
//! with the right reason by both the sync and the async reader, everything
//! accepted re-encodes byte for byte, and a failed restore leaves nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Read;

use cairn_nix::nar::{
    self, AsyncNarReader, AsyncNarWriter, Event, Malformed, NarError, NarReader, NarWriter,
};
use cairn_testkit::nar_corpus;
use tokio::io::AsyncReadExt;

type Item = (Event, Vec<u8>);

fn read_sync(bytes: &[u8]) -> Result<Vec<Item>, NarError> {
    let mut r = NarReader::new(bytes);
    let mut out = Vec::new();
    while let Some(ev) = r.next()? {
        let mut contents = Vec::new();
        if matches!(ev, Event::File { .. }) {
            r.contents()
                .read_to_end(&mut contents)
                .map_err(NarError::from)?;
        }
        out.push((ev, contents));
    }
    Ok(out)
}

async fn read_async(bytes: &[u8]) -> Result<Vec<Item>, NarError> {
    let mut r = AsyncNarReader::new(bytes);
    let mut out = Vec::new();
    while let Some(ev) = r.next().await? {
        let mut contents = Vec::new();
        if matches!(ev, Event::File { .. }) {
            r.contents()
                .read_to_end(&mut contents)
                .await
                .map_err(NarError::from)?;
        }
        out.push((ev, contents));
    }
    Ok(out)
}

fn encode_sync(items: &[Item]) -> Vec<u8> {
    let mut w = NarWriter::new(Vec::new());
    for (ev, contents) in items {
        match ev {
            Event::File { executable, .. } => w.file_bytes(*executable, contents).unwrap(),
            Event::Symlink { target } => w.symlink(target).unwrap(),
            Event::Directory => w.directory().unwrap(),
            Event::Entry { name } => w.entry(name).unwrap(),
            Event::EndDirectory => w.end_directory().unwrap(),
        }
    }
    w.finish().unwrap()
}

async fn encode_async(items: &[Item]) -> Vec<u8> {
    let mut w = AsyncNarWriter::new(Vec::new());
    for (ev, contents) in items {
        match ev {
            Event::File { executable, .. } => w
                .file(*executable, contents.len() as u64, &mut contents.as_slice())
                .await
                .unwrap(),
            Event::Symlink { target } => w.symlink(target).await.unwrap(),
            Event::Directory => w.directory().await.unwrap(),
            Event::Entry { name } => w.entry(name).await.unwrap(),
            Event::EndDirectory => w.end_directory().await.unwrap(),
        }
    }
    w.finish().await.unwrap()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
}

#[test]
fn valid_nar_reads_the_same_sync_and_async_and_reencodes_exactly() {
    let nar = nar_corpus::valid();
    let items = read_sync(&nar).unwrap();
    let names: Vec<_> = items
        .iter()
        .filter_map(|(e, _)| match e {
            Event::Entry { name } => Some(String::from_utf8(name.clone()).unwrap()),
            _ => None,
        })
        .collect();
    assert_eq!(names, ["a", "b", "c", "d"]);
    assert!(items.contains(&(
        Event::File {
            executable: true,
            size: 3,
            offset: items
                .iter()
                .find_map(|(e, _)| match e {
                    Event::File {
                        executable: true,
                        offset,
                        ..
                    } => Some(*offset),
                    _ => None,
                })
                .unwrap()
        },
        b"#!x".to_vec()
    )));
    let rt = rt();
    assert_eq!(rt.block_on(read_async(&nar)).unwrap(), items);
    assert_eq!(encode_sync(&items), nar);
    assert_eq!(rt.block_on(encode_async(&items)), nar);
}

#[test]
fn file_offsets_point_at_the_contents() {
    let nar = nar_corpus::valid();
    for (ev, contents) in read_sync(&nar).unwrap() {
        if let Event::File { offset, size, .. } = ev {
            let at = offset as usize;
            assert_eq!(&nar[at..at + size as usize], contents.as_slice());
        }
    }
}

#[test]
fn every_malformed_case_is_refused_with_its_reason() {
    let rt = rt();
    for (name, bytes) in nar_corpus::malformed() {
        let err = read_sync(&bytes).expect_err(name);
        let kind = err
            .malformed()
            .unwrap_or_else(|| panic!("{name}: not a malformation: {err}"))
            .clone();
        let async_err = rt.block_on(read_async(&bytes)).expect_err(name);
        assert_eq!(
            async_err.malformed(),
            Some(&kind),
            "{name}: async reader disagrees"
        );
        let ok = match name {
            "empty input" | "absurd contents length" | "missing close paren" => {
                kind == Malformed::Truncated
            }
            "bad magic" | "absurd magic length" => kind == Malformed::BadMagic,
            "unsorted names" => matches!(kind, Malformed::Unsorted { .. }),
            "duplicate names" | "duplicate names across types" => {
                matches!(kind, Malformed::Duplicate(_))
            }
            "name ."
            | "name .."
            | "name with slash"
            | "path traversal name"
            | "name with NUL"
            | "empty name" => {
                matches!(kind, Malformed::InvalidName { .. })
            }
            "name longer than 255 bytes"
            | "symlink target longer than 4095 bytes"
            | "absurd target length"
            | "absurd name length" => matches!(kind, Malformed::TooLong { .. }),
            "empty symlink target" | "symlink target with NUL" => {
                matches!(kind, Malformed::InvalidTarget { .. })
            }
            "non-zero padding" => kind == Malformed::NonZeroPadding,
            "trailing bytes" | "one trailing byte" => kind == Malformed::TrailingData,
            _ => matches!(kind, Malformed::UnexpectedToken { .. }),
        };
        assert!(ok, "{name}: unexpected reason {kind:?}");
        // The message names the place and the reason on one line.
        let msg = err.to_string();
        assert!(
            msg.starts_with("invalid NAR at byte ") && !msg.contains('\n'),
            "{name}: {msg}"
        );
    }
}

#[test]
fn every_truncation_is_reported_as_truncated() {
    for cut in nar_corpus::truncations(&nar_corpus::valid()) {
        let err = read_sync(&cut).expect_err("truncated NAR accepted");
        assert_eq!(
            err.malformed(),
            Some(&Malformed::Truncated),
            "cut at {}: {err}",
            cut.len()
        );
    }
}

#[test]
fn any_single_bit_flip_is_refused_or_reencodes_exactly() {
    let nar = nar_corpus::valid();
    let mut accepted = 0;
    for i in 0..nar.len() {
        for bit in 0..8 {
            let mut flipped = nar.clone();
            flipped[i] ^= 1 << bit;
            if let Ok(items) = read_sync(&flipped) {
                accepted += 1;
                assert_eq!(
                    encode_sync(&items),
                    flipped,
                    "flip at byte {i} bit {bit} accepted but not reproducible"
                );
            }
        }
    }
    // Flips inside file contents and names stay valid; most others must not.
    assert!(
        accepted > 0 && accepted < nar.len() * 8 / 4,
        "accepted {accepted} flips"
    );
}

#[test]
fn writer_refuses_what_the_reader_would_refuse() {
    let mut w = NarWriter::new(Vec::new());
    w.directory().unwrap();
    w.entry(b"b").unwrap();
    w.file_bytes(false, b"").unwrap();
    assert!(w.entry(b"a").is_err(), "unsorted entry accepted");
    assert!(w.entry(b"b").is_err(), "duplicate entry accepted");
    assert!(w.entry(b"..").is_err(), "'..' accepted");
    assert!(w.entry(b"x/y").is_err(), "'/' accepted");
    w.entry(b"c").unwrap();
    assert!(w.symlink(b"").is_err(), "empty target accepted");
    let mut short: &[u8] = b"abc";
    assert!(matches!(
        w.file(false, 4, &mut short),
        Err(nar::NarWriteError::SizeMismatch {
            expected: 4,
            actual: 3
        })
    ));
}

#[test]
fn failed_restore_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let mut cases = nar_corpus::malformed();
    cases.extend(
        nar_corpus::truncations(&nar_corpus::valid())
            .into_iter()
            .map(|t| ("truncated", t)),
    );
    for (name, bytes) in cases {
        let dest = dir.path().join("out");
        assert!(
            nar::fs::restore_atomically(bytes.as_slice(), &dest).is_err(),
            "{name} restored"
        );
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert!(left.is_empty(), "{name}: left {left:?}");
    }
    let dest = dir.path().join("out");
    nar::fs::restore_atomically(nar_corpus::valid().as_slice(), &dest).unwrap();
    assert_eq!(std::fs::read(dest.join("a")).unwrap(), b"hello");
    // A second restore onto an existing destination is refused untouched.
    let err = nar::fs::restore_atomically(nar_corpus::valid().as_slice(), &dest).unwrap_err();
    assert!(matches!(err, nar::fs::RestoreError::Exists(_)), "{err}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn writer_refuses_to_continue_after_an_error() {
    let mut w = NarWriter::new(Vec::new());
    w.directory().unwrap();
    w.entry(b"a").unwrap();
    let mut short: &[u8] = b"abc";
    assert!(w.file(false, 100_000, &mut short).is_err());
    // Half a file may already be in the output: nothing may follow it.
    assert!(matches!(w.entry(b"b"), Err(nar::NarWriteError::Misuse(_))));
    assert!(matches!(w.finish(), Err(nar::NarWriteError::Misuse(_))));
}

#[test]
fn restore_never_touches_an_existing_destination() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("keep"), b"precious").unwrap();
    let err = nar::fs::restore(&b"not a nar"[..], dir.path()).unwrap_err();
    assert!(matches!(err, nar::fs::RestoreError::Exists(_)), "{err}");
    assert_eq!(std::fs::read(dir.path().join("keep")).unwrap(), b"precious");
}
