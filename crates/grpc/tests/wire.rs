//! Wire compatibility, checked below the generated code: requests are
//! hand-built protobuf bytes sent to literal method paths over a real TCP
//! socket, and responses are compared as bytes. Renaming a package, a
//! service, a method or a field number breaks these tests, as it would
//! break every tvix/snix peer.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use bytes::{Buf, BufMut};
use cairn_castore::import::NoProgress;
use cairn_castore::{B3Digest, Node};
use cairn_grpc::server::Services;
use cairn_grpc::transport::{spawn, Location, Running};
use cairn_store::nar_calc::CastoreNarCalculator;
use cairn_store::{PathInfo, Store};
use http::uri::PathAndQuery;
use prost::Message;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::{Code, Status};

/// Sends and receives message bodies as raw bytes.
#[derive(Default, Clone)]
struct Raw;

struct RawEncoder;
struct RawDecoder;

impl Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawDecoder {
    type Item = Vec<u8>;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let mut out = vec![0u8; src.remaining()];
        src.copy_to_slice(&mut out);
        Ok(Some(out))
    }
}

impl Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

struct Fixture {
    store: Store,
    info: PathInfo,
    addr: String,
    _server: Running,
    _dir: tempfile::TempDir,
}

/// A daemon over memory backends holding one imported tree: a file, a
/// subdirectory with a file, a symlink.
async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(tree.join("sub")).unwrap();
    std::fs::write(tree.join("a"), b"hello\n").unwrap();
    std::fs::write(tree.join("sub/b"), vec![7u8; 3000]).unwrap();
    std::os::unix::fs::symlink("a", tree.join("link")).unwrap();
    let store = Store {
        blobs: cairn_castore::addr::blob_service_from_addr("memory://").unwrap(),
        dirs: cairn_castore::addr::directory_service_from_addr("memory://").unwrap(),
        path_infos: cairn_store::addr::path_info_service_from_addr("memory://").unwrap(),
    };
    let info = store.import_tree(&tree, "tree", &NoProgress).await.unwrap();
    let services = Services::new(
        store.blobs.clone(),
        store.dirs.clone(),
        store.path_infos.clone(),
        Arc::new(CastoreNarCalculator::new(
            store.blobs.clone(),
            store.dirs.clone(),
        )),
    );
    let running = spawn(services, Location::Tcp("127.0.0.1:0".into()))
        .await
        .unwrap();
    let addr = running.location.to_string();
    Fixture {
        store,
        info,
        addr,
        _server: running,
        _dir: dir,
    }
}

async fn grpc(addr: &str) -> tonic::client::Grpc<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    tonic::client::Grpc::new(channel)
}

async fn unary(addr: &str, path: &'static str, body: Vec<u8>) -> Result<Vec<u8>, Status> {
    let mut g = grpc(addr).await;
    g.ready().await.unwrap();
    g.unary(
        tonic::Request::new(body),
        PathAndQuery::from_static(path),
        Raw,
    )
    .await
    .map(tonic::Response::into_inner)
}

async fn streaming(addr: &str, path: &'static str, body: Vec<u8>) -> Result<Vec<Vec<u8>>, Status> {
    let mut g = grpc(addr).await;
    g.ready().await.unwrap();
    let mut stream = g
        .server_streaming(
            tonic::Request::new(body),
            PathAndQuery::from_static(path),
            Raw,
        )
        .await?
        .into_inner();
    let mut out = Vec::new();
    while let Some(m) = stream.message().await? {
        out.push(m);
    }
    Ok(out)
}

/// Field 1 as 32 bytes (tag 0x0a, length 0x20), then `rest`.
fn digest_field(d: &B3Digest, rest: &[u8]) -> Vec<u8> {
    [&[0x0a, 0x20][..], d.as_bytes(), rest].concat()
}

