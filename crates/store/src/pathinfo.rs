//! `PathInfo`: a store path, its root node and its Nix metadata, validated
//! on every way in (SPEC §2).

use bytes::Bytes;
use cairn_castore::{DirectoryError, Node};
use cairn_nix::hash::{ContentAddress, FileIngestionMethod, HashAlgo, NixHash};
use cairn_nix::narinfo::NarInfo;
use cairn_nix::store_path::{StorePath, StorePathError};
use cairn_nix::Signature;
use thiserror::Error;

use crate::proto;

/// Why a PathInfo message is invalid.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PathInfoError {
    /// No root node, or no NARInfo.
    #[error("missing {0}")]
    Missing(&'static str),
    /// The root node is invalid.
    #[error("root node: {0}")]
    Node(#[from] DirectoryError),
    /// The root node's name is not a store path base name.
    #[error("root node name {name:?} is not a store path base name: {source}")]
    RootName {
        /// The name, escaped.
        name: String,
        /// Why.
        source: StorePathError,
    },
    /// A reference digest that is not 20 bytes.
    #[error("reference {index} is {len} bytes, expected 20")]
    ReferenceLength {
        /// Position in the list.
        index: usize,
        /// Its length.
        len: usize,
    },
    /// `references` and `reference_names` disagree.
    #[error("reference names do not match references: {0}")]
    ReferenceNames(String),
    /// A NAR sha256 that is not 32 bytes.
    #[error("nar_sha256 is {0} bytes, expected 32")]
    NarSha256Length(usize),
    /// A signature with a data field that is not 64 bytes, or no name.
    #[error("signature {index}: {reason}")]
    Signature {
        /// Position in the list.
        index: usize,
        /// Why.
        reason: String,
    },
    /// A deriver that is not a valid store path.
    #[error("deriver: {0}")]
    Deriver(String),
    /// A content address whose digest has the wrong length for its type.
    #[error("content address: {0}")]
    Ca(String),
}

/// A store path with its root node and Nix metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathInfo {
    /// The store path; the root node is named after its base name.
    pub store_path: StorePath,
    /// The root node in castore.
    pub node: Node,
    /// The store paths this one refers to, in stored order.
    pub references: Vec<StorePath>,
    /// Size of the path's NAR.
    pub nar_size: u64,
    /// sha256 of the path's NAR.
    pub nar_sha256: [u8; 32],
    /// narinfo signatures.
    pub signatures: Vec<Signature>,
    /// The derivation that built it (a `.drv` store path), if known.
    pub deriver: Option<StorePath>,
    /// The content address, for content-addressed paths.
    pub ca: Option<ContentAddress>,
}

fn ca_to_proto(ca: &ContentAddress) -> proto::nar_info::Ca {
    use proto::nar_info::ca::Hash;
    let (kind, hash) = match ca {
        ContentAddress::Text(h) => (Hash::TextSha256, h),
        ContentAddress::Fixed(FileIngestionMethod::Recursive, h) => (
            match h.algo() {
                HashAlgo::Sha256 => Hash::NarSha256,
                HashAlgo::Sha1 => Hash::NarSha1,
                HashAlgo::Sha512 => Hash::NarSha512,
                HashAlgo::Md5 => Hash::NarMd5,
            },
            h,
        ),
        ContentAddress::Fixed(FileIngestionMethod::Flat, h) => (
            match h.algo() {
                HashAlgo::Sha256 => Hash::FlatSha256,
                HashAlgo::Sha1 => Hash::FlatSha1,
                HashAlgo::Sha512 => Hash::FlatSha512,
                HashAlgo::Md5 => Hash::FlatMd5,
            },
            h,
        ),
    };
    proto::nar_info::Ca {
        r#type: kind as i32,
        digest: Bytes::copy_from_slice(hash.digest()),
    }
}

