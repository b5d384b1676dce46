//! Peers that lie, over a real socket: each lie is refused by the client
//! with an error that names the peer, and nothing false is returned.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::pin::Pin;

use bytes::Bytes;
use cairn_castore::blobservice::read_to_vec;
use cairn_castore::{proto as cproto, B3Digest, Directory, Node, PathComponent};
use cairn_grpc::generated::castore::blob_service_server::{self, BlobServiceServer};
use cairn_grpc::generated::castore::directory_service_server::{self, DirectoryServiceServer};
use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

type Streamed<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Serves one fake on 127.0.0.1 and returns its `HOST:PORT`.
async fn spawn(router: tonic::transport::server::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        router
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
            .unwrap();
    });
    addr
}

/// Answers every blob question with bytes of its choosing.
struct LyingBlobs {
    /// The chunks `Stat` lists (empty: none).
    chunks: Vec<(B3Digest, u64)>,
    /// What `Read` sends for any digest.
    data: Bytes,
}

#[tonic::async_trait]
impl blob_service_server::BlobService for LyingBlobs {
    async fn stat(
        &self,
        _: Request<cproto::StatBlobRequest>,
    ) -> Result<Response<cproto::StatBlobResponse>, Status> {
        Ok(Response::new(cproto::StatBlobResponse {
            chunks: self
                .chunks
                .iter()
                .map(|(d, size)| cproto::stat_blob_response::ChunkMeta {
                    digest: (*d).into(),
                    size: *size,
                })
                .collect(),
            bao: Bytes::new(),
        }))
    }
    type ReadStream = Streamed<cproto::BlobChunk>;
    async fn read(
        &self,
        _: Request<cproto::ReadBlobRequest>,
    ) -> Result<Response<Self::ReadStream>, Status> {
        let one = cproto::BlobChunk {
            data: self.data.clone(),
        };
        Ok(Response::new(futures::stream::iter([Ok(one)]).boxed()))
    }
    async fn put(
        &self,
        _: Request<Streaming<cproto::BlobChunk>>,
    ) -> Result<Response<cproto::PutBlobResponse>, Status> {
        // Claims to have stored anything as the empty blob.
        Ok(Response::new(cproto::PutBlobResponse {
            digest: B3Digest::of(b"").into(),
        }))
    }
}

