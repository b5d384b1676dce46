//! Where gRPC runs: TCP or a Unix socket, on both ends, and the renaming
//! of package names that lets one handler answer `tvix.*` and `snix.*`
//! alike (the payloads are identical, SPEC.md §1).

use std::future::Future;
use std::path::PathBuf;
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use thiserror::Error;
use tonic::transport::{Channel, Endpoint, Server};

use crate::server::Services;
use crate::Dialect;

/// Where a daemon listens or a client connects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// `HOST:PORT`.
    Tcp(String),
    /// A Unix socket's path.
    Unix(PathBuf),
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Tcp(a) => write!(f, "{a}"),
            Location::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// What can go wrong setting up a connection or a listener.
#[derive(Debug, Error)]
pub enum TransportError {
    /// Binding or connecting failed.
    #[error("{location}: {source}")]
    Io {
        /// Where.
        location: String,
        /// Why.
        source: std::io::Error,
    },
    /// tonic refused the endpoint or failed to serve.
    #[error("{location}: {source}")]
    Tonic {
        /// Where.
        location: String,
        /// Why.
        source: tonic::transport::Error,
    },
    /// Reflection could not be set up from the built-in descriptors.
    #[error("gRPC reflection: {0}")]
    Reflection(String),
}

/// Rewrites the package of incoming method paths from `from.` to `to.`
/// (for `castore.v1` and `store.v1` only), so that handlers generated for
/// one package name answer the other.
#[derive(Clone)]
pub struct RenamePackage<S> {
    inner: S,
    from: &'static str,
    to: &'static str,
}

/// The [`tower::Layer`] of [`RenamePackage`].
#[derive(Clone, Copy)]
pub struct RenamePackageLayer {
    from: &'static str,
    to: &'static str,
}

impl RenamePackageLayer {
    /// Serve `snix.*` paths with the `tvix.*` handlers.
    pub fn snix_to_tvix() -> Self {
        RenamePackageLayer {
            from: "snix",
            to: "tvix",
        }
    }
    /// Send `tvix.*` requests as `snix.*`.
    pub fn tvix_to_snix() -> Self {
        RenamePackageLayer {
            from: "tvix",
            to: "snix",
        }
    }
}

impl<S> tower::Layer<S> for RenamePackageLayer {
    type Service = RenamePackage<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RenamePackage {
            inner,
            from: self.from,
            to: self.to,
        }
    }
}

/// The path with its package renamed, if it is one of ours.
fn renamed(path: &str, from: &str, to: &str) -> Option<String> {
    let rest = path.strip_prefix('/')?.strip_prefix(from)?;
    let rest = rest.strip_prefix('.')?;
    (rest.starts_with("castore.v1.") || rest.starts_with("store.v1."))
        .then(|| format!("/{to}.{rest}"))
}

impl<S, B> tower::Service<http::Request<B>> for RenamePackage<S>
where
    S: tower::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        if self.from == self.to {
            return self.inner.call(req);
        }
        if let Some(path) = renamed(req.uri().path(), self.from, self.to) {
            let mut parts = req.uri().clone().into_parts();
            if let Ok(pq) = path.parse() {
                parts.path_and_query = Some(pq);
                if let Ok(uri) = http::Uri::from_parts(parts) {
                    *req.uri_mut() = uri;
                }
            }
        }
        self.inner.call(req)
    }
}

/// Logs every call: method path and how long the handler took to answer
/// (`debug`; streams are timed to their first response, not their end).
#[derive(Clone, Copy)]
pub struct LogCallsLayer;

impl<S> tower::Layer<S> for LogCallsLayer {
    type Service = LogCalls<S>;
    fn layer(&self, inner: S) -> Self::Service {
        LogCalls { inner }
    }
}

/// See [`LogCallsLayer`].
#[derive(Clone)]
pub struct LogCalls<S> {
    inner: S,
}

impl<S, B> tower::Service<http::Request<B>> for LogCalls<S>
where
    S: tower::Service<http::Request<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = std::pin::Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let method = req.uri().path().to_owned();
        let started = std::time::Instant::now();
        let answer = self.inner.call(req);
        Box::pin(async move {
            let out = answer.await;
            tracing::debug!(%method, elapsed_ms = started.elapsed().as_secs_f64() * 1e3, "call");
            out
        })
    }
}

/// Makes a client's reset of a request stream an error for the handler.
///
/// tonic hands a handler the end of a request stream, not an error, when
/// the client resets it with `CANCEL` (hyperium/tonic#848). A client that
/// drops an unfinished upload does exactly that, and the protocol's only
/// "done" signal is the end of the stream: `BlobService/Put` would store
/// the part that had arrived as if it were the whole blob. With this layer
/// such a stream ends in `ABORTED`, and the handler stores nothing of it.
#[derive(Clone, Copy)]
pub struct ResetIsNotEndLayer;