fn ca_from_proto(ca: &proto::nar_info::Ca) -> Result<ContentAddress, PathInfoError> {
    use proto::nar_info::ca::Hash;
    let kind = Hash::try_from(ca.r#type)
        .map_err(|_| PathInfoError::Ca(format!("unknown hash type {}", ca.r#type)))?;
    let (method, algo) = match kind {
        Hash::NarSha256 => (Some(FileIngestionMethod::Recursive), HashAlgo::Sha256),
        Hash::NarSha1 => (Some(FileIngestionMethod::Recursive), HashAlgo::Sha1),
        Hash::NarSha512 => (Some(FileIngestionMethod::Recursive), HashAlgo::Sha512),
        Hash::NarMd5 => (Some(FileIngestionMethod::Recursive), HashAlgo::Md5),
        Hash::TextSha256 => (None, HashAlgo::Sha256),
        Hash::FlatSha1 => (Some(FileIngestionMethod::Flat), HashAlgo::Sha1),
        Hash::FlatMd5 => (Some(FileIngestionMethod::Flat), HashAlgo::Md5),
        Hash::FlatSha256 => (Some(FileIngestionMethod::Flat), HashAlgo::Sha256),
        Hash::FlatSha512 => (Some(FileIngestionMethod::Flat), HashAlgo::Sha512),
    };
    let hash = NixHash::from_bytes(algo, &ca.digest).ok_or_else(|| {
        PathInfoError::Ca(format!(
            "{kind:?} digest is {} bytes, expected {}",
            ca.digest.len(),
            algo.digest_len()
        ))
    })?;
    Ok(match method {
        None => ContentAddress::Text(hash),
        Some(m) => ContentAddress::Fixed(m, hash),
    })
}

impl PathInfo {
    /// The string Nix signs for this path (narinfo `Sig:` lines).
    pub fn fingerprint(&self) -> String {
        cairn_nix::narinfo::fingerprint(
            &self.store_path,
            &NixHash::sha256(self.nar_sha256),
            self.nar_size,
            &self.references,
        )
    }

    /// The narinfo describing this path, its NAR at `url` (relative to
    /// the cache) compressed with `compression`.
    pub fn to_narinfo(&self, url: String, compression: &str) -> NarInfo {
        NarInfo {
            store_path: self.store_path.clone(),
            url,
            compression: Some(compression.to_owned()),
            file_hash: None,
            file_size: None,
            nar_hash: NixHash::sha256(self.nar_sha256),
            nar_size: self.nar_size,
            references: self.references.clone(),
            deriver: self.deriver.clone(),
            signatures: self.signatures.clone(),
            ca: self.ca.clone(),
        }
    }

    /// The protobuf message.
    pub fn to_proto(&self) -> proto::PathInfo {
        proto::PathInfo {
            node: Some(self.node.to_proto(self.store_path.base_name().as_bytes())),
            references: self
                .references
                .iter()
                .map(|r| Bytes::copy_from_slice(r.digest()))
                .collect(),
            narinfo: Some(proto::NarInfo {
                nar_size: self.nar_size,
                nar_sha256: Bytes::copy_from_slice(&self.nar_sha256),
                signatures: self
                    .signatures
                    .iter()
                    .map(|s| proto::nar_info::Signature {
                        name: s.name().to_owned(),
                        data: Bytes::copy_from_slice(s.bytes()),
                    })
                    .collect(),
                reference_names: self.references.iter().map(StorePath::base_name).collect(),
                deriver: self.deriver.as_ref().map(|d| proto::StorePath {
                    name: d.name().strip_suffix(".drv").unwrap_or(d.name()).to_owned(),
                    digest: Bytes::copy_from_slice(d.digest()),
                }),
                ca: self.ca.as_ref().map(ca_to_proto),
            }),
        }
    }
}

impl TryFrom<proto::PathInfo> for PathInfo {
    type Error = PathInfoError;

    fn try_from(msg: proto::PathInfo) -> Result<Self, PathInfoError> {
        let (name, node) = Node::from_proto(msg.node.ok_or(PathInfoError::Missing("root node"))?)?;
        let base = std::str::from_utf8(&name).map_err(|_| PathInfoError::RootName {
            name: name.escape_ascii().to_string(),
            source: StorePathError::Shape(String::from_utf8_lossy(&name).into_owned()),
        })?;
        let store_path =
            StorePath::from_base_name(base).map_err(|source| PathInfoError::RootName {
                name: base.to_owned(),
                source,
            })?;
        let narinfo = msg.narinfo.ok_or(PathInfoError::Missing("narinfo"))?;

        if narinfo.reference_names.len() != msg.references.len() {
            return Err(PathInfoError::ReferenceNames(format!(
                "{} references but {} names",
                msg.references.len(),
                narinfo.reference_names.len()
            )));
        }
        let mut references = Vec::with_capacity(msg.references.len());
        for (index, (digest, name)) in msg
            .references
            .iter()
            .zip(&narinfo.reference_names)
            .enumerate()
        {
            if digest.len() != 20 {
                return Err(PathInfoError::ReferenceLength {
                    index,
                    len: digest.len(),
                });
            }
            let path = StorePath::from_base_name(name).map_err(|e| {
                PathInfoError::ReferenceNames(format!("name {index} {name:?}: {e}"))
            })?;
            if path.digest()[..] != digest[..] {
                return Err(PathInfoError::ReferenceNames(format!(
                    "name {index} {name:?} does not match its digest"
                )));
            }
            references.push(path);
        }

        let nar_sha256: [u8; 32] = narinfo.nar_sha256[..]
            .try_into()
            .map_err(|_| PathInfoError::NarSha256Length(narinfo.nar_sha256.len()))?;

        let signatures = narinfo
            .signatures
            .iter()
            .enumerate()
            .map(|(index, s)| {
                let bytes: [u8; 64] =
                    s.data[..]
                        .try_into()
                        .map_err(|_| PathInfoError::Signature {
                            index,
                            reason: format!("data is {} bytes, expected 64", s.data.len()),
                        })?;
                if s.name.is_empty() || s.name.contains(':') {
                    return Err(PathInfoError::Signature {
                        index,
                        reason: format!("invalid key name {:?}", s.name),
                    });
                }
                Ok(Signature::from_parts(&s.name, bytes))
            })
            .collect::<Result<Vec<_>, _>>()?;

        let deriver = narinfo
            .deriver
            .map(|d| {
                let digest: [u8; 20] = d.digest[..].try_into().map_err(|_| {
                    PathInfoError::Deriver(format!(
                        "digest is {} bytes, expected 20",
                        d.digest.len()
                    ))
                })?;
                StorePath::from_parts(digest, &format!("{}.drv", d.name))
                    .map_err(|e| PathInfoError::Deriver(e.to_string()))
            })
            .transpose()?;
        let ca = narinfo.ca.as_ref().map(ca_from_proto).transpose()?;

        Ok(PathInfo {
            store_path,
            node,
            references,
            nar_size: narinfo.nar_size,
            nar_sha256,
            signatures,
            deriver,
            ca,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_castore::B3Digest;
    use prost::Message;

    fn sample() -> PathInfo {
        let store_path =
            StorePath::from_base_name("8sfqrcf48xfcqw4gy961lab11cskjy38-hello-2.12").unwrap();
        PathInfo {
            store_path,
            node: Node::Directory {
                digest: B3Digest::empty(),
                size: 0,
            },
            references: vec![
                StorePath::from_base_name("0sfqrcf48xfcqw4gy961lab11cskjy38-glibc-2.37").unwrap(),
                StorePath::from_base_name("8sfqrcf48xfcqw4gy961lab11cskjy38-hello-2.12").unwrap(),
            ],
            nar_size: 648,
            nar_sha256: [7; 32],
            signatures: vec![Signature::from_parts("cache.example.org-1", [9; 64])],
            deriver: Some(
                StorePath::from_base_name("5gjcjs4f6wbsdn1bc8ihmf1dz5qdfhvd-hello-2.12.drv")
                    .unwrap(),
            ),
            ca: Some(ContentAddress::Fixed(
                FileIngestionMethod::Flat,
                HashAlgo::Sha1.digest(b"x"),
            )),
        }
    }

    #[test]
    fn round_trips_through_protobuf_bytes() {
        let info = sample();
        let bytes = info.to_proto().encode_to_vec();
        let back = PathInfo::try_from(proto::PathInfo::decode(bytes.as_slice()).unwrap()).unwrap();
        assert_eq!(back, info);
        // The deriver travels without its .drv suffix.
        assert_eq!(
            info.to_proto().narinfo.unwrap().deriver.unwrap().name,
            "hello-2.12"
        );
    }

    #[test]
    fn every_content_address_kind_round_trips() {
        for algo in [
            HashAlgo::Md5,
            HashAlgo::Sha1,
            HashAlgo::Sha256,
            HashAlgo::Sha512,
        ] {
            let h = algo.digest(b"cairn");
            let mut cas = vec![
                ContentAddress::Fixed(FileIngestionMethod::Flat, h.clone()),
                ContentAddress::Fixed(FileIngestionMethod::Recursive, h.clone()),
            ];
            if algo == HashAlgo::Sha256 {
                cas.push(ContentAddress::Text(h.clone()));
            }
            for ca in cas {
                assert_eq!(ca_from_proto(&ca_to_proto(&ca)).unwrap(), ca);
            }
        }
        // SPEC §2's enum values.
        use proto::nar_info::ca::Hash;
        assert_eq!(
            [
                Hash::NarSha256,
                Hash::NarSha1,
                Hash::NarSha512,
                Hash::NarMd5,
                Hash::TextSha256
            ]
            .map(|h| h as i32),
            [0, 1, 2, 3, 4]
        );
        assert_eq!(
            [
                Hash::FlatSha1,
                Hash::FlatMd5,
                Hash::FlatSha256,
                Hash::FlatSha512
            ]
            .map(|h| h as i32),
            [5, 6, 7, 8]
        );
    }

    #[test]
    fn invalid_messages_are_refused_with_a_reason() {
        let good = sample().to_proto();
        let broken = |f: &dyn Fn(&mut proto::PathInfo)| {
            let mut m = good.clone();
            f(&mut m);
            PathInfo::try_from(m).unwrap_err()
        };
        assert_eq!(
            broken(&|m| m.node = None),
            PathInfoError::Missing("root node")
        );
        assert_eq!(
            broken(&|m| m.narinfo = None),
            PathInfoError::Missing("narinfo")
        );
        assert!(matches!(
            broken(&|m| m.node = Some(
                Node::Directory {
                    digest: B3Digest::empty(),
                    size: 0
                }
                .to_proto(b"not-a-store-path")
            )),
            PathInfoError::RootName { .. }
        ));
        assert!(matches!(
            broken(&|m| m.references[0] = Bytes::from_static(b"short")),
            PathInfoError::ReferenceLength { index: 0, len: 5 }
        ));
        assert!(matches!(
            broken(&|m| m.references.swap(0, 1)),
            PathInfoError::ReferenceNames(_)
        ));
        assert!(matches!(
            broken(&|m| {
                m.narinfo.as_mut().unwrap().reference_names.pop();
            }),
            PathInfoError::ReferenceNames(_)
        ));
        assert_eq!(
            broken(&|m| m.narinfo.as_mut().unwrap().nar_sha256 = Bytes::from_static(b"abc")),
            PathInfoError::NarSha256Length(3)
        );
        assert!(matches!(
            broken(&|m| m.narinfo.as_mut().unwrap().signatures[0].data = Bytes::from_static(b"x")),
            PathInfoError::Signature { index: 0, .. }
        ));
        assert!(matches!(
            broken(
                &|m| m.narinfo.as_mut().unwrap().deriver.as_mut().unwrap().digest =
                    Bytes::from_static(b"x")
            ),
            PathInfoError::Deriver(_)
        ));
        assert!(matches!(
            broken(
                &|m| m.narinfo.as_mut().unwrap().ca.as_mut().unwrap().digest =
                    Bytes::from_static(b"x")
            ),
            PathInfoError::Ca(_)
        ));
        assert!(matches!(
            broken(&|m| m.narinfo.as_mut().unwrap().ca.as_mut().unwrap().r#type = 42),
            PathInfoError::Ca(_)
        ));
    }
}
