//! Inode numbers for the nodes of a mount: one per path below the root,
//! handed out on first lookup (or listing). A number stays the same for
//! as long as the kernel holds the inode, so its caches and tools
//! comparing inode numbers see a consistent tree, and numbers are never
//! reused.
//!
//! The table holds what the kernel holds, not every path ever visited: a
//! `lookup` reply counts one reference and `forget` gives references
//! back. When the kernel forgets a directory it drops that directory's
//! cached listing too, so the entries the listing named (and what lies
//! below them) go, and so does the directory's own cached listing here.
//! A forgotten inode keeps its number while its parent's listing may
//! still be cached by the kernel (`ls -i` and `stat` must agree), and
//! goes with its parent. The root's listing is never cached (it is empty,
//! or taken afresh with `--list-root`), so store paths go when forgotten.
//! A mount that walks a large store for days thus does not grow without
//! bound; a path looked up after it went gets a new number, which no one
//! can have seen.
//!
//! Directories are not shared between paths even when their contents are
//! (Linux will not let one directory inode have two parents); that also
//! keeps `..` right.

use std::collections::{HashMap, HashSet};
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
    /// Where it hangs (the root: 0 and no name).
    parent: u64,
    name: Vec<u8>,
    /// References the kernel holds: one per `lookup` reply, given back by
    /// `forget`.
    lookups: u64,
    /// Inodes in the table whose parent this is.
    children: HashSet<u64>,
}

pub(crate) struct Inodes {
    table: HashMap<u64, Inode>,
    by_name: HashMap<(u64, Vec<u8>), u64>,
    next: u64,
}

impl Inodes {
    pub(crate) fn new() -> Self {
        let root = Inode {
            kind: Kind::Root,
            listing: None,
            parent: 0,
            name: Vec::new(),
            lookups: 0,
            children: HashSet::new(),
        };
        Inodes {
            table: HashMap::from([(ROOT, root)]),
            by_name: HashMap::new(),
            next: ROOT + 1,
        }
    }

    pub(crate) fn get(&self, ino: u64) -> Option<&Inode> {
        self.table.get(&ino)
    }

    pub(crate) fn get_mut(&mut self, ino: u64) -> Option<&mut Inode> {
        self.table.get_mut(&ino)
    }

    /// How many inodes the table holds (the root included).
    pub(crate) fn len(&self) -> usize {
        self.table.len()
    }

    /// The inode of `name` in `parent`, made on first sight, without a
    /// reference (a listing names it; the kernel does not hold it).
    pub(crate) fn child(&mut self, parent: u64, name: &[u8], node: &Node) -> u64 {
        let key = (parent, name.to_vec());
        if let Some(&ino) = self.by_name.get(&key) {
            return ino;
        }
        let ino = self.next;
        self.next += 1;
        self.table.insert(
            ino,
            Inode {
                kind: Kind::Node(node.clone()),
                listing: None,
                parent,
                name: key.1.clone(),
                lookups: 0,
                children: HashSet::new(),
            },
        );
        if let Some(p) = self.table.get_mut(&parent) {
            p.children.insert(ino);
        }
        self.by_name.insert(key, ino);
        ino
    }

    /// The inode of `name` in `parent` for a `lookup` reply: one more
    /// reference the kernel holds.
    pub(crate) fn looked_up(&mut self, parent: u64, name: &[u8], node: &Node) -> u64 {
        let ino = self.child(parent, name, node);
        if let Some(i) = self.table.get_mut(&ino) {
            i.lookups += 1;
        }
        ino
    }