impl<S> tower::Layer<S> for ResetIsNotEndLayer {
    type Service = ResetIsNotEnd<S>;
    fn layer(&self, inner: S) -> Self::Service {
        ResetIsNotEnd { inner }
    }
}

/// See [`ResetIsNotEndLayer`].
#[derive(Clone)]
pub struct ResetIsNotEnd<S> {
    inner: S,
}

/// The status a reset request stream reads as.
fn reset_is_not_end(status: tonic::Status) -> tonic::Status {
    if status.code() == tonic::Code::Cancelled {
        tonic::Status::aborted("the client reset the request stream before ending it")
    } else {
        status
    }
}

impl<S> tower::Service<http::Request<tonic::body::Body>> for ResetIsNotEnd<S>
where
    S: tower::Service<http::Request<tonic::body::Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        use http_body_util::BodyExt;
        self.inner
            .call(req.map(|body| tonic::body::Body::new(body.map_err(reset_is_not_end))))
    }
}

/// HTTP/2 flow-control windows. The default 64 KiB lets a blob move one
/// window per round trip: 40 MB/s over loopback on a 540 MB tree, against
/// gigabytes per second for the same bytes on disk.
const STREAM_WINDOW: u32 = 8 * 1024 * 1024;
const CONNECTION_WINDOW: u32 = 32 * 1024 * 1024;
/// The largest HTTP/2 frame either end accepts. At the protocol's default
/// of 16 KiB, every 1 MiB piece of a blob crosses as 64 DATA frames, each
/// handled on its own by both ends; one frame per piece saves that work.
const MAX_FRAME: u32 = 1024 * 1024 + 64;

/// Serves `services` (plus health and reflection) at `location` until
/// `shutdown` completes; then stops accepting, lets requests in flight
/// finish, and returns. `ready` is told where it listens once it does (the
/// port chosen for `HOST:0`). A Unix socket left by an earlier run is
/// replaced.
pub async fn serve(
    services: Services,
    location: &Location,
    ready: impl FnOnce(&Location),
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), TransportError> {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_serving::<crate::generated::castore::blob_service_server::BlobServiceServer<
            crate::server::BlobHandler,
        >>()
        .await;
    reporter
        .set_serving::<crate::generated::castore::directory_service_server::DirectoryServiceServer<
            crate::server::DirectoryHandler,
        >>()
        .await;
    reporter
        .set_serving::<crate::generated::store::path_info_service_server::PathInfoServiceServer<
            crate::server::PathInfoHandler,
        >>()
        .await;
    // Both reflection versions: clients in the wild still ask v1alpha.
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| TransportError::Reflection(e.to_string()))?;
    let reflection_alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|e| TransportError::Reflection(e.to_string()))?;
    let router = Server::builder()
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME)
        .layer(LogCallsLayer)
        .layer(RenamePackageLayer::snix_to_tvix())
        .layer(ResetIsNotEndLayer)
        .add_service(health)
        .add_service(reflection)
        .add_service(reflection_alpha)
        .add_service(services.blobs)
        .add_service(services.directories)
        .add_service(services.path_infos)
        .add_service(services.batch);
    let failed = |source| TransportError::Tonic {
        location: location.to_string(),
        source,
    };
    match location {
        Location::Tcp(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| TransportError::Io {
                    location: location.to_string(),
                    source,
                })?;
            let bound = listener
                .local_addr()
                .map_or_else(|_| addr.clone(), |a| a.to_string());
            ready(&Location::Tcp(bound));
            // Small responses must not wait for Nagle's algorithm and the
            // peer's delayed ACK (40 ms stalls, several per import).
            let incoming = tokio_stream::StreamExt::map(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                |conn| {
                    conn.inspect(|c| {
                        if let Err(e) = c.set_nodelay(true) {
                            tracing::debug!("TCP_NODELAY: {e}");
                        }
                    })
                },
            );
            router
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await
                .map_err(failed)
        }
        Location::Unix(path) => {
            remove_stale_socket(path).map_err(|source| TransportError::Io {
                location: location.to_string(),
                source,
            })?;
            let listener =
                tokio::net::UnixListener::bind(path).map_err(|source| TransportError::Io {
                    location: location.to_string(),
                    source,
                })?;
            ready(location);
            let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
            let result = router
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await
                .map_err(failed);
            let _ = std::fs::remove_file(path);
            result
        }
    }
}

fn tune(e: Endpoint) -> Endpoint {
    e.initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME)
        .tcp_nodelay(true)
}

/// Removes a socket file left by a daemon that is gone. Anything else at
/// `path` (a live daemon's socket, a file that is not a socket) is an
/// error, not something to delete.
fn remove_stale_socket(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !meta.file_type().is_socket() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            "exists and is not a socket; not replacing it",
        ));
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            "another daemon is listening on this socket",
        ));
    }
    tracing::info!("replacing stale socket {}", path.display());
    std::fs::remove_file(path)
}

