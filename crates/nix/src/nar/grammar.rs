//! The NAR grammar as a state machine over whole tokens, with no I/O.
//!
//! The I/O layers ask [`Grammar::need`] what to read next, read exactly that
//! (bounded by the limit it names), and feed it back. Events come out when a
//! token completes something a consumer cares about.

use super::{check_order, escape, validate_entry_name, validate_symlink_target, Malformed};
use super::{MAGIC, MAX_NAME_LEN, MAX_TARGET_LEN};

/// Longer than any keyword of the grammar; a longer token is wrong unread.
const MAX_KEYWORD_LEN: usize = 16;

/// One step of a NAR, in archive order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A regular file; its `size` bytes of contents follow and can be read
    /// from the reader before the next event. `offset` is where the contents
    /// start in the NAR (Nix's `narOffset`).
    File {
        /// Whether the executable bit is set.
        executable: bool,
        /// Length of the contents.
        size: u64,
        /// Byte offset of the contents within the NAR.
        offset: u64,
    },
    /// A symbolic link.
    Symlink {
        /// The link target, validated (non-empty, no NUL, ≤ 4095 bytes).
        target: Vec<u8>,
    },
    /// A directory begins; `Entry` events follow until `EndDirectory`.
    Directory,
    /// The next node is the entry `name` of the current directory.
    Entry {
        /// The entry name, validated and in sorted order.
        name: Vec<u8>,
    },
    /// The current directory is complete.
    EndDirectory,
}

/// What the I/O layer must read next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Need {
    /// A length-prefixed, padded string of at most `max` bytes.
    Token { max: usize },
    /// A file's length, then that many content bytes, then padding.
    Contents,
    /// Nothing more: the next read must hit end of input.
    End,
}

#[derive(Debug)]
enum State {
    Magic,
    NodeOpen,
    Type,
    TypeValue,
    RegularAttr,
    ExecutableEmpty,
    ContentsKeyword,
    Contents { executable: bool },
    TargetKeyword,
    Target,
    NodeClose,
    DirItem,
    EntryOpen,
    NameKeyword,
    Name,
    NodeKeyword { name: Vec<u8> },
    EntryClose,
    Done,
}

/// The parser state: where in the grammar we are and, per open directory,
/// the last entry name (to enforce strict ordering).
#[derive(Debug)]
pub(crate) struct Grammar {
    state: State,
    open_dirs: Vec<Vec<u8>>,
}

impl Grammar {
    pub(crate) fn new() -> Self {
        Grammar {
            state: State::Magic,
            open_dirs: Vec::new(),
        }
    }

    pub(crate) fn need(&self) -> Need {
        match self.state {
            State::Contents { .. } => Need::Contents,
            State::Done => Need::End,
            State::Name => Need::Token { max: MAX_NAME_LEN },
            State::Target => Need::Token {
                max: MAX_TARGET_LEN,
            },
            _ => Need::Token {
                max: MAX_KEYWORD_LEN,
            },
        }
    }

