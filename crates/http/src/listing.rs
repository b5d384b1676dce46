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

/// Writes `root` in Nix's key order (`type` first). Iterative, like the
/// NAR layout: a tree thousands of levels deep must not exhaust the
/// stack. `path` is the current node's path below the root, names joined
/// with `/` as the layout records them.
fn node_json(
    out: &mut Vec<u8>,
    root: &Node,
    closure: &HashMap<B3Digest, Directory>,
    offsets: &HashMap<&[u8], u64>,
    path: &mut Vec<u8>,
) {
    /// A directory being written: its entries, the next one, and the
    /// length of `path` before its children's names.
    struct Open<'a> {
        entries: Vec<(&'a [u8], &'a Node)>,
        next: usize,
        path_len: usize,
    }
    let mut stack: Vec<Open<'_>> = Vec::new();
    let mut current = Some(root);
    loop {
        if let Some(node) = current.take() {
            match node {
                Node::File {
                    size, executable, ..
                } => {
                    out.extend_from_slice(
                        format!("{{\"type\":\"regular\",\"size\":{size}").as_bytes(),
                    );
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
                    let entries = closure
                        .get(digest)
                        .map(|d| d.entries().map(|(n, c)| (n.as_bytes(), c)).collect())
                        .unwrap_or_default();
                    stack.push(Open {
                        entries,
                        next: 0,
                        path_len: path.len(),
                    });
                }
            }
        }
        // The next child of the innermost open directory, or close it.
        let Some(open) = stack.last_mut() else { break };
        path.truncate(open.path_len);
        match open.entries.get(open.next) {
            Some(&(name, child)) => {
                if open.next > 0 {
                    out.push(b',');
                }
                open.next += 1;
                string(out, name);
                out.push(b':');
                if !path.is_empty() {
                    path.push(b'/');
                }
                path.extend_from_slice(name);
                current = Some(child);
            }
            None => {
                out.extend_from_slice(b"}}");
                stack.pop();
            }
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
