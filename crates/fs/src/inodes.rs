//! Inode numbers for the nodes of a mount: one per path below the root,
//! handed out on first lookup (or listing) and stable for the life of the
//! mount, so the kernel's caches and tools comparing inode numbers see a
//! consistent tree. Numbers are never reused; the table grows with the
//! paths visited, not with the store.
//!
//! Directories are not shared between paths even when their contents are
//! (Linux will not let one directory inode have two parents); that also
//! keeps `..` right.

use std::collections::HashMap;
use std::sync::Arc;

use cairn_castore::{Directory, Node};

/// The root of the mount.
pub(crate) const ROOT: u64 = 1;

/// What an inode is.
#[derive(Clone)]
pub(crate) enum Kind {
    /// The mount's root: store paths by name.
    Root,
    /// A node inside a store path (or a store path's root node).
    Node(Node),
}

pub(crate) struct Inode {
    pub(crate) kind: Kind,
    /// The directory's contents, once fetched.
    pub(crate) listing: Option<Arc<Directory>>,
}

#[derive(Default)]
pub(crate) struct Inodes {
    /// Index `ino - 1`.
    table: Vec<Inode>,
    by_name: HashMap<(u64, Vec<u8>), u64>,
}

impl Inodes {
    pub(crate) fn new() -> Self {
        Inodes {
            table: vec![Inode {
                kind: Kind::Root,
                listing: None,
            }],
            by_name: HashMap::new(),
        }
    }

    pub(crate) fn get(&self, ino: u64) -> Option<&Inode> {
        let index = usize::try_from(ino.checked_sub(1)?).ok()?;
        self.table.get(index)
    }

    pub(crate) fn get_mut(&mut self, ino: u64) -> Option<&mut Inode> {
        let index = usize::try_from(ino.checked_sub(1)?).ok()?;
        self.table.get_mut(index)
    }

    /// The inode of `name` in `parent`, made on first sight.
    pub(crate) fn child(&mut self, parent: u64, name: &[u8], node: &Node) -> u64 {
        let key = (parent, name.to_vec());
        if let Some(&ino) = self.by_name.get(&key) {
            return ino;
        }
        self.table.push(Inode {
            kind: Kind::Node(node.clone()),
            listing: None,
        });
        let ino = self.table.len() as u64;
        self.by_name.insert(key, ino);
        ino
    }
}