    fn expected(&self) -> &'static str {
        match self.state {
            State::Magic => "\"nix-archive-1\"",
            State::NodeOpen | State::EntryOpen => "\"(\"",
            State::Type => "\"type\"",
            State::TypeValue => "\"regular\", \"symlink\" or \"directory\"",
            State::RegularAttr => "\"executable\" or \"contents\"",
            State::ExecutableEmpty => "\"\" after \"executable\"",
            State::ContentsKeyword => "\"contents\"",
            State::Contents { .. } => "file contents",
            State::TargetKeyword => "\"target\"",
            State::Target => "a symlink target",
            State::NodeClose | State::EntryClose => "\")\"",
            State::DirItem => "\"entry\" or \")\"",
            State::NameKeyword => "\"name\"",
            State::Name => "an entry name",
            State::NodeKeyword { .. } => "\"node\"",
            State::Done => "the end of the archive",
        }
    }

    /// The error for a token whose declared length exceeds `need().max`.
    pub(crate) fn too_long(&self, len: u64) -> Malformed {
        match self.state {
            State::Magic => Malformed::BadMagic,
            State::Name => Malformed::TooLong {
                what: "entry name",
                len,
                max: MAX_NAME_LEN,
            },
            State::Target => Malformed::TooLong {
                what: "symlink target",
                len,
                max: MAX_TARGET_LEN,
            },
            _ => Malformed::UnexpectedToken {
                expected: self.expected(),
                found: format!("a string of {len} bytes"),
            },
        }
    }

    fn unexpected(&self, token: &[u8]) -> Malformed {
        if matches!(self.state, State::Magic) {
            return Malformed::BadMagic;
        }
        unexpected_token(self.expected(), token)
    }

    /// After a node's closing parenthesis: back to the enclosing entry, or done.
    fn node_done(&mut self) {
        self.state = if self.open_dirs.is_empty() {
            State::Done
        } else {
            State::EntryClose
        };
    }

    /// Feeds one token; returns the event it completes, if any.
    pub(crate) fn token(&mut self, token: &[u8]) -> Result<Option<Event>, Malformed> {
        let keyword = |want: &[u8], next: State, this: &Self| {
            if token == want {
                Ok(next)
            } else {
                Err(this.unexpected(token))
            }
        };
        let mut event = None;
        self.state = match &mut self.state {
            State::Magic => keyword(MAGIC, State::NodeOpen, self)?,
            State::NodeOpen => keyword(b"(", State::Type, self)?,
            State::Type => keyword(b"type", State::TypeValue, self)?,
            State::TypeValue => match token {
                b"regular" => State::RegularAttr,
                b"symlink" => State::TargetKeyword,
                b"directory" => {
                    self.open_dirs.push(Vec::new());
                    event = Some(Event::Directory);
                    State::DirItem
                }
                _ => return Err(self.unexpected(token)),
            },
            State::RegularAttr => match token {
                b"executable" => State::ExecutableEmpty,
                b"contents" => State::Contents { executable: false },
                _ => return Err(self.unexpected(token)),
            },
            State::ExecutableEmpty => keyword(b"", State::ContentsKeyword, self)?,
            State::ContentsKeyword => {
                keyword(b"contents", State::Contents { executable: true }, self)?
            }
            State::TargetKeyword => keyword(b"target", State::Target, self)?,
            State::Target => {
                validate_symlink_target(token)?;
                event = Some(Event::Symlink {
                    target: token.to_vec(),
                });
                State::NodeClose
            }
            State::NodeClose => {
                keyword(b")", State::Done, self)?;
                self.node_done();
                return Ok(None);
            }
            State::DirItem => match token {
                b"entry" => State::EntryOpen,
                b")" => {
                    self.open_dirs.pop();
                    self.node_done();
                    return Ok(Some(Event::EndDirectory));
                }
                _ => return Err(self.unexpected(token)),
            },
            State::EntryOpen => keyword(b"(", State::NameKeyword, self)?,
            State::NameKeyword => keyword(b"name", State::Name, self)?,
            State::Name => {
                validate_entry_name(token)?;
                let last = self.open_dirs.last_mut().ok_or(Malformed::AfterError)?;
                if !last.is_empty() {
                    check_order(last, token)?;
                }
                last.clear();
                last.extend_from_slice(token);
                State::NodeKeyword {
                    name: token.to_vec(),
                }
            }
            State::NodeKeyword { name } => {
                if token != b"node" {
                    return Err(unexpected_token("\"node\"", token));
                }
                event = Some(Event::Entry {
                    name: std::mem::take(name),
                });
                State::NodeOpen
            }
            State::EntryClose => keyword(b")", State::DirItem, self)?,
            State::Contents { .. } | State::Done => return Err(self.unexpected(token)),
        };
        Ok(event)
    }

    /// The length of a file's contents was read (`need()` was `Contents`).
    pub(crate) fn contents(&mut self, size: u64, offset: u64) -> Event {
        let executable = matches!(self.state, State::Contents { executable: true });
        self.state = State::NodeClose;
        Event::File {
            executable,
            size,
            offset,
        }
    }
}

fn unexpected_token(expected: &'static str, token: &[u8]) -> Malformed {
    Malformed::UnexpectedToken {
        expected,
        found: format!("\"{}\"", escape(token)),
    }
}
