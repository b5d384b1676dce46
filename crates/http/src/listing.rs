//! The `.ls` file a binary cache keeps beside each NAR (what Nix writes
//! with `write-nar-listing=true` and reads for `nix store ls`): the tree
//! as JSON, each regular file with its `narOffset`, computed from the
//! directories and the NAR layout without rendering a byte of the NAR.

use std::collections::HashMap;

use cairn_castore::{B3Digest, Directory, Node};
use cairn_store::render::NarLayout;
use serde_json::{json, Map, Value};

/// `{"version":1,"root":…}` for the tree at `root`.
pub(crate) fn listing_json(
    root: &Node,
    closure: &HashMap<B3Digest, Directory>,
    layout: &NarLayout,
) -> Value {
    let offsets: HashMap<&[u8], u64> = layout
        .files()
        .iter()
        .map(|f| (f.path.as_slice(), f.offset))
        .collect();
    let mut path = Vec::new();
    json!({ "version": 1, "root": node_json(root, closure, &offsets, &mut path) })
}

/// One node, in Nix's key order (`type` first); `path` is its path below
/// the root, names joined with `/` as the layout records them. Recursive:
/// one small frame per level of the tree.
fn node_json(
    node: &Node,
    closure: &HashMap<B3Digest, Directory>,
    offsets: &HashMap<&[u8], u64>,
    path: &mut Vec<u8>,
) -> Value {
    let mut out = Map::new();
    match node {
        Node::File {
            size, executable, ..
        } => {
            out.insert("type".into(), "regular".into());
            out.insert("size".into(), (*size).into());
            if *executable {
                out.insert("executable".into(), true.into());
            }
            if let Some(offset) = offsets.get(path.as_slice()) {
                out.insert("narOffset".into(), (*offset).into());
            }
        }
        Node::Symlink { target } => {
            out.insert("type".into(), "symlink".into());
            out.insert(
                "target".into(),
                String::from_utf8_lossy(target.as_bytes())
                    .into_owned()
                    .into(),
            );
        }
        Node::Directory { digest, .. } => {
            out.insert("type".into(), "directory".into());
            let mut entries = Map::new();
            if let Some(dir) = closure.get(digest) {
                for (name, child) in dir.entries() {
                    let len = path.len();
                    if !path.is_empty() {
                        path.push(b'/');
                    }
                    path.extend_from_slice(name.as_bytes());
                    let value = node_json(child, closure, offsets, path);
                    path.truncate(len);
                    entries.insert(String::from_utf8_lossy(name.as_bytes()).into_owned(), value);
                }
            }
            out.insert("entries".into(), Value::Object(entries));
        }
    }
    Value::Object(out)
}
