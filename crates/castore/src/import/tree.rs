//! Building a castore tree from entries that arrive in pre-order (a parent
//! before its children), as a filesystem walk or a NAR yields them, while
//! file contents are stored elsewhere and their digests filled in later.
//!
//! It keeps only names and small metadata per entry, never contents, and
//! puts nothing into a directory service until [`TreeBuilder::finish`],
//! which sends the whole closure, children first, through one putter: a
//! tree that fails half-way leaves no directory behind.

use std::path::PathBuf;

use bytes::Bytes;

use super::ImportError;
use crate::{B3Digest, Directory, DirectoryService, Error, Node, PathComponent, SymlinkTarget};

/// The position of an entry, for filling in its digest later.
pub type EntryId = usize;

const NO_PARENT: usize = usize::MAX;

enum Kind {
    Directory {
        children: Vec<EntryId>,
    },
    File {
        digest: Option<B3Digest>,
        size: u64,
        executable: bool,
    },
    Symlink {
        target: Bytes,
    },
}

struct Entry {
    parent: usize,
    name: Bytes,
    kind: Kind,
}

/// Collects a tree's entries; see the module documentation.
pub struct TreeBuilder {
    /// How error messages name the root (a source path, or "NAR").
    root_label: PathBuf,
    entries: Vec<Entry>,
    /// The directories entered and not yet left, outermost first.
    open: Vec<EntryId>,
}

impl TreeBuilder {
    /// An empty tree; `root_label` names the root in error messages.
    pub fn new(root_label: impl Into<PathBuf>) -> Self {
        TreeBuilder {
            root_label: root_label.into(),
            entries: Vec::new(),
            open: Vec::new(),
        }
    }

    /// How many directories are entered and not yet left.
    pub fn depth(&self) -> usize {
        self.open.len()
    }

    /// Leaves directories until `depth` are open.
    pub fn leave_to_depth(&mut self, depth: usize) {
        self.open.truncate(depth);
    }

    /// Leaves the innermost open directory.
    pub fn end_directory(&mut self) {
        self.open.pop();
    }

    fn push(&mut self, name: &[u8], kind: Kind) -> EntryId {
        let id = self.entries.len();
        let parent = self.open.last().copied().unwrap_or(NO_PARENT);
        if let Some(Entry {
            kind: Kind::Directory { children },
            ..
        }) = self.entries.get_mut(parent)
        {
            children.push(id);
        }
        self.entries.push(Entry {
            parent,
            name: Bytes::copy_from_slice(name),
            kind,
        });
        id
    }

    /// Adds a directory inside the innermost open one (the root: any name)
    /// and enters it.
    pub fn directory(&mut self, name: &[u8]) -> EntryId {
        let id = self.push(
            name,
            Kind::Directory {
                children: Vec::new(),
            },
        );
        self.open.push(id);
        id
    }

    /// Adds a regular file whose digest comes later through
    /// [`set_digest`](Self::set_digest).
    pub fn file(&mut self, name: &[u8], size: u64, executable: bool) -> EntryId {
        self.push(
            name,
            Kind::File {
                digest: None,
                size,
                executable,
            },
        )
    }

    /// Adds a symlink.
    pub fn symlink(&mut self, name: &[u8], target: &[u8]) -> EntryId {
        self.push(
            name,
            Kind::Symlink {
                target: Bytes::copy_from_slice(target),
            },
        )
    }

    /// Records the digest of a file's stored contents.
    pub fn set_digest(&mut self, id: EntryId, value: B3Digest) {
        if let Some(Entry {
            kind: Kind::File { digest, .. },
            ..
        }) = self.entries.get_mut(id)
        {
            *digest = Some(value);
        }
    }

    /// The entry's path below the root label, for messages.
    pub fn path_of(&self, id: EntryId) -> PathBuf {
        let mut names = Vec::new();
        let mut at = id;
        while let Some(e) = self.entries.get(at) {
            if e.parent == NO_PARENT {
                break;
            }
            names.push(String::from_utf8_lossy(&e.name).into_owned());
            at = e.parent;
        }
        let mut path = self.root_label.clone();
        path.extend(names.iter().rev());
        path
    }

    /// Builds every directory, children first, puts them all through one
    /// putter, and returns the root node. Every file must have its digest.
    pub async fn finish(self, dirs: &dyn DirectoryService) -> Result<Node, ImportError> {
        let rule = dirs.size_rule();
        let mut nodes: Vec<Option<Node>> = vec![None; self.entries.len()];
        let mut putter = dirs.put_multiple_start();
        let mut any_dir = false;
        // Pre-order numbering: walking backwards meets children first.
        for id in (0..self.entries.len()).rev() {
            let e = &self.entries[id];
            let invalid = |source| ImportError::Invalid {
                path: self.path_of(id),
                source,
            };
            let node = match &e.kind {
                Kind::File {
                    digest,
                    size,
                    executable,
                } => Node::File {
                    digest: digest.ok_or_else(|| {
                        Error::Storage(format!(
                            "{}: contents not stored",
                            self.path_of(id).display()
                        ))
                    })?,
                    size: *size,
                    executable: *executable,
                },
                Kind::Symlink { target } => Node::Symlink {
                    target: SymlinkTarget::new(target.clone(), &e.name).map_err(invalid)?,
                },
                Kind::Directory { children } => {
                    let mut dir = Directory::new();
                    for &c in children {
                        let child = &self.entries[c];
                        let name =
                            PathComponent::try_from(child.name.as_ref()).map_err(|source| {
                                ImportError::Invalid {
                                    path: self.path_of(c),
                                    source,
                                }
                            })?;
                        let node = nodes[c].take().ok_or_else(|| {
                            Error::Storage(format!(
                                "{}: child not built",
                                self.path_of(c).display()
                            ))
                        })?;
                        dir.add(name, node).map_err(invalid)?;
                    }
                    let size = dir.size(rule).map_err(invalid)?;
                    let digest = dir.digest();
                    putter.put(dir).await?;
                    any_dir = true;
                    Node::Directory { digest, size }
                }
            };
            nodes[id] = Some(node);
        }
        if any_dir {
            putter.close().await?;
        }
        nodes.into_iter().next().flatten().ok_or_else(|| {
            ImportError::Castore(Error::Storage(format!(
                "{}: nothing imported",
                self.root_label.display()
            )))
        })
    }
}