async fn lying_blobs(chunks: Vec<(B3Digest, u64)>, data: &'static [u8]) -> String {
    let fake = LyingBlobs {
        chunks,
        data: Bytes::from_static(data),
    };
    spawn(tonic::transport::Server::builder().add_service(BlobServiceServer::new(fake))).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_bytes_for_a_blob_are_refused() {
    let addr = lying_blobs(vec![], b"not what you asked for").await;
    let blobs = cairn_grpc::addr::blob_service_from_addr(&format!("grpc+http://{addr}")).unwrap();
    let asked = B3Digest::of(b"the real contents");
    let err = read_to_vec(blobs.as_ref(), &asked)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains(&addr) && err.contains("hash to"), "{err}");
    let err = blobs
        .read_many(&[(asked, 17)])
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains(&addr), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_list_that_does_not_add_up_is_refused() {
    // One chunk, listed with its right digest and size, but the blob asked
    // for is another: every chunk checks out, the whole does not.
    let chunk = b"chunk";
    let addr = lying_blobs(vec![(B3Digest::of(chunk), 5)], chunk).await;
    let blobs = cairn_grpc::addr::blob_service_from_addr(&format!("grpc+http://{addr}")).unwrap();
    let asked = B3Digest::of(b"a different blob");
    let err = read_to_vec(blobs.as_ref(), &asked)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains(&addr) && err.contains("concatenate"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_stored_under_another_name_is_refused() {
    let addr = lying_blobs(vec![], b"").await;
    let blobs = cairn_grpc::addr::blob_service_from_addr(&format!("grpc+http://{addr}")).unwrap();
    let err = cairn_castore::blobservice::put_bytes(blobs.as_ref(), b"some contents")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&addr) && err.contains("stored the upload as"),
        "{err}"
    );
}

/// Answers `Get` with a fixed list of messages, whatever is asked.
struct LyingDirectories {
    answer: Vec<cproto::Directory>,
}

#[tonic::async_trait]
impl directory_service_server::DirectoryService for LyingDirectories {
    type GetStream = Streamed<cproto::Directory>;
    async fn get(
        &self,
        _: Request<cproto::GetDirectoryRequest>,
    ) -> Result<Response<Self::GetStream>, Status> {
        let items: Vec<Result<cproto::Directory, Status>> =
            self.answer.iter().cloned().map(Ok).collect();
        Ok(Response::new(futures::stream::iter(items).boxed()))
    }
    async fn put(
        &self,
        _: Request<Streaming<cproto::Directory>>,
    ) -> Result<Response<cproto::PutDirectoryResponse>, Status> {
        Err(Status::unimplemented("read-only fake"))
    }
}

async fn lying_directories(answer: Vec<cproto::Directory>) -> String {
    spawn(
        tonic::transport::Server::builder()
            .add_service(DirectoryServiceServer::new(LyingDirectories { answer })),
    )
    .await
}

fn leaf(contents: &[u8]) -> Directory {
    let mut d = Directory::new();
    d.add(
        PathComponent::try_from(&b"f"[..]).unwrap(),
        Node::File {
            digest: B3Digest::of(contents),
            size: contents.len() as u64,
            executable: false,
        },
    )
    .unwrap();
    d
}

fn parent_of(child: &Directory) -> Directory {
    let mut d = Directory::new();
    d.add(
        PathComponent::try_from(&b"sub"[..]).unwrap(),
        Node::Directory {
            digest: child.digest(),
            size: child.size(cairn_castore::SizeRule::default()).unwrap(),
        },
    )
    .unwrap();
    d
}

async fn dirs_client(addr: &str) -> std::sync::Arc<dyn cairn_castore::DirectoryService> {
    cairn_grpc::addr::directory_service_from_addr(&format!("grpc+http://{addr}")).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_directory_than_the_one_asked_is_refused() {
    let other = leaf(b"other");
    let addr = lying_directories(vec![other.to_proto()]).await;
    let dirs = dirs_client(&addr).await;
    let asked = leaf(b"asked").digest();
    let err = dirs.get(&asked).await.unwrap_err().to_string();
    assert!(err.contains(&addr) && err.contains("instead"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_directory_is_refused() {
    // Two entries out of order: a valid encoding of an invalid directory.
    let bad = cproto::Directory {
        directories: vec![],
        files: vec![
            cproto::FileNode {
                name: Bytes::from_static(b"z"),
                digest: B3Digest::of(b"z").into(),
                size: 1,
                executable: false,
            },
            cproto::FileNode {
                name: Bytes::from_static(b"a"),
                digest: B3Digest::of(b"a").into(),
                size: 1,
                executable: false,
            },
        ],
        symlinks: vec![],
    };
    let addr = lying_directories(vec![bad]).await;
    let dirs = dirs_client(&addr).await;
    let err = dirs
        .get(&leaf(b"x").digest())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&addr) && err.contains("invalid directory"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closure_missing_a_child_or_out_of_order_is_refused() {
    let child = leaf(b"child");
    let root = parent_of(&child);
    let stranger = leaf(b"stranger");

    // The child never comes.
    let addr = lying_directories(vec![root.to_proto()]).await;
    let dirs = dirs_client(&addr).await;
    let got: Vec<_> = dirs.get_recursive(&root.digest()).collect().await;
    let err = got.last().unwrap().as_ref().unwrap_err().to_string();
    assert!(
        err.contains(&addr) && err.contains("without directory"),
        "{err}"
    );

    // The child first, before anything refers to it.
    let addr = lying_directories(vec![child.to_proto(), root.to_proto()]).await;
    let dirs = dirs_client(&addr).await;
    let got: Vec<_> = dirs.get_recursive(&root.digest()).collect().await;
    assert!(got[0].is_err(), "a closure must start with its root");

    // A directory nothing refers to.
    let addr = lying_directories(vec![root.to_proto(), stranger.to_proto()]).await;
    let dirs = dirs_client(&addr).await;
    let got: Vec<_> = dirs.get_recursive(&root.digest()).collect().await;
    let err = got[1].as_ref().unwrap_err().to_string();
    assert!(err.contains("nothing sent before refers to"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lying_remote_leaves_nothing_in_the_local_cache() {
    use cairn_castore::layered::{LayeredBlobService, LayeredDirectoryService};
    use cairn_castore::{BlobService, DirectoryService};
    use std::sync::Arc;

    // Blobs: wrong bytes, and chunks that do not add up.
    for (chunks, data) in [
        (vec![], &b"wrong"[..]),
        (vec![(B3Digest::of(b"chunk"), 5)], &b"chunk"[..]),
    ] {
        let addr = lying_blobs(chunks, data).await;
        let local: Arc<dyn BlobService> =
            Arc::new(cairn_castore::blobservice::MemoryBlobService::default());
        let remote =
            cairn_grpc::addr::blob_service_from_addr(&format!("grpc+http://{addr}")).unwrap();
        let layered = LayeredBlobService::new(local.clone(), remote);
        let asked = B3Digest::of(b"the real contents");
        assert!(read_to_vec(&layered, &asked).await.is_err());
        assert!(!local.has(&asked).await.unwrap(), "a false blob was cached");
        assert!(
            !local.has(&B3Digest::of(data)).await.unwrap(),
            "the remote's bytes were cached"
        );
    }

    // Directories: a closure that stops short.
    let child = leaf(b"child");
    let root = parent_of(&child);
    let addr = lying_directories(vec![root.to_proto()]).await;
    let local: Arc<dyn DirectoryService> =
        cairn_castore::addr::directory_service_from_addr("memory://").unwrap();
    let layered = LayeredDirectoryService::new(local.clone(), dirs_client(&addr).await).unwrap();
    assert!(layered.get(&root.digest()).await.is_err());
    assert!(local.get(&root.digest()).await.unwrap().is_none());
    assert!(local.get(&child.digest()).await.unwrap().is_none());
}