/// A server running in this process (see [`spawn`]).
pub struct Running {
    /// Where it listens (the port chosen, for `HOST:0`).
    pub location: Location,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), TransportError>>,
}

impl Running {
    /// The address clients use: `grpc+http://…` or `grpc+unix://…`.
    pub fn addr(&self) -> String {
        match &self.location {
            Location::Tcp(a) => format!("grpc+http://{a}"),
            Location::Unix(p) => format!("grpc+unix://{}", p.display()),
        }
    }

    /// Stops accepting, lets requests in flight finish, and waits.
    pub async fn stop(mut self) -> Result<(), TransportError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task).await.map_err(|e| TransportError::Io {
            location: self.location.to_string(),
            source: std::io::Error::other(e),
        })?
    }
}

/// Serves `services` at `location` on a task of the current runtime, and
/// returns once it listens: for embedding a daemon in a process, and for
/// tests. Dropping the handle leaves it running until the runtime ends.
pub async fn spawn(services: Services, location: Location) -> Result<Running, TransportError> {
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let at = location.clone();
    let task = tokio::spawn(async move {
        serve(
            services,
            &at,
            |bound| {
                let _ = ready_tx.send(bound.clone());
            },
            async {
                let _ = stop_rx.await;
            },
        )
        .await
    });
    match ready_rx.await {
        Ok(bound) => Ok(Running {
            location: bound,
            stop: Some(stop_tx),
            task,
        }),
        // It stopped before listening: its error says why.
        Err(_) => match task.await {
            Ok(Err(e)) => Err(e),
            _ => Err(TransportError::Io {
                location: location.to_string(),
                source: std::io::Error::other("the server stopped before listening"),
            }),
        },
    }
}

/// A client channel: requests renamed to the dialect's package on the way.
pub type ClientChannel = RenamePackage<Channel>;

/// A connection made on first use, so that clients can be built before
/// an async runtime runs (tonic's channel needs one to start).
pub struct Connection {
    location: Location,
    dialect: Dialect,
    channel: std::sync::OnceLock<ClientChannel>,
}

impl Connection {
    /// A connection to `location`, speaking `dialect`, not yet made.
    pub fn new(location: Location, dialect: Dialect) -> Self {
        Connection {
            location,
            dialect,
            channel: std::sync::OnceLock::new(),
        }
    }

    /// Where it goes.
    pub fn location(&self) -> &Location {
        &self.location
    }

    /// The channel, made now if it was not yet. Must be called within a
    /// tokio runtime.
    pub fn channel(&self) -> Result<ClientChannel, TransportError> {
        if let Some(c) = self.channel.get() {
            return Ok(c.clone());
        }
        let made = connect(&self.location, self.dialect)?;
        Ok(self.channel.get_or_init(|| made).clone())
    }
}

/// Connects lazily (on first request) to `location`.
pub fn connect(location: &Location, dialect: Dialect) -> Result<ClientChannel, TransportError> {
    let failed = |source| TransportError::Tonic {
        location: location.to_string(),
        source,
    };
    let channel = match location {
        Location::Tcp(addr) => {
            tune(Endpoint::from_shared(format!("http://{addr}")).map_err(failed)?).connect_lazy()
        }
        Location::Unix(path) => {
            let path = path.clone();
            // The URI is required by the API and unused: the connector
            // below decides where bytes go.
            tune(Endpoint::from_static("http://localhost")).connect_with_connector_lazy(
                tower::service_fn(move |_: http::Uri| {
                    let path = path.clone();
                    async move {
                        let stream = tokio::net::UnixStream::connect(path).await?;
                        Ok::<_, std::io::Error>(TokioIo::new(stream))
                    }
                }),
            )
        }
    };
    let layer = match dialect {
        // The generated clients speak tvix.*: nothing to rename.
        Dialect::Tvix => RenamePackageLayer {
            from: "tvix",
            to: "tvix",
        },
        Dialect::Snix => RenamePackageLayer::tvix_to_snix(),
    };
    Ok(tower::Layer::layer(&layer, channel))
}

#[cfg(test)]
mod tests {
    use super::renamed;

    #[test]
    fn only_our_packages_are_renamed() {
        assert_eq!(
            renamed("/snix.castore.v1.BlobService/Read", "snix", "tvix").as_deref(),
            Some("/tvix.castore.v1.BlobService/Read")
        );
        assert_eq!(
            renamed("/tvix.store.v1.PathInfoService/Get", "tvix", "snix").as_deref(),
            Some("/snix.store.v1.PathInfoService/Get")
        );
        assert_eq!(
            renamed("/grpc.health.v1.Health/Check", "snix", "tvix"),
            None
        );
        assert_eq!(renamed("/snixy.castore.v1.X/Y", "snix", "tvix"), None);
        assert_eq!(
            renamed("/cairn.v1.BatchService/MissingBlobs", "tvix", "snix"),
            None
        );
    }
}
