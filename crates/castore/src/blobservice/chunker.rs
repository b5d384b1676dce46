//! Content-defined chunking (FastCDC 2020) with fixed parameters.
//!
//! The parameters are part of the on-disk format's dedup behaviour, not of
//! any digest: changing them changes only how future blobs are split.
//! 256 KiB on average: each chunk is a file, and below that the cost of a
//! file per chunk (creating it on import, opening it on every read) costs
//! more than the finer dedup saves on Nix store contents.

use fastcdc::v2020::FastCDC;

/// No chunk is smaller, except a blob's last.
pub const MIN_CHUNK: usize = 64 * 1024;
/// The size chunks tend towards.
pub const AVG_CHUNK: usize = 256 * 1024;
/// No chunk is larger.
pub const MAX_CHUNK: usize = 1024 * 1024;

/// Lengths of the chunks at the start of `buf` that are final.
///
/// Unless `eof`, a cut is only made where at least `MAX_CHUNK` bytes are
/// available, so the boundaries do not depend on how the data was split
/// into writes: the same bytes always give the same chunks.
pub fn cut(buf: &[u8], eof: bool) -> Vec<usize> {
    let mut lengths = Vec::new();
    let cdc = FastCDC::new(buf, MIN_CHUNK, AVG_CHUNK, MAX_CHUNK);
    let mut start = 0;
    while start < buf.len() {
        let remaining = buf.len() - start;
        if !eof && remaining < MAX_CHUNK {
            break;
        }
        let (_, end) = cdc.cut(start, remaining);
        lengths.push(end - start);
        start = end;
    }
    lengths
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boundaries_do_not_depend_on_write_sizes() {
        let data = cairn_testkit::pseudo_random_bytes(7, 12 * 1024 * 1024 + 17);
        let whole = cut(&data, true);
        assert!(whole.len() > 10);
        assert_eq!(whole.iter().sum::<usize>(), data.len());
        assert!(whole[..whole.len() - 1]
            .iter()
            .all(|&l| (MIN_CHUNK..=MAX_CHUNK).contains(&l)));

        // Feed in odd-sized pieces, cutting as a writer would.
        let mut buf = Vec::new();
        let mut got = Vec::new();
        for piece in data.chunks(100_003) {
            buf.extend_from_slice(piece);
            let lens = cut(&buf, false);
            let consumed: usize = lens.iter().sum();
            got.extend(lens);
            buf.drain(..consumed);
        }
        got.extend(cut(&buf, true));
        assert_eq!(got, whole);
    }
}