fn root_digest(info: &PathInfo) -> B3Digest {
    match info.node {
        Node::Directory { digest, .. } => digest,
        _ => panic!("the fixture is a directory"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directory_get_by_literal_path_and_bytes() {
    let f = fixture().await;
    let root = root_digest(&f.info);
    let want = f.store.dirs.get(&root).await.unwrap().unwrap();
    for path in [
        "/tvix.castore.v1.DirectoryService/Get",
        "/snix.castore.v1.DirectoryService/Get",
    ] {
        let got = streaming(&f.addr, path, digest_field(&root, &[]))
            .await
            .unwrap();
        assert_eq!(got, vec![want.encode()], "{path}");
        // The canonical bytes hash to the digest asked for.
        assert_eq!(B3Digest::of(&got[0]), root);
    }
    // recursive = true is field 2, varint 1: root first, then `sub`.
    let got = streaming(
        &f.addr,
        "/tvix.castore.v1.DirectoryService/Get",
        digest_field(&root, &[0x10, 0x01]),
    )
    .await
    .unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(B3Digest::of(&got[0]), root);
    let (_, sub, _) = want.subdirectories().next().unwrap();
    assert_eq!(B3Digest::of(&got[1]), *sub);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_stat_and_read_by_literal_path_and_bytes() {
    let f = fixture().await;
    let d = B3Digest::of(b"hello\n");
    // send_chunks = true (field 2): memory:// has no finer chunks, so the
    // response is the empty message.
    let stat = unary(
        &f.addr,
        "/tvix.castore.v1.BlobService/Stat",
        digest_field(&d, &[0x10, 0x01]),
    )
    .await
    .unwrap();
    assert_eq!(stat, Vec::<u8>::new());
    let pieces = streaming(
        &f.addr,
        "/tvix.castore.v1.BlobService/Read",
        digest_field(&d, &[]),
    )
    .await
    .unwrap();
    // Each piece is a BlobChunk: field 1 (0x0a), length, data.
    assert_eq!(pieces, vec![[&[0x0a, 6][..], b"hello\n"].concat()]);
    let pieces = streaming(
        &f.addr,
        "/snix.castore.v1.BlobService/Read",
        digest_field(&d, &[]),
    )
    .await
    .unwrap();
    assert_eq!(pieces.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_info_get_by_literal_path_and_bytes() {
    let f = fixture().await;
    // by_output_hash is field 1 of the oneof: tag 0x0a, 20 bytes.
    let req = [&[0x0a, 0x14][..], f.info.store_path.digest()].concat();
    for path in [
        "/tvix.store.v1.PathInfoService/Get",
        "/snix.store.v1.PathInfoService/Get",
    ] {
        let got = unary(&f.addr, path, req.clone()).await.unwrap();
        assert_eq!(got, f.info.to_proto().encode_to_vec(), "{path}");
    }
    // CalculateNAR takes a castore Node and answers {1: nar_size, 2: nar_sha256}.
    let node = f
        .info
        .node
        .to_proto(f.info.store_path.to_string().as_bytes())
        .encode_to_vec();
    let got = unary(&f.addr, "/tvix.store.v1.PathInfoService/CalculateNAR", node)
        .await
        .unwrap();
    let mut want = vec![0x08];
    prost::encoding::encode_varint(f.info.nar_size, &mut want);
    want.extend_from_slice(&[0x12, 0x20]);
    want.extend_from_slice(&f.info.nar_sha256);
    assert_eq!(got, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_codes_are_the_specs() {
    let f = fixture().await;
    let absent = B3Digest::of(b"never stored");
    let err = streaming(
        &f.addr,
        "/tvix.castore.v1.BlobService/Read",
        digest_field(&absent, &[]),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err}");
    let err = streaming(
        &f.addr,
        "/tvix.castore.v1.DirectoryService/Get",
        digest_field(&absent, &[]),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err}");
    // A digest of 3 bytes.
    let err = unary(
        &f.addr,
        "/tvix.castore.v1.BlobService/Stat",
        vec![0x0a, 3, 1, 2, 3],
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    let err = unary(
        &f.addr,
        "/tvix.store.v1.PathInfoService/Get",
        [&[0x0a, 0x14][..], &[0u8; 20]].concat(),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err}");
    let err = unary(&f.addr, "/tvix.castore.v1.NoSuchService/Get", vec![])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_extension_names_what_is_missing() {
    let f = fixture().await;
    let have = B3Digest::of(b"hello\n");
    let lack = B3Digest::of(b"not here");
    // Digests { repeated bytes digests = 1 }.
    let req = [digest_field(&have, &[]), digest_field(&lack, &[])].concat();
    let got = unary(&f.addr, "/cairn.v1.BatchService/MissingBlobs", req)
        .await
        .unwrap();
    assert_eq!(got, digest_field(&lack, &[]));
    let root = root_digest(&f.info);
    let req = [digest_field(&root, &[]), digest_field(&lack, &[])].concat();
    let got = unary(&f.addr, "/cairn.v1.BatchService/MissingDirectories", req)
        .await
        .unwrap();
    assert_eq!(got, digest_field(&lack, &[]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_reads_answer_in_order_and_mark_the_absent() {
    let f = fixture().await;
    let have = B3Digest::of(b"hello\n");
    let lack = B3Digest::of(b"not here");
    let req = [digest_field(&have, &[]), digest_field(&lack, &[])].concat();
    let got = streaming(&f.addr, "/cairn.v1.BatchService/ReadBlobs", req)
        .await
        .unwrap();
    // WholeBlob { 1: data } then WholeBlob { 2: absent = true }.
    assert_eq!(
        got,
        vec![[&[0x0a, 6][..], b"hello\n"].concat(), vec![0x10, 0x01]]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_path_info_whose_tree_is_not_stored_is_refused() {
    let f = fixture().await;
    let mut info = f.info.clone();
    info.node = Node::File {
        digest: B3Digest::of(b"absent contents"),
        size: 15,
        executable: false,
    };
    let err = unary(
        &f.addr,
        "/tvix.store.v1.PathInfoService/Put",
        info.to_proto().encode_to_vec(),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err}");
    assert!(err.message().contains("not stored"), "{err}");
    // And the stored PathInfo is unchanged.
    let still = f
        .store
        .path_infos
        .get(f.info.store_path.digest())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(still, f.info);
}
