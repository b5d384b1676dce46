//! A rendered NAR as a response body: pieces go from the renderer, on a
//! task of its own, through a short channel to the connection, compressed
//! on the way when asked.
//!
//! A read that fails midway ends the body with an error, which makes the
//! server drop the connection instead of ending the response cleanly: a
//! client (Nix) sees a broken transfer and retries, and never stores a
//! truncated NAR as if it were whole.

use std::io;
use std::ops::Range;
use std::sync::Arc;

use async_compression::tokio::bufread::{
    BrotliEncoder, BzEncoder, GzipEncoder, XzEncoder, ZstdEncoder,
};
use async_compression::Level;
use axum::body::Body;
use bytes::Bytes;
use cairn_castore::BlobService;
use cairn_store::render::{NarLayout, NarSink, RenderError};
use futures::stream::BoxStream;
use std::panic::AssertUnwindSafe;

use futures::{FutureExt, Stream, StreamExt};
use tokio::io::AsyncRead;
use tokio::sync::mpsc;
use tokio_util::io::{ReaderStream, StreamReader};

use crate::metrics::Metrics;
use crate::server::{Inner, ServedCompression};

/// Pieces in flight between the renderer and the connection.
const CHANNEL_PIECES: usize = 16;
/// Compressed output is handed on in pieces of this size.
const COMPRESSED_PIECE: usize = 256 * 1024;

struct ChannelSink(mpsc::Sender<io::Result<Bytes>>);

#[async_trait::async_trait]
impl NarSink for ChannelSink {
    async fn piece(&mut self, piece: Bytes) -> Result<(), RenderError> {
        self.0
            .send(Ok(piece))
            .await
            .map_err(|_| RenderError::Output(io::Error::other("client went away")))
    }
}

/// Renders `range` of `layout`'s NAR on a task of its own; the stream
/// ends with an error if rendering fails, or if the task panics.
fn rendered(
    blobs: Arc<dyn BlobService>,
    layout: Arc<NarLayout>,
    range: Range<u64>,
    what: String,
) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
    let (tx, mut rx) = mpsc::channel(CHANNEL_PIECES);
    tokio::spawn(async move {
        let mut sink = ChannelSink(tx.clone());
        let rendering = layout.render_range(blobs.as_ref(), range, &mut sink);
        let failure = match AssertUnwindSafe(rendering).catch_unwind().await {
            Ok(Ok(())) => return,
            Ok(Err(RenderError::Output(_))) => None, // the client went away
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some("the renderer panicked".to_owned()),
        };
        if let Some(reason) = failure {
            tracing::error!(nar = %what, error = %reason, "NAR failed midway; dropping the connection");
            let _ = tx.send(Err(io::Error::other(reason))).await;
        }
    });
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// `plain` compressed on a blocking thread (xz runs at a few MB/s per
/// core: on the async workers it would stall every other request).
fn compressed(
    plain: impl Stream<Item = io::Result<Bytes>> + Send + Unpin + 'static,
    compression: ServedCompression,
) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
    let (tx, mut rx) = mpsc::channel(CHANNEL_PIECES);
    tokio::task::spawn_blocking(move || {
        let input = StreamReader::new(plain);
        let mut out: BoxStream<'static, io::Result<Bytes>> = match compression {
            ServedCompression::None => input.into_inner().boxed(),
            ServedCompression::Zstd => encoded(ZstdEncoder::with_quality(input, Level::Default)),
            // Nix's own default for xz.
            ServedCompression::Xz => encoded(XzEncoder::with_quality(input, Level::Precise(6))),
            ServedCompression::Bzip2 => encoded(BzEncoder::with_quality(input, Level::Default)),
            // Brotli's default (11) is far too slow to stream.
            ServedCompression::Brotli => {
                encoded(BrotliEncoder::with_quality(input, Level::Precise(5)))
            }
            ServedCompression::Gzip => encoded(GzipEncoder::with_quality(input, Level::Default)),
        };
        futures::executor::block_on(async move {
            while let Some(piece) = out.next().await {
                let failed = piece.is_err();
                if tx.send(piece).await.is_err() || failed {
                    break;
                }
            }
        });
    });
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

fn encoded(enc: impl AsyncRead + Send + 'static) -> BoxStream<'static, io::Result<Bytes>> {
    ReaderStream::with_capacity(enc, COMPRESSED_PIECE).boxed()
}

/// The body of a NAR response, counting what is sent.
pub(crate) fn nar_body(
    inner: &Arc<Inner>,
    layout: Arc<NarLayout>,
    range: Range<u64>,
    compression: ServedCompression,
    what: String,
) -> Body {
    let plain = Box::pin(rendered(inner.store.blobs.clone(), layout, range, what));
    let stream: BoxStream<'static, io::Result<Bytes>> = match compression {
        ServedCompression::None => plain,
        other => compressed(plain, other).boxed(),
    };
    let counting = inner.clone();
    Body::from_stream(stream.inspect(move |piece| {
        if let Ok(p) = piece {
            Metrics::add(&counting.metrics.nar_bytes, p.len() as u64);
        }
    }))
}

/// What a `Range` header asks of a body of `size` bytes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum RangeRequest {
    /// No range (or one this server does not serve: several ranges):
    /// the whole body.
    Whole,
    /// One satisfiable range.
    Part(Range<u64>),
    /// A range outside the body (416).
    Unsatisfiable,
}

/// Parses `bytes=A-B`, `bytes=A-` and `bytes=-N` (RFC 9110 §14.1.2).
pub(crate) fn parse_range(header: Option<&str>, size: u64) -> RangeRequest {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return RangeRequest::Whole;
    };
    if spec.contains(',') {
        return RangeRequest::Whole;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeRequest::Whole;
    };
    let number = |s: &str| s.trim().parse::<u64>().ok();
    let range = match (first.trim().is_empty(), last.trim().is_empty()) {
        (true, false) => match number(last) {
            Some(0) => return RangeRequest::Unsatisfiable,
            Some(n) => size.saturating_sub(n)..size,
            None => return RangeRequest::Whole,
        },
        (false, true) => match number(first) {
            Some(a) => a..size,
            None => return RangeRequest::Whole,
        },
        (false, false) => match (number(first), number(last)) {
            (Some(a), Some(b)) if a <= b => a..(b.saturating_add(1)).min(size),
            _ => return RangeRequest::Whole,
        },
        (true, true) => return RangeRequest::Whole,
    };
    if range.start >= size {
        RangeRequest::Unsatisfiable
    } else {
        RangeRequest::Part(range)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        use RangeRequest::*;
        assert_eq!(parse_range(None, 10), Whole);
        assert_eq!(parse_range(Some("bytes=0-0"), 10), Part(0..1));
        assert_eq!(parse_range(Some("bytes=2-"), 10), Part(2..10));
        assert_eq!(parse_range(Some("bytes=-3"), 10), Part(7..10));
        assert_eq!(parse_range(Some("bytes=-30"), 10), Part(0..10));
        assert_eq!(parse_range(Some("bytes=5-100"), 10), Part(5..10));
        assert_eq!(parse_range(Some("bytes=10-"), 10), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=-0"), 10), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=0-1,4-5"), 10), Whole);
        assert_eq!(parse_range(Some("bytes=5-2"), 10), Whole);
        assert_eq!(parse_range(Some("items=0-1"), 10), Whole);
    }
}