    /// The kernel gives back `count` references to `ino`. Once it holds
    /// none, what only `ino`'s listing named goes, and `ino` itself (then
    /// each ancestor in the same position) once no cached listing can
    /// name it.
    pub(crate) fn forget(&mut self, ino: u64, count: u64) {
        if ino == ROOT {
            return;
        }
        let children: Vec<u64> = match self.table.get_mut(&ino) {
            Some(i) => {
                i.lookups = i.lookups.saturating_sub(count);
                if i.lookups > 0 {
                    return;
                }
                i.listing = None;
                i.children.iter().copied().collect()
            }
            None => return,
        };
        for child in children {
            self.sweep(child);
        }
        let mut at = ino;
        while at != ROOT {
            let Some(node) = self.table.get(&at) else {
                return;
            };
            if node.lookups > 0 || !node.children.is_empty() {
                return;
            }
            // Its number is in the parent's listing while the kernel may
            // cache that: the root's is never cached, a forgotten
            // parent's is gone with it.
            let parent = node.parent;
            let named = parent != ROOT && self.table.get(&parent).is_some_and(|p| p.lookups > 0);
            if named {
                return;
            }
            self.remove(at);
            at = parent;
        }
    }

    /// Removes `ino` and everything below it, where nothing in that part
    /// of the tree is held by the kernel.
    fn sweep(&mut self, ino: u64) {
        // Post-order, without recursion: children before their parent.
        let mut stack = vec![(ino, false)];
        while let Some((i, expanded)) = stack.pop() {
            let Some(node) = self.table.get(&i) else {
                continue;
            };
            if i == ROOT || node.lookups > 0 {
                continue;
            }
            if !expanded {
                stack.push((i, true));
                stack.extend(node.children.iter().map(|&c| (c, false)));
            } else if node.children.is_empty() {
                self.remove(i);
            }
        }
    }

    fn remove(&mut self, ino: u64) {
        let Some(gone) = self.table.remove(&ino) else {
            return;
        };
        self.by_name.remove(&(gone.parent, gone.name));
        if let Some(p) = self.table.get_mut(&gone.parent) {
            p.children.remove(&ino);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_castore::B3Digest;

    fn dir() -> Node {
        Node::Directory {
            digest: B3Digest::of(b"d"),
            size: 0,
        }
    }

    fn file() -> Node {
        Node::File {
            digest: B3Digest::of(b"f"),
            size: 1,
            executable: false,
        }
    }

    #[test]
    fn an_inode_keeps_its_number_while_a_cached_listing_may_show_it() {
        let mut t = Inodes::new();
        let p = t.looked_up(ROOT, b"path", &dir());
        let f = t.looked_up(p, b"file", &file());
        assert_eq!(
            t.looked_up(p, b"file", &file()),
            f,
            "same path, same number"
        );
        t.forget(f, 1);
        assert!(t.get(f).is_some(), "one reference is still held");
        t.forget(f, 1);
        // Forgotten, but `p` is held and its cached listing names `f`.
        assert!(t.get(f).is_some());
        assert_eq!(t.looked_up(p, b"file", &file()), f, "ls -i and stat agree");
        t.forget(f, 1);
        t.forget(p, 1);
        assert_eq!(t.len(), 1, "only the root is left");
        let again = t.looked_up(ROOT, b"path", &dir());
        assert!(again > f, "numbers are never reused");
    }

    #[test]
    fn forgetting_a_directory_drops_what_only_its_listing_named() {
        let mut t = Inodes::new();
        let p = t.looked_up(ROOT, b"path", &dir());
        let listed: Vec<u64> = (0..100)
            .map(|i| t.child(p, format!("f{i}").as_bytes(), &file()))
            .collect();
        assert_eq!(t.len(), 102);
        t.forget(p, 1);
        assert_eq!(t.len(), 1, "only the root is left");
        assert!(listed.iter().all(|&i| t.get(i).is_none()));
    }

    #[test]
    fn a_directory_kept_for_a_held_child_goes_with_that_child() {
        let mut t = Inodes::new();
        let p = t.looked_up(ROOT, b"path", &dir());
        let sub = t.looked_up(p, b"sub", &dir());
        let _listed = t.child(p, b"other", &file());
        let deep = t.looked_up(sub, b"deep", &file());
        // The kernel never forgets a parent before its children, but a
        // table that is told so must not lose the held child.
        t.forget(p, 1);
        t.forget(sub, 1);
        assert!(t.get(deep).is_some() && t.get(sub).is_some() && t.get(p).is_some());
        t.forget(deep, 1);
        assert_eq!(t.len(), 1, "the whole unheld chain went: {}", t.len());
    }
}
