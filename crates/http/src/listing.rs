//! The `.ls` file a binary cache keeps beside each NAR (what Nix writes
//! with `write-nar-listing=true` and reads for `nix store ls`): the tree
//! as JSON, each regular file with its `narOffset`, computed from the
//! directories and the NAR layout without rendering a byte of the NAR.
//!
//! Written byte for byte as Nix writes it: compact, keys in Nix's order,
//! names and targets as raw bytes (a name need not be UTF-8) with only
//! quotes, backslashes and control characters escaped. A JSON library
//! would insist on valid UTF-8, which store paths do not promise.

use std::collections::HashMap;

use cairn_castore::{B3Digest, Directory, Node};
use cairn_store::render::NarLayout;

/// `{"version":1,"root":…}` for the tree at `root`.
pub(crate) fn listing_json(
    root: &Node,
    closure: &HashMap<B3Digest, Directory>,
    layout: &NarLayout,
) -> Vec<u8> {
    let offsets: HashMap<&[u8], u64> = layout
        .files()
        .iter()
        .map(|f| (f.path.as_slice(), f.offset))
        .collect();
    let mut out = Vec::with_capacity(128 + 96 * offsets.len());
    out.extend_from_slice(b"{\"version\":1,\"root\":");
    let mut path = Vec::new();
    node_json(&mut out, root, closure, &offsets, &mut path);
    out.push(b'}');
    out
}

/// A JSON string of raw bytes, escaped as Nix escapes them.
fn string(out: &mut Vec<u8>, bytes: &[u8]) {
    out.push(b'"');
    for &b in bytes {
        match b {
            b'"' | b'\\' => out.extend_from_slice(&[b'\\', b]),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0..=0x1f => out.extend_from_slice(format!("\\u{b:04x}").as_bytes()),
            _ => out.push(b),
        }
    }
    out.push(b'"');
}

/// One node, in Nix's key order (`type` first); `path` is its path below
/// the root, names joined with `/` as the layout records them. Recursive:
/// one small frame per level of the tree.
fn node_json(
    out: &mut Vec<u8>,
    node: &Node,
    closure: &HashMap<B3Digest, Directory>,
    offsets: &HashMap<&[u8], u64>,
    path: &mut Vec<u8>,
) {
    match node {
        Node::File {
            size, executable, ..
        } => {
            out.extend_from_slice(format!("{{\"type\":\"regular\",\"size\":{size}").as_bytes());
            if *executable {
                out.extend_from_slice(b",\"executable\":true");
            }
            if let Some(offset) = offsets.get(path.as_slice()) {
                out.extend_from_slice(format!(",\"narOffset\":{offset}").as_bytes());
            }
            out.push(b'}');
        }
        Node::Symlink { target } => {
            out.extend_from_slice(b"{\"type\":\"symlink\",\"target\":");
            string(out, target.as_bytes());
            out.push(b'}');
        }
        Node::Directory { digest, .. } => {
            out.extend_from_slice(b"{\"type\":\"directory\",\"entries\":{");
            if let Some(dir) = closure.get(digest) {
                for (i, (name, child)) in dir.entries().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    string(out, name.as_bytes());
                    out.push(b':');
                    let len = path.len();
                    if !path.is_empty() {
                        path.push(b'/');
                    }
                    path.extend_from_slice(name.as_bytes());
                    node_json(out, child, closure, offsets, path);
                    path.truncate(len);
                }
            }
            out.extend_from_slice(b"}}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::string;

    #[test]
    fn strings_are_escaped_as_nix_does() {
        let mut out = Vec::new();
        string(&mut out, b"a\"b\\c\nd\x01\xe9");
        assert_eq!(out, b"\"a\\\"b\\\\c\\nd\\u0001\xe9\"");
    }
}
