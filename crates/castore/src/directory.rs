//! The castore model: names, nodes and directories, with every rule of
//! SPEC §1 "Validation of a Directory" enforced on every way in.

use std::collections::BTreeMap;
use std::fmt;

use bytes::Bytes;
use prost::Message;
use thiserror::Error;

use crate::digest::B3Digest;
use crate::proto;

/// Why a name, node or directory is invalid. Every variant names the entry.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DirectoryError {
    /// A name that cannot be a path component.
    #[error("entry {name:?}: invalid name: {reason}")]
    InvalidName {
        /// The name, escaped.
        name: String,
        /// Why.
        reason: String,
    },
    /// A list not sorted strictly ascending.
    #[error("entry {name:?} in {list} is not sorted after {previous:?}")]
    Unsorted {
        /// `directories`, `files` or `symlinks`.
        list: &'static str,
        /// The entry before.
        previous: String,
        /// The offending entry.
        name: String,
    },
    /// A name appearing twice across the three lists.
    #[error("entry {0:?} appears more than once")]
    Duplicate(String),
    /// A digest that is not 32 bytes.
    #[error("entry {name:?}: digest is {len} bytes, expected 32")]
    DigestLength {
        /// The entry.
        name: String,
        /// Its length.
        len: usize,
    },
    /// An empty, NUL-containing or over-long symlink target.
    #[error("entry {name:?}: invalid symlink target: {reason}")]
    InvalidTarget {
        /// The entry.
        name: String,
        /// Why.
        reason: String,
    },
    /// Sizes that overflow u64 when summed.
    #[error("entry {0:?}: directory size overflows")]
    SizeOverflow(String),
    /// A protobuf encoding that does not decode.
    #[error("undecodable Directory message: {0}")]
    Decode(String),
    /// A `Node` message without any node set.
    #[error("node {0:?} has no type set")]
    EmptyNode(String),
}

fn show(name: &[u8]) -> String {
    name.escape_ascii().to_string()
}

/// A validated directory entry name: 1–255 bytes, no `/`, no NUL, not `.`/`..`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PathComponent(Bytes);

impl PathComponent {
    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl TryFrom<Bytes> for PathComponent {
    type Error = DirectoryError;
    fn try_from(b: Bytes) -> Result<Self, DirectoryError> {
        // One rule for NAR entry names and castore names (SPEC §1, §3).
        cairn_nix::nar::validate_entry_name(&b).map_err(|e| DirectoryError::InvalidName {
            name: show(&b),
            reason: match e {
                cairn_nix::nar::Malformed::InvalidName { reason, .. } => reason.to_owned(),
                other => other.to_string(),
            },
        })?;
        Ok(PathComponent(b))
    }
}

impl TryFrom<&[u8]> for PathComponent {
    type Error = DirectoryError;
    fn try_from(b: &[u8]) -> Result<Self, DirectoryError> {
        Self::try_from(Bytes::copy_from_slice(b))
    }
}

impl TryFrom<&str> for PathComponent {
    type Error = DirectoryError;
    fn try_from(s: &str) -> Result<Self, DirectoryError> {
        Self::try_from(s.as_bytes())
    }
}

impl fmt::Display for PathComponent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.0))
    }
}

impl fmt::Debug for PathComponent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", show(&self.0))
    }
}

/// A validated symlink target: 1–4095 bytes, no NUL.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SymlinkTarget(Bytes);

impl SymlinkTarget {
    /// Validates a target; `entry` names the symlink in the error.
    pub fn new(target: Bytes, entry: &[u8]) -> Result<Self, DirectoryError> {
        cairn_nix::nar::validate_symlink_target(&target).map_err(|e| {
            DirectoryError::InvalidTarget {
                name: show(entry),
                reason: match e {
                    cairn_nix::nar::Malformed::InvalidTarget { reason, .. } => reason.to_owned(),
                    other => other.to_string(),
                },
            }
        })?;
        Ok(SymlinkTarget(target))
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for SymlinkTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", show(&self.0))
    }
}

