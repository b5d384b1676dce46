//! The compressions binary caches use for NARs (the narinfo
//! `Compression:` field), decoded while streaming, and recognised by their
//! magic bytes when nothing says which one a file uses.

use std::fmt;
use std::str::FromStr;

use async_compression::tokio::bufread::{
    BrotliDecoder, BzDecoder, GzipDecoder, XzDecoder, ZstdDecoder,
};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead};

/// A NAR compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// `none`: a plain NAR.
    None,
    /// `xz`, Nix's default for binary caches.
    Xz,
    /// `zstd`.
    Zstd,
    /// `bzip2`.
    Bzip2,
    /// `gzip`.
    Gzip,
    /// `br` (brotli).
    Brotli,
}

impl Compression {
    /// The name a narinfo uses.
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Xz => "xz",
            Compression::Zstd => "zstd",
            Compression::Bzip2 => "bzip2",
            Compression::Gzip => "gzip",
            Compression::Brotli => "br",
        }
    }

    /// Recognises a compressed stream (or a plain NAR) by its first
    /// bytes; `None` when they match nothing known. Brotli has no magic.
    pub fn sniff(head: &[u8]) -> Option<Compression> {
        const NAR: &[u8] = b"\x0d\0\0\0\0\0\0\0nix-archive-1";
        let starts = |magic: &[u8]| head.len() >= magic.len() && head.starts_with(magic);
        if starts(NAR) {
            Some(Compression::None)
        } else if starts(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
            Some(Compression::Xz)
        } else if starts(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Some(Compression::Zstd)
        } else if starts(b"BZh") {
            Some(Compression::Bzip2)
        } else if starts(&[0x1f, 0x8b]) {
            Some(Compression::Gzip)
        } else {
            None
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A compression name no decoder exists for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown NAR compression {0:?} (known: none, xz, zstd, bzip2, gzip, br)")]
pub struct UnknownCompression(pub String);

impl FromStr for Compression {
    type Err = UnknownCompression;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "" | "none" => Compression::None,
            "xz" => Compression::Xz,
            "zstd" => Compression::Zstd,
            "bzip2" => Compression::Bzip2,
            "gzip" => Compression::Gzip,
            "br" => Compression::Brotli,
            other => return Err(UnknownCompression(other.to_owned())),
        })
    }
}

/// Decodes `input` compressed with `compression`.
pub fn decoder<R: AsyncBufRead + Unpin + Send + 'static>(
    input: R,
    compression: Compression,
) -> Box<dyn AsyncRead + Unpin + Send> {
    match compression {
        Compression::None => Box::new(input),
        Compression::Xz => Box::new(multi(XzDecoder::new(input))),
        Compression::Zstd => Box::new(multi(ZstdDecoder::new(input))),
        Compression::Bzip2 => Box::new(multi(BzDecoder::new(input))),
        Compression::Gzip => Box::new(multi(GzipDecoder::new(input))),
        Compression::Brotli => Box::new(BrotliDecoder::new(input)),
    }
}

/// Concatenated streams (as parallel compressors write) decode whole.
fn multi<D: MultiMember>(mut d: D) -> D {
    d.multiple_members(true);
    d
}

trait MultiMember {
    fn multiple_members(&mut self, yes: bool);
}

macro_rules! multi_member {
    ($($t:ident),*) => {$(
        impl<R: AsyncBufRead> MultiMember for $t<R> {
            fn multiple_members(&mut self, yes: bool) {
                $t::multiple_members(self, yes)
            }
        }
    )*};
}
multi_member!(XzDecoder, ZstdDecoder, BzDecoder, GzipDecoder);

/// Decodes `input` after recognising its compression from its first bytes
/// (a plain NAR passes through).
pub async fn sniffing_decoder<R: AsyncBufRead + Unpin + Send + 'static>(
    mut input: R,
) -> std::io::Result<Box<dyn AsyncRead + Unpin + Send>> {
    let head = input.fill_buf().await?;
    let found = Compression::sniff(head).unwrap_or(Compression::None);
    Ok(decoder(input, found))
}
