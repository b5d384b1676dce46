//! Where each kind of object lives in the bucket. Keys are sharded by the
//! first two hex digits of the digest so that a listing of one kind, or
//! of one shard, stays small.
//!
//! | key | holds |
//! | --- | --- |
//! | `PREFIX/chunks/ab/abcd…` | one chunk: a format byte (0 raw, 1 zstd), then its bytes |
//! | `PREFIX/blobs/ab/abcd…` | a blob of more than one chunk: its chunk list (per chunk 32 digest bytes and 8 size bytes, little-endian) |
//! | `PREFIX/directories/ab/abcd…` | a directory's canonical encoding |
//! | `PREFIX/directories/size-rule` | the size rule the bucket's directories use (`documented` or `tvix-compat`) |
//! | `PREFIX/pathinfo/HASH` | a store path's PathInfo message, by the path's hash part |
//!
//! A blob of one chunk is just that chunk: the chunk's digest is the
//! blob's.

use cairn_castore::B3Digest;
use object_store::path::Path;

/// The key layout under one prefix.
#[derive(Clone, Debug)]
pub struct Layout {
    prefix: Path,
}

impl Layout {
    /// The layout below `prefix` (empty: the bucket's root).
    pub fn new(prefix: &str) -> Layout {
        Layout {
            prefix: Path::from(prefix.trim_matches('/')),
        }
    }

    fn keyed(&self, kind: &str, digest: &B3Digest) -> Path {
        let hex = digest.to_hex();
        self.kind(kind).join(&hex[..2]).join(hex.as_str())
    }

    /// Where all objects of `kind` are.
    pub(crate) fn kind(&self, kind: &str) -> Path {
        self.prefix.clone().join(kind)
    }

    /// A chunk's key.
    pub(crate) fn chunk(&self, digest: &B3Digest) -> Path {
        self.keyed(CHUNKS, digest)
    }

    /// A chunked blob's list.
    pub(crate) fn list(&self, digest: &B3Digest) -> Path {
        self.keyed(LISTS, digest)
    }

    /// A directory's key.
    pub(crate) fn directory(&self, digest: &B3Digest) -> Path {
        self.keyed(DIRECTORIES, digest)
    }

    /// The digest a key of this layout names, if it is one.
    pub(crate) fn digest_of(key: &Path) -> Option<B3Digest> {
        let name = key.filename()?;
        if name.len() != 64 {
            return None;
        }
        let mut bytes = [0u8; 32];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = u8::from_str_radix(name.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(B3Digest::from(bytes))
    }
}

/// Kinds of object, each a top-level folder under the prefix.
pub(crate) const CHUNKS: &str = "chunks";
pub(crate) const LISTS: &str = "blobs";
pub(crate) const DIRECTORIES: &str = "directories";
pub(crate) const PATHINFOS: &str = "pathinfo";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_sharded_and_parse_back() {
        let d = B3Digest::of(b"x");
        let key = Layout::new("/team/cache/").chunk(&d);
        let hex = d.to_hex();
        assert_eq!(
            key.as_ref(),
            format!("team/cache/chunks/{}/{hex}", &hex[..2])
        );
        assert_eq!(Layout::digest_of(&key), Some(d));
        assert_eq!(Layout::digest_of(&Path::from("chunks/ab/zz")), None);
        assert_eq!(
            Layout::new("").directory(&d).as_ref(),
            format!("directories/{}/{hex}", &hex[..2])
        );
    }
}