/// A node without its name: what a directory entry (or a store path's root) is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Node {
    /// A directory, by digest, with its entry count under the store's rule.
    Directory {
        /// Digest of the directory's canonical encoding.
        digest: B3Digest,
        /// Entries below it.
        size: u64,
    },
    /// A regular file whose contents are a blob.
    File {
        /// The blob's digest.
        digest: B3Digest,
        /// Contents length.
        size: u64,
        /// Executable bit.
        executable: bool,
    },
    /// A symbolic link.
    Symlink {
        /// Its target.
        target: SymlinkTarget,
    },
}

impl Node {
    /// Converts to a named protobuf `Node`.
    pub fn to_proto(&self, name: &[u8]) -> proto::Node {
        proto::Node {
            node: Some(self.to_named(Bytes::copy_from_slice(name))),
        }
    }

    /// The protobuf entry for this node under `name`.
    fn to_named(&self, name: Bytes) -> proto::node::Node {
        match self {
            Node::Directory { digest, size } => {
                proto::node::Node::Directory(proto::DirectoryNode {
                    name,
                    digest: (*digest).into(),
                    size: *size,
                })
            }
            Node::File {
                digest,
                size,
                executable,
            } => proto::node::Node::File(proto::FileNode {
                name,
                digest: (*digest).into(),
                size: *size,
                executable: *executable,
            }),
            Node::Symlink { target } => proto::node::Node::Symlink(proto::SymlinkNode {
                name,
                target: target.0.clone(),
            }),
        }
    }

    /// Validates a protobuf `Node`, returning its (unvalidated) name and the node.
    /// The name is left to the caller: a store path root has its own rules.
    pub fn from_proto(node: proto::Node) -> Result<(Bytes, Node), DirectoryError> {
        let digest = entry_digest;
        match node.node {
            None => Err(DirectoryError::EmptyNode(String::new())),
            Some(proto::node::Node::Directory(d)) => {
                let digest = digest(&d.name, &d.digest)?;
                Ok((
                    d.name,
                    Node::Directory {
                        digest,
                        size: d.size,
                    },
                ))
            }
            Some(proto::node::Node::File(f)) => {
                let digest = digest(&f.name, &f.digest)?;
                Ok((
                    f.name,
                    Node::File {
                        digest,
                        size: f.size,
                        executable: f.executable,
                    },
                ))
            }
            Some(proto::node::Node::Symlink(s)) => {
                let target = SymlinkTarget::new(s.target, &s.name)?;
                Ok((s.name, Node::Symlink { target }))
            }
        }
    }
}

/// How `DirectoryNode.size` is computed. A store-wide setting: one store
/// never mixes the two, since they give different digests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SizeRule {
    /// SPEC §1: entries of the child plus the sizes of its subdirectories.
    #[default]
    Documented,
    /// What tvix (since 2024-08) and snix compute: 2 × entries plus the
    /// sizes of subdirectories. For exchanging directories with them.
    TvixCompat,
}

impl SizeRule {
    /// The name used in addresses and the data directory's settings.
    pub fn name(self) -> &'static str {
        match self {
            SizeRule::Documented => "documented",
            SizeRule::TvixCompat => "tvix-compat",
        }
    }

    /// Parses [`SizeRule::name`].
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "documented" => Some(SizeRule::Documented),
            "tvix-compat" => Some(SizeRule::TvixCompat),
            _ => None,
        }
    }
}

/// A directory: named nodes in byte order of their names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Directory {
    entries: BTreeMap<PathComponent, Node>,
}

impl Directory {
    /// An empty directory.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an entry; a name already present is an error.
    pub fn add(&mut self, name: PathComponent, node: Node) -> Result<(), DirectoryError> {
        if self.entries.contains_key(&name) {
            return Err(DirectoryError::Duplicate(show(name.as_bytes())));
        }
        self.entries.insert(name, node);
        Ok(())
    }

    /// Entries in name order.
    pub fn entries(&self) -> impl Iterator<Item = (&PathComponent, &Node)> {
        self.entries.iter()
    }

