//! Content-defined chunking (FastCDC 2020).
//!
//! The sizes are part of a backend's dedup behaviour, not of any digest:
//! changing them changes only how future blobs are split, and every
//! reader follows the chunk lists as stored. Each backend picks the sizes
//! that suit what one chunk costs it ([`ChunkSizes::FILES`] for chunks
//! kept as local files, [`ChunkSizes::OBJECTS`] for chunks kept as
//! objects in a bucket).

use fastcdc::v2020::FastCDC;

/// The bounds and the target of a chunker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkSizes {
    /// No chunk is smaller, except a blob's last.
    pub min: usize,
    /// The size chunks tend towards.
    pub avg: usize,
    /// No chunk is larger.
    pub max: usize,
}

impl ChunkSizes {
    /// 256 KiB on average, for chunks that are local files: below that the
    /// cost of a file per chunk (creating it on import, opening it on
    /// every read) costs more than the finer dedup saves on Nix store
    /// contents.
    pub const FILES: ChunkSizes = ChunkSizes {
        min: MIN_CHUNK,
        avg: AVG_CHUNK,
        max: MAX_CHUNK,
    };
    /// 2 MiB on average, for chunks that are objects in a bucket: each
    /// object costs a request and the store's own per-object metadata (on
    /// every replica), which dominate below a few megabytes (measured on
    /// Garage: 2 MiB chunks import a tree of large files about 15% faster
    /// than 1 MiB ones). The maximum is twice that, not more, because a
    /// writer holds `max` bytes before it can cut, and an import keeps
    /// several writers open.
    pub const OBJECTS: ChunkSizes = ChunkSizes {
        min: 512 * 1024,
        avg: 2 * 1024 * 1024,
        max: 4 * 1024 * 1024,
    };

    /// Lengths of the chunks at the start of `buf` that are final.
    ///
    /// Unless `eof`, a cut is only made where at least `max` bytes are
    /// available, so the boundaries do not depend on how the data was
    /// split into writes: the same bytes always give the same chunks.
    pub fn cut(&self, buf: &[u8], eof: bool) -> Vec<usize> {
        let mut lengths = Vec::new();
        let cdc = FastCDC::new(buf, self.min, self.avg, self.max);
        let mut start = 0;
        while start < buf.len() {
            let remaining = buf.len() - start;
            if !eof && remaining < self.max {
                break;
            }
            let (_, end) = cdc.cut(start, remaining);
            lengths.push(end - start);
            start = end;
        }
        lengths
    }
}

/// No chunk of [`ChunkSizes::FILES`] is smaller, except a blob's last.
pub const MIN_CHUNK: usize = 64 * 1024;
/// The size chunks of [`ChunkSizes::FILES`] tend towards.
pub const AVG_CHUNK: usize = 256 * 1024;
/// No chunk of [`ChunkSizes::FILES`] is larger.
pub const MAX_CHUNK: usize = 1024 * 1024;

/// [`ChunkSizes::cut`] with [`ChunkSizes::FILES`].
pub fn cut(buf: &[u8], eof: bool) -> Vec<usize> {
    ChunkSizes::FILES.cut(buf, eof)
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

    #[test]
    fn object_sizes_cut_within_their_bounds() {
        let sizes = ChunkSizes::OBJECTS;
        let data = cairn_testkit::pseudo_random_bytes(9, 48 * 1024 * 1024 + 5);
        let lens = sizes.cut(&data, true);
        assert_eq!(lens.iter().sum::<usize>(), data.len());
        assert!(lens.len() > 8, "{} chunks", lens.len());
        assert!(lens[..lens.len() - 1]
            .iter()
            .all(|&l| (sizes.min..=sizes.max).contains(&l)));
        // Nothing final before `max` bytes are there.
        assert!(sizes.cut(&data[..sizes.max - 1], false).is_empty());
    }
}
