//! The properties the fuzz targets check, shared with the regression test
//! `crates/nix/tests/fuzz_regressions.rs` so that a saved input is checked
//! exactly as the fuzzer checked it. Every function panics on a violation
//! and returns whether the input was accepted (`false`: merely rejected).

// Each fuzz target uses one of the functions.
#![allow(dead_code)]

use std::io::Read;

use cairn_nix::nar::{Event, Malformed, NarError, NarReader, NarWriter};
use cairn_nix::NarInfo;

/// Reads `data` as a NAR, pulling every event and every file's contents.
///
/// Must never panic. Along the way: each file's contents are the input
/// bytes at the offset its event names; the reader's errors are sticky and
/// point inside the input; a truncated file surfaces as
/// [`Malformed::Truncated`]. Every event the reader emits must be accepted
/// by [`NarWriter`], and when the whole input is accepted the writer's
/// output must equal it byte for byte: the reader is strict precisely so
/// that accepted NARs have exactly one encoding.
pub fn nar_reader(data: &[u8]) -> bool {
    let mut reader = NarReader::new(data);
    let mut writer = NarWriter::new(Vec::with_capacity(data.len()));
    loop {
        let event = match reader.next() {
            Ok(Some(event)) => event,
            Ok(None) => break,
            Err(err) => {
                check_error(&err, data);
                let again = reader.next();
                assert!(
                    again.is_err(),
                    "reader yielded {again:?} after failing with {err}"
                );
                return false;
            }
        };
        let written = match &event {
            Event::File {
                executable,
                size,
                offset,
            } => {
                assert_eq!(
                    *offset,
                    reader.offset(),
                    "File offset is not where contents start"
                );
                let mut contents = Vec::new();
                if let Err(e) = reader.contents().read_to_end(&mut contents) {
                    let err = NarError::from(e);
                    assert_eq!(
                        err.malformed(),
                        Some(&Malformed::Truncated),
                        "file contents failed with {err}"
                    );
                    check_error(&err, data);
                    assert!(
                        reader.next().is_err(),
                        "reader went on after truncated contents"
                    );
                    return false;
                }
                assert_eq!(contents.len() as u64, *size, "contents length");
                let start = usize::try_from(*offset).unwrap_or(usize::MAX);
                let end = start.saturating_add(contents.len());
                assert_eq!(
                    data.get(start..end),
                    Some(&contents[..]),
                    "contents are not the input bytes at the File event's offset"
                );
                writer.file_bytes(*executable, &contents)
            }
            Event::Symlink { target } => writer.symlink(target),
            Event::Directory => writer.directory(),
            Event::Entry { name } => writer.entry(name),
            Event::EndDirectory => writer.end_directory(),
        };
        if let Err(e) = written {
            panic!("NarWriter refused {event:?}, which the reader accepted: {e}");
        }
    }
    assert_eq!(
        reader.offset(),
        data.len() as u64,
        "accepted NAR not consumed whole"
    );
    let out = match writer.finish() {
        Ok(out) => out,
        Err(e) => panic!("NarWriter refused to finish an accepted NAR: {e}"),
    };
    assert!(
        out == data,
        "re-encoded NAR differs from the accepted input:\n input: {:?}\noutput: {:?}",
        data.escape_ascii().to_string(),
        out.escape_ascii().to_string()
    );
    true
}

fn check_error(err: &NarError, data: &[u8]) {
    match err {
        NarError::Invalid { offset, .. } => assert!(
            *offset <= data.len() as u64,
            "error offset {offset} is past the end of a {}-byte input: {err}",
            data.len()
        ),
        NarError::Io(e) => panic!("in-memory input produced an I/O error: {e}"),
    }
    // Rendering the message must not panic either (it escapes input bytes).
    let _ = err.to_string();
}

/// Parses `data` as narinfo text (non-UTF-8 input is skipped).
///
/// Must never panic. When it parses, its rendering must parse again and
/// render identically (rendering is a fixed point), and the fingerprint,
/// which is what signatures cover, must survive the round trip.
pub fn narinfo_parse(data: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(data) else {
        return false;
    };
    let info = match NarInfo::parse(text) {
        Ok(info) => info,
        Err(err) => {
            let _ = err.to_string();
            return false;
        }
    };
    let fingerprint = info.fingerprint();
    let rendered = info.to_string();
    let again = match NarInfo::parse(&rendered) {
        Ok(again) => again,
        Err(e) => panic!("rendered narinfo does not parse: {e}\n{rendered}"),
    };
    assert_eq!(
        again.to_string(),
        rendered,
        "rendering is not a fixed point"
    );
    assert_eq!(
        again.fingerprint(),
        fingerprint,
        "fingerprint changed through render + parse"
    );
    true
}