    /// One entry by name.
    pub fn get(&self, name: &[u8]) -> Option<&Node> {
        self.entries
            .get(&PathComponent(Bytes::copy_from_slice(name)))
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Child directories: (name, digest, declared size).
    pub fn subdirectories(&self) -> impl Iterator<Item = (&PathComponent, &B3Digest, u64)> {
        self.entries.iter().filter_map(|(n, node)| match node {
            Node::Directory { digest, size } => Some((n, digest, *size)),
            _ => None,
        })
    }

    /// The `size` a parent must declare for this directory under `rule`,
    /// trusting the sizes declared for its children.
    pub fn size(&self, rule: SizeRule) -> Result<u64, DirectoryError> {
        let count = self.entries.len() as u64;
        let own = match rule {
            SizeRule::Documented => count,
            SizeRule::TvixCompat => count * 2,
        };
        self.subdirectories().try_fold(own, |acc, (name, _, size)| {
            acc.checked_add(size)
                .ok_or_else(|| DirectoryError::SizeOverflow(show(name.as_bytes())))
        })
    }

    /// The canonical protobuf message: three lists in name order.
    pub fn to_proto(&self) -> proto::Directory {
        let mut out = proto::Directory::default();
        for (name, node) in &self.entries {
            match node.to_named(name.0.clone()) {
                proto::node::Node::Directory(d) => out.directories.push(d),
                proto::node::Node::File(f) => out.files.push(f),
                proto::node::Node::Symlink(l) => out.symlinks.push(l),
            }
        }
        out
    }

    /// The canonical encoding (fields in number order, defaults omitted).
    pub fn encode(&self) -> Vec<u8> {
        self.to_proto().encode_to_vec()
    }

    /// The digest: BLAKE3 of the canonical encoding.
    pub fn digest(&self) -> B3Digest {
        B3Digest::of(&self.encode())
    }

    /// Decodes and validates bytes received from anywhere. The caller must
    /// hash [`Directory::encode`] of the result, never the received bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, DirectoryError> {
        let msg =
            proto::Directory::decode(bytes).map_err(|e| DirectoryError::Decode(e.to_string()))?;
        Self::try_from(msg)
    }
}

/// An entry's digest field, which must be exactly 32 bytes.
fn entry_digest(name: &Bytes, digest: &Bytes) -> Result<B3Digest, DirectoryError> {
    B3Digest::try_from(digest.as_ref()).map_err(|_| DirectoryError::DigestLength {
        name: show(name),
        len: digest.len(),
    })
}

fn check_sorted<'a>(
    list: &'static str,
    names: impl Iterator<Item = &'a Bytes>,
) -> Result<(), DirectoryError> {
    let mut previous: Option<&Bytes> = None;
    for name in names {
        if let Some(p) = previous {
            if p >= name {
                if p == name {
                    return Err(DirectoryError::Duplicate(show(name)));
                }
                return Err(DirectoryError::Unsorted {
                    list,
                    previous: show(p),
                    name: show(name),
                });
            }
        }
        previous = Some(name);
    }
    Ok(())
}

impl TryFrom<proto::Directory> for Directory {
    type Error = DirectoryError;

    fn try_from(msg: proto::Directory) -> Result<Self, DirectoryError> {
        check_sorted("directories", msg.directories.iter().map(|d| &d.name))?;
        check_sorted("files", msg.files.iter().map(|f| &f.name))?;
        check_sorted("symlinks", msg.symlinks.iter().map(|s| &s.name))?;
        let mut dir = Directory::new();
        let digest = entry_digest;
        for d in msg.directories {
            let node = Node::Directory {
                digest: digest(&d.name, &d.digest)?,
                size: d.size,
            };
            dir.add(PathComponent::try_from(d.name)?, node)?;
        }
        for f in msg.files {
            let node = Node::File {
                digest: digest(&f.name, &f.digest)?,
                size: f.size,
                executable: f.executable,
            };
            dir.add(PathComponent::try_from(f.name)?, node)?;
        }
        for s in msg.symlinks {
            let node = Node::Symlink {
                target: SymlinkTarget::new(s.target, &s.name)?,
            };
            dir.add(PathComponent::try_from(s.name)?, node)?;
        }
        // The documented rule's sum must fit; a compat store checks its own
        // (larger) sum when it validates sizes against children.
        dir.size(SizeRule::Documented)?;
        Ok(dir)
    }
}
