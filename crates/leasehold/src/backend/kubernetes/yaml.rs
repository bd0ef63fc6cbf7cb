//! The YAML that kubeconfig files are written in, read into a tree and deserialized with serde.
//!
//! Why our own: kube-rs reads kubeconfigs with a general YAML deserializer, and serde
//! monomorphises it over every kubeconfig type. That is 0.6 MB of the sidecar's 5 MB binary,
//! and the sidecar's resident memory is mostly its binary (the kernel maps file pages around
//! every fault), all to read a few kilobytes once at start. This reader is a tree builder plus
//! one small `Deserializer` over the tree.
//!
//! It reads what kubectl, cloud CLIs and people write: block mappings and sequences (indented or
//! not under their key), compact `- key: value` items, flow `{}` / `[]` collections, plain,
//! single- and double-quoted scalars over several lines, literal and folded block scalars
//! (`|`, `>`, chomping and indentation indicators), comments, and several documents separated by
//! `---`, and anchors (`&name`), aliases (`*name`) and merge keys (`<<: *name`, `<<: [*a, *b]`),
//! which hand-kept kubeconfigs use to share settings and which kubectl accepts. Tags and complex
//! keys are refused with an error naming the line and column, never guessed at; so are
//! duplicate keys, tabs used for indentation, an alias to no anchor, and aliases that would
//! expand to more than [`MAX_EXPANDED`] nodes (a "billion laughs").
//!
//! Scalars are typed by what they are read into, as Go's kubeconfig loader does: `name: 123`
//! reads into a string as `"123"`; `true` reads into a bool; into a free-form value
//! (`extensions`) plain scalars resolve by YAML 1.2's core schema.

use std::collections::{HashMap, HashSet};
use std::fmt;

use serde::de::{self, IntoDeserializer as _, Visitor};

/// Nesting deeper than this is refused, so that hostile input cannot exhaust the stack.
const MAX_DEPTH: usize = 64;

/// The most nodes that aliases may copy in one file, so that nested aliases cannot make a few
/// lines expand into gigabytes.
pub(crate) const MAX_EXPANDED: usize = 100_000;

/// A YAML node with the line (1-based) where it starts.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Node {
    pub(crate) kind: Kind,
    pub(crate) line: usize,
}

/// What a node is.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Kind {
    /// An empty value, `~` or `null` are plain scalars and resolve later.
    Null,
    /// A scalar's text; `plain` when it was not quoted and not a block scalar.
    Scalar {
        value: String,
        plain: bool,
    },
    Seq(Vec<Node>),
    Map(Vec<(String, Node)>),
}

/// Why a kubeconfig's YAML could not be read or did not fit the kubeconfig types.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct YamlError {
    /// 1-based line, 0 when unknown.
    pub line: usize,
    /// 1-based column, 0 when unknown.
    pub column: usize,
    /// What is wrong.
    pub message: String,
}

impl YamlError {
    fn at(mut self, line: usize) -> Self {
        if self.line == 0 {
            self.line = line;
        }
        self
    }
}

impl fmt::Display for YamlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.column) {
            (0, _) => f.write_str(&self.message),
            (l, 0) => write!(f, "line {l}: {}", self.message),
            (l, c) => write!(f, "line {l}, column {c}: {}", self.message),
        }
    }
}

impl std::error::Error for YamlError {}

impl de::Error for YamlError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        YamlError {
            line: 0,
            column: 0,
            message: msg.to_string(),
        }
    }
}

type Result<T> = std::result::Result<T, YamlError>;

/// Reads every document of `text` (empty documents are skipped).
pub(crate) fn parse(text: &str) -> Result<Vec<Node>> {
    // One parser for every document: the split below reads only what parsing never rewrites
    // (`begin`, `end`, `blank`).
    let mut p = Parser {
        src: text,
        lines: split_lines(text),
        i: 0,
        end: 0,
        depth: 0,
        anchors: HashMap::new(),
        expanded: 0,
    };
    let mut docs = Vec::new();
    let mut start = 0;
    let mut in_doc = true;
    for i in 0..p.lines.len() {
        let l = p.lines[i];
        let raw = &text[l.begin..l.end];
        let marker = |m: &str| {
            raw.strip_prefix(m)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t']))
        };
        if marker("---") || marker("...") {
            if in_doc {
                docs.extend(p.document(start, i)?);
            }
            in_doc = raw.starts_with('-');
            let rest = raw[3..].trim_start_matches([' ', '\t']);
            if in_doc && !rest.is_empty() && !rest.starts_with('#') {
                return Err(p.err(l.begin + 3, "content on the `---` line"));
            }
            start = i + 1;
        } else if raw.starts_with('%') && p.lines[start..i].iter().all(|l| l.blank) {
            // A directive (`%YAML 1.2`): it precedes a `---` and changes nothing here.
            start = i + 1;
        } else if !in_doc && !l.blank {
            // Content after `...` without a `---`: YAML reads it as a new document.
            start = i;
            in_doc = true;
        }
    }
    if in_doc {
        docs.extend(p.document(start, p.lines.len())?);
    }
    Ok(docs)
}

/// One line of the source: byte offsets of its start, its content (after the leading spaces)
/// and its end (before `\n` or `\r\n`).
#[derive(Clone, Copy, Debug)]
struct Line {
    begin: usize,
    start: usize,
    end: usize,
    /// Leading spaces, or the column of the content after a `- ` that the parser consumed.
    indent: usize,
    /// Only white space or a comment.
    blank: bool,
}

fn split_lines(text: &str) -> Vec<Line> {
    let mut lines = Vec::new();
    let mut begin = 0;
    let bytes = text.as_bytes();
    while begin < bytes.len() || (begin == 0 && bytes.is_empty()) {
        let mut end = text[begin..].find('\n').map_or(bytes.len(), |n| begin + n);
        let next = if end < bytes.len() { end + 1 } else { end };
        if end > begin && bytes[end - 1] == b'\r' {
            end -= 1;
        }
        let indent = bytes[begin..end].iter().take_while(|&&b| b == b' ').count();
        let start = begin + indent;
        let rest = text[start..end].trim_start_matches([' ', '\t']);
        lines.push(Line {
            begin,
            start,
            end,
            indent,
            blank: rest.is_empty() || rest.starts_with('#'),
        });
        if next == begin {
            break;
        }
        begin = next;
    }
    lines
}

fn position(text: &str, lines: &[Line], at: usize) -> (usize, usize) {
    let i = lines.partition_point(|l| l.begin <= at).saturating_sub(1);
    let begin = lines.get(i).map_or(0, |l| l.begin);
    let column = text
        .get(begin..at.min(text.len()))
        .map_or(1, |s| s.chars().count() + 1);
    (i + 1, column)
}

fn error_at(text: &str, lines: &[Line], at: usize, message: impl Into<String>) -> YamlError {
    let (line, column) = position(text, lines, at);
    YamlError {
        line,
        column,
        message: message.into(),
    }
}

struct Parser<'a> {
    src: &'a str,
    lines: Vec<Line>,
    /// The current line.
    i: usize,
    /// One past the document's last line.
    end: usize,
    depth: usize,
    /// The anchors defined so far in the current document.
    anchors: HashMap<String, Node>,
    /// Nodes copied by aliases so far (see [`MAX_EXPANDED`]).
    expanded: usize,
}

impl<'a> Parser<'a> {
    fn err(&self, at: usize, message: impl Into<String>) -> YamlError {
        error_at(self.src, &self.lines, at, message)
    }

    fn line_no(&self, at: usize) -> usize {
        position(self.src, &self.lines, at).0
    }

    /// The document on lines `from..to`, if it has any content.
    fn document(&mut self, from: usize, to: usize) -> Result<Option<Node>> {
        (self.i, self.end, self.depth) = (from, to, 0);
        // Anchors are local to their document.
        self.anchors.clear();
        self.skip_blank();
        if self.i >= self.end {
            return Ok(None);
        }
        let node = self.node(-1)?;
        self.skip_blank();
        if self.i < self.end {
            let l = self.lines[self.i];
            return Err(self.err(
                l.start,
                "unexpected content here: check the indentation of this line and the one above",
            ));
        }
        Ok(Some(node))
    }

    fn skip_blank(&mut self) {
        while self.i < self.end && self.lines[self.i].blank {
            self.i += 1;
        }
    }

    fn content(&self, l: &Line) -> &'a str {
        &self.src[l.start..l.end]
    }

    /// YAML indents with spaces only; a tab where structure is read is an error, not a guess.
    fn no_tab(&self, l: &Line) -> Result<()> {
        if self.content(l).starts_with('\t') {
            return Err(self.err(
                l.start,
                "tab character in indentation (YAML allows spaces only)",
            ));
        }
        Ok(())
    }

    fn enter(&mut self, at: usize) -> Result<()> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.err(at, format!("nested more than {MAX_DEPTH} levels deep")));
        }
        Ok(())
    }

    /// The node that starts on the next non-blank line, if that line is indented more than
    /// `parent`; else an empty node.
    fn node(&mut self, parent: isize) -> Result<Node> {
        self.skip_blank();
        let line = self.lines.get(self.i).copied();
        let Some(l) = line.filter(|l| self.i < self.end && l.indent as isize > parent) else {
            let at = self.lines.get(self.i.min(self.end).saturating_sub(1));
            return Ok(Node {
                kind: Kind::Null,
                line: at.map_or(1, |l| self.line_no(l.start)),
            });
        };
        self.no_tab(&l)?;
        let text = self.content(&l);
        self.enter(l.start)?;
        let node = if is_dash(text) {
            self.seq(l.indent)
        } else if self.key(&l)?.is_some() {
            self.map(l.indent)
        } else {
            self.inline(l.start, parent)
        };
        self.depth -= 1;
        node
    }

    /// The next line of a block collection at indentation `n`: a `- ` item when `dash`, else a
    /// `key: value` entry. `None` where the collection ends.
    fn next_entry(&mut self, n: usize, dash: bool) -> Result<Option<Line>> {
        self.skip_blank();
        let Some(&l) = self.lines.get(self.i).filter(|_| self.i < self.end) else {
            return Ok(None);
        };
        self.no_tab(&l)?;
        Ok((l.indent == n && is_dash(self.content(&l)) == dash).then_some(l))
    }

    fn seq(&mut self, n: usize) -> Result<Node> {
        let first = self.lines[self.i].start;
        let mut items = Vec::new();
        while let Some(l) = self.next_entry(n, true)? {
            let after = l.start + 1;
            let rest = &self.src[after..l.end];
            let skipped = rest.len() - rest.trim_start_matches([' ', '\t']).len();
            let c = after + skipped;
            let rest = &self.src[c..l.end];
            if rest.is_empty() || rest.starts_with('#') {
                self.i += 1;
                items.push(self.node(n as isize)?);
            } else {
                // The item starts on the dash's line: read that line as if it began at the
                // item's column, so a compact `- key: value` mapping continues on the lines
                // below at that column.
                self.lines[self.i].start = c;
                self.lines[self.i].indent = self.src[l.begin..c].chars().count();
                items.push(self.node(n as isize)?);
            }
        }
        Ok(Node {
            kind: Kind::Seq(items),
            line: self.line_no(first),
        })
    }

    /// `Some((key, offset after the colon))` when line `l` is a `key: value` entry.
    fn key(&self, l: &Line) -> Result<Option<(String, usize)>> {
        let text = self.content(l);
        let at = l.start;
        match text.as_bytes().first() {
            Some(b'"' | b'\'') => {
                let (key, end) = self.quoted(at)?;
                if self.line_no(end) != self.line_no(at) {
                    return Ok(None);
                }
                let rest = &self.src[end..l.end];
                let colon = end + (rest.len() - rest.trim_start_matches([' ', '\t']).len());
                let rest = &self.src[colon..l.end];
                if rest.starts_with(':') && is_sep(&rest[1..]) {
                    return Ok(Some((key, colon + 1)));
                }
                Ok(None)
            }
            Some(b'?') if is_sep(&text[1..]) => {
                Err(self.err(at, "complex keys (`? `) are not supported"))
            }
            // An anchored or aliased value, read by `inline`.
            Some(b'{' | b'[' | b'&' | b'*') => Ok(None),
            Some(b'!') => Err(self.unsupported_indicator(at)),
            _ => {
                let bytes = text.as_bytes();
                for (k, &b) in bytes.iter().enumerate() {
                    if b == b':' && is_sep(&text[k + 1..]) {
                        let key = text[..k].trim_end_matches([' ', '\t']);
                        return Ok(Some((key.to_owned(), at + k + 1)));
                    }
                    if b == b'#' && k > 0 && matches!(bytes[k - 1], b' ' | b'\t') {
                        break;
                    }
                }
                Ok(None)
            }
        }
    }

    fn unsupported_indicator(&self, at: usize) -> YamlError {
        self.err(at, "tags (`!`) are not supported in kubeconfig files")
    }

    /// The name of the anchor or alias whose `&` or `*` is at `at`, and the offset after it.
    fn anchor_name(&self, at: usize) -> Result<(String, usize)> {
        let text = &self.src[at + 1..];
        let len = text
            .find([' ', '\t', '\r', '\n', ',', '[', ']', '{', '}'])
            .unwrap_or(text.len());
        if len == 0 {
            return Err(self.err(at, "an anchor or alias needs a name"));
        }
        Ok((text[..len].to_owned(), at + 1 + len))
    }

    /// A copy of the node anchored as `name`, for the alias at `at`.
    fn alias(&mut self, name: &str, at: usize) -> Result<Node> {
        fn size(n: &Node) -> usize {
            1 + match &n.kind {
                Kind::Seq(items) => items.iter().map(size).sum(),
                Kind::Map(entries) => entries.iter().map(|(_, v)| size(v)).sum(),
                _ => 0,
            }
        }
        let Some(node) = self.anchors.get(name) else {
            return Err(self.err(
                at,
                format!("alias `*{name}` names no anchor defined before it"),
            ));
        };
        self.expanded += size(node);
        if self.expanded > MAX_EXPANDED {
            return Err(self.err(
                at,
                format!("aliases expand to more than {MAX_EXPANDED} nodes"),
            ));
        }
        let mut node = node.clone();
        node.line = self.line_no(at);
        Ok(node)
    }

    /// Merges the mappings of a `<<` value into `entries`, after the mapping's own keys: a key
    /// of the mapping itself wins, and among merged mappings the first to have a key wins.
    fn merge(&self, at: usize, value: Node, merges: &mut Vec<(String, Node)>) -> Result<()> {
        match value.kind {
            Kind::Map(entries) => merges.extend(entries),
            Kind::Seq(items) => {
                for item in items {
                    match item.kind {
                        Kind::Map(entries) => merges.extend(entries),
                        _ => return Err(self.err(at, "`<<` takes a mapping or a list of mappings")),
                    }
                }
            }
            _ => return Err(self.err(at, "`<<` takes a mapping or a list of mappings")),
        }
        Ok(())
    }

    fn map(&mut self, n: usize) -> Result<Node> {
        let first = self.lines[self.i].start;
        let mut entries: Vec<(String, Node)> = Vec::new();
        let mut merges: Vec<(String, Node)> = Vec::new();
        // A set, not a scan of `entries`: a file with many keys must not take quadratic time.
        let mut seen = HashSet::new();
        while let Some(l) = self.next_entry(n, false)? {
            let Some((key, colon)) = self.key(&l)? else {
                return Err(self.err(l.start, "expected `key: value` at this indentation"));
            };
            if !seen.insert(key.clone()) {
                return Err(self.err(l.start, format!("duplicate key `{key}`")));
            }
            let rest = &self.src[colon..l.end];
            let v = colon + (rest.len() - rest.trim_start_matches([' ', '\t']).len());
            let rest = &self.src[v..l.end];
            let value = if rest.is_empty() || rest.starts_with('#') {
                self.i += 1;
                self.skip_blank();
                match self.lines.get(self.i) {
                    Some(next)
                        if self.i < self.end && next.indent == n && is_dash(self.content(next)) =>
                    {
                        self.seq(n)?
                    }
                    _ => self.node(n as isize)?,
                }
            } else {
                self.inline(v, n as isize)?
            };
            if key == "<<" {
                self.merge(l.start, value, &mut merges)?;
            } else {
                entries.push((key, value));
            }
        }
        for (key, value) in merges {
            if seen.insert(key.clone()) {
                entries.push((key, value));
            }
        }
        Ok(Node {
            kind: Kind::Map(entries),
            line: self.line_no(first),
        })
    }

    /// A value that starts at `at`, in the middle of line `self.i`: a scalar, a flow collection
    /// or a block scalar. Continuation lines must be indented more than `parent`.
    fn inline(&mut self, at: usize, parent: isize) -> Result<Node> {
        let line = self.line_no(at);
        let first = self.src.as_bytes().get(at).copied();
        let node = match first {
            Some(b'"' | b'\'') => {
                let (value, end) = self.quoted(at)?;
                self.end_of_value(end)?;
                Kind::Scalar {
                    value,
                    plain: false,
                }
            }
            Some(b'[' | b'{') => {
                let (node, end) = self.flow(at)?;
                self.end_of_value(end)?;
                return Ok(node);
            }
            Some(b'|' | b'>') => Kind::Scalar {
                value: self.block_scalar(at, parent)?,
                plain: false,
            },
            Some(b'&') => {
                let (name, after) = self.anchor_name(at)?;
                let l = self.lines[self.i];
                let rest = &self.src[after..l.end];
                let v = after + (rest.len() - rest.trim_start_matches([' ', '\t']).len());
                let rest = &self.src[v..l.end];
                let node = if rest.is_empty() || rest.starts_with('#') {
                    // The anchored node is the block below (a sequence may sit at its key's
                    // indentation, as in `map`).
                    self.i += 1;
                    self.skip_blank();
                    match self.lines.get(self.i) {
                        Some(next)
                            if self.i < self.end
                                && parent >= 0
                                && next.indent == parent as usize
                                && is_dash(self.content(next)) =>
                        {
                            self.seq(parent as usize)?
                        }
                        _ => self.node(parent)?,
                    }
                } else {
                    self.inline(v, parent)?
                };
                self.anchors.insert(name, node.clone());
                return Ok(node);
            }
            Some(b'*') => {
                let (name, after) = self.anchor_name(at)?;
                let node = self.alias(&name, at)?;
                self.end_of_value(after)?;
                return Ok(node);
            }
            Some(b'!') => return Err(self.unsupported_indicator(at)),
            Some(b'@' | b'`' | b'%') => {
                return Err(self.err(
                    at,
                    "a plain value cannot start with `@`, `` ` `` or `%`: quote it",
                ));
            }
            Some(b'-') if is_sep(&self.src[at + 1..self.lines[self.i].end]) => {
                return Err(self.err(at, "a sequence cannot start on its key's line"));
            }
            _ => Kind::Scalar {
                value: self.plain(at, parent)?,
                plain: true,
            },
        };
        Ok(Node { kind: node, line })
    }

    /// After a quoted scalar or a flow collection ending at `end`: nothing but a comment may
    /// follow on its line. Moves to the next line.
    fn end_of_value(&mut self, end: usize) -> Result<()> {
        let i = self
            .lines
            .partition_point(|l| l.begin <= end)
            .saturating_sub(1);
        let l = self.lines[i];
        let rest = self.src[end..l.end].trim_start_matches([' ', '\t']);
        if !rest.is_empty() && !rest.starts_with('#') {
            let at = l.end - rest.len();
            return Err(self.err(at, "unexpected text after the value"));
        }
        self.i = i + 1;
        Ok(())
    }

    fn plain(&mut self, at: usize, parent: isize) -> Result<String> {
        let l = self.lines[self.i];
        let mut out = self.plain_line(at, l.end)?.to_owned();
        self.i += 1;
        let mut empty = 0;
        while self.i < self.end {
            let next = self.lines[self.i];
            let text = self.content(&next);
            let trimmed = text.trim_start_matches([' ', '\t']);
            if trimmed.is_empty() {
                empty += 1;
                self.i += 1;
                continue;
            }
            if trimmed.starts_with('#') || next.indent as isize <= parent {
                break;
            }
            let start = next.end - trimmed.len();
            let part = self.plain_line(start, next.end)?;
            if empty == 0 {
                out.push(' ');
            } else {
                out.extend(std::iter::repeat_n('\n', empty));
            }
            out.push_str(part);
            empty = 0;
            self.i += 1;
        }
        Ok(out)
    }

    /// One line's part of a plain scalar: up to a comment, without trailing white space.
    fn plain_line(&self, at: usize, end: usize) -> Result<&'a str> {
        let text = &self.src[at..end];
        let bytes = text.as_bytes();
        let mut cut = text.len();
        for (k, &b) in bytes.iter().enumerate() {
            if b == b'#' && k > 0 && matches!(bytes[k - 1], b' ' | b'\t') {
                cut = k;
                break;
            }
            if b == b':' && is_sep(&text[k + 1..]) {
                return Err(self.err(
                    at + k,
                    "`: ` inside a plain value: quote the value, or check the indentation",
                ));
            }
        }
        Ok(text[..cut].trim_end_matches([' ', '\t']))
    }

    /// A quoted scalar starting at `at` (on its quote); returns it and the offset after the
    /// closing quote. It may span lines: a line break folds to a space, empty lines to `\n`.
    fn quoted(&self, at: usize) -> Result<(String, usize)> {
        let quote = self.src.as_bytes()[at];
        let mut out = String::new();
        let mut p = at + 1;
        let src = self.src;
        let limit = self
            .lines
            .get(self.end.saturating_sub(1))
            .map_or(src.len(), |l| l.end);
        loop {
            let Some(c) = src.get(p..limit).and_then(|s| s.chars().next()) else {
                return Err(self.err(at, "unterminated quoted string"));
            };
            match c {
                '\'' if quote == b'\'' => {
                    if src[p + 1..].starts_with('\'') {
                        out.push('\'');
                        p += 2;
                    } else {
                        return Ok((out, p + 1));
                    }
                }
                '"' if quote == b'"' => return Ok((out, p + 1)),
                '\\' if quote == b'"' => {
                    let Some(e) = src[p + 1..limit].chars().next() else {
                        return Err(self.err(at, "unterminated quoted string"));
                    };
                    p += 1 + e.len_utf8();
                    let simple = match e {
                        '0' => Some('\0'),
                        'a' => Some('\x07'),
                        'b' => Some('\x08'),
                        't' | '\t' => Some('\t'),
                        'n' => Some('\n'),
                        'v' => Some('\x0b'),
                        'f' => Some('\x0c'),
                        'r' => Some('\r'),
                        'e' => Some('\x1b'),
                        ' ' => Some(' '),
                        '"' => Some('"'),
                        '/' => Some('/'),
                        '\\' => Some('\\'),
                        'N' => Some('\u{85}'),
                        '_' => Some('\u{a0}'),
                        'L' => Some('\u{2028}'),
                        'P' => Some('\u{2029}'),
                        _ => None,
                    };
                    if let Some(s) = simple {
                        out.push(s);
                        continue;
                    }
                    let digits = match e {
                        'x' => 2,
                        'u' => 4,
                        'U' => 8,
                        '\n' | '\r' => {
                            // An escaped line break joins the lines without a space.
                            if e == '\r' && src[p..].starts_with('\n') {
                                p += 1;
                            }
                            p += src[p..].len() - src[p..].trim_start_matches([' ', '\t']).len();
                            continue;
                        }
                        _ => {
                            return Err(
                                self.err(p - e.len_utf8() - 1, format!("unknown escape `\\{e}`"))
                            );
                        }
                    };
                    let hex = src
                        .get(p..p + digits)
                        .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()));
                    let ch = hex
                        .and_then(|h| u32::from_str_radix(h, 16).ok())
                        .and_then(char::from_u32)
                        .ok_or_else(|| self.err(p - 2, format!("invalid `\\{e}` escape")))?;
                    out.push(ch);
                    p += digits;
                }
                '\r' | '\n' => {
                    // Folding: white space around the break goes; one break is a space, each
                    // further empty line a `\n`.
                    let keep = out.trim_end_matches([' ', '\t']).len();
                    out.truncate(keep);
                    let mut breaks = 0;
                    loop {
                        if src[p..].starts_with("\r\n") {
                            p += 2;
                        } else if src[p..].starts_with('\n') || src[p..].starts_with('\r') {
                            p += 1;
                        } else {
                            break;
                        }
                        breaks += 1;
                        p += src[p..].len() - src[p..].trim_start_matches([' ', '\t']).len();
                    }
                    if breaks == 1 {
                        out.push(' ');
                    } else {
                        out.extend(std::iter::repeat_n('\n', breaks - 1));
                    }
                }
                c => {
                    out.push(c);
                    p += c.len_utf8();
                }
            }
        }
    }

    /// A flow collection (`[...]` or `{...}`) starting at `at`; it may span lines.
    fn flow(&mut self, at: usize) -> Result<(Node, usize)> {
        self.enter(at)?;
        let line = self.line_no(at);
        let open = self.src.as_bytes()[at];
        let close = if open == b'[' { b']' } else { b'}' };
        let mut p = at + 1;
        let mut items = Vec::new();
        let mut entries: Vec<(String, Node)> = Vec::new();
        let mut seen = HashSet::new();
        loop {
            p = self.flow_space(p);
            match self.src.as_bytes().get(p) {
                None => return Err(self.err(at, "unterminated flow collection")),
                Some(&b) if b == close => {
                    p += 1;
                    break;
                }
                _ => {}
            }
            let (node, after) = self.flow_node(p)?;
            p = self.flow_space(after);
            if open == b'{' {
                let key = match node.kind {
                    Kind::Scalar { value, .. } => value,
                    Kind::Null => String::new(),
                    _ => return Err(self.err(at, "a key must be a scalar")),
                };
                let value = if self.src[p..].starts_with(':') {
                    p = self.flow_space(p + 1);
                    if matches!(self.src.as_bytes().get(p), Some(b',' | b'}')) {
                        Node {
                            kind: Kind::Null,
                            line: self.line_no(p),
                        }
                    } else {
                        let (v, after) = self.flow_node(p)?;
                        p = self.flow_space(after);
                        v
                    }
                } else {
                    Node {
                        kind: Kind::Null,
                        line: self.line_no(p),
                    }
                };
                if !seen.insert(key.clone()) {
                    return Err(self.err(at, format!("duplicate key `{key}`")));
                }
                entries.push((key, value));
            } else {
                if self.src[p..].starts_with(':') {
                    return Err(self.err(p, "`key: value` pairs inside `[ ]` are not supported"));
                }
                items.push(node);
            }
            match self.src.as_bytes().get(p) {
                Some(b',') => p += 1,
                Some(&b) if b == close => {
                    p += 1;
                    break;
                }
                None => return Err(self.err(at, "unterminated flow collection")),
                _ => {
                    let want = if open == b'[' {
                        "`,` or `]`"
                    } else {
                        "`,` or `}`"
                    };
                    return Err(self.err(p, format!("expected {want}")));
                }
            }
        }
        self.depth -= 1;
        let kind = if open == b'[' {
            Kind::Seq(items)
        } else {
            Kind::Map(entries)
        };
        Ok((Node { kind, line }, p))
    }

    /// Skips white space, line breaks and comments inside a flow collection.
    fn flow_space(&self, mut p: usize) -> usize {
        let bytes = self.src.as_bytes();
        while let Some(&b) = bytes.get(p) {
            match b {
                b' ' | b'\t' | b'\r' | b'\n' => p += 1,
                b'#' => p += self.src[p..].find('\n').unwrap_or(self.src.len() - p),
                _ => break,
            }
        }
        p
    }

    fn flow_node(&mut self, at: usize) -> Result<(Node, usize)> {
        let line = self.line_no(at);
        match self.src.as_bytes().get(at) {
            Some(b'[' | b'{') => self.flow(at),
            Some(b'"' | b'\'') => {
                let (value, end) = self.quoted(at)?;
                Ok((
                    Node {
                        kind: Kind::Scalar {
                            value,
                            plain: false,
                        },
                        line,
                    },
                    end,
                ))
            }
            Some(b'&') => {
                let (name, after) = self.anchor_name(at)?;
                let (node, end) = self.flow_node(self.flow_space(after))?;
                self.anchors.insert(name, node.clone());
                Ok((node, end))
            }
            Some(b'*') => {
                let (name, after) = self.anchor_name(at)?;
                Ok((self.alias(&name, at)?, after))
            }
            Some(b'!') => Err(self.unsupported_indicator(at)),
            Some(b',' | b']' | b'}') => Err(self.err(at, "missing value")),
            _ => {
                let text = &self.src[at..];
                let bytes = text.as_bytes();
                let mut end = text.len();
                for (k, &b) in bytes.iter().enumerate() {
                    let stop = match b {
                        b',' | b'[' | b']' | b'{' | b'}' | b'\n' | b'\r' => true,
                        b':' => matches!(
                            bytes.get(k + 1),
                            None | Some(b' ' | b'\t' | b'\r' | b'\n' | b',' | b']' | b'}')
                        ),
                        b'#' => k > 0 && matches!(bytes[k - 1], b' ' | b'\t'),
                        _ => false,
                    };
                    if stop {
                        end = k;
                        break;
                    }
                }
                let value = text[..end].trim_end_matches([' ', '\t']);
                if value.is_empty() {
                    return Err(self.err(at, "missing value"));
                }
                Ok((
                    Node {
                        kind: Kind::Scalar {
                            value: value.to_owned(),
                            plain: true,
                        },
                        line,
                    },
                    at + end,
                ))
            }
        }
    }

    /// A literal (`|`) or folded (`>`) block scalar whose header starts at `at`.
    fn block_scalar(&mut self, at: usize, parent: isize) -> Result<String> {
        let l = self.lines[self.i];
        let header = &self.src[at..l.end];
        let folded = header.starts_with('>');
        let mut chomp = 'c';
        let mut explicit = None;
        let mut k = 1;
        for c in header[1..].chars() {
            match c {
                '-' | '+' if chomp == 'c' => chomp = c,
                '1'..='9' if explicit.is_none() => explicit = Some(c as usize - '0' as usize),
                _ => break,
            }
            k += 1;
        }
        let rest = header[k..].trim_start_matches([' ', '\t']);
        if !rest.is_empty() && (!rest.starts_with('#') || rest.len() == header[k..].len()) {
            return Err(self.err(
                at + k,
                "unexpected text after the block scalar's `|` or `>`",
            ));
        }
        self.i += 1;
        let base = parent.max(0) as usize;
        let mut indent = explicit.map(|d| if parent < 0 { d } else { base + d });
        let mut content: Vec<&str> = Vec::new();
        while self.i < self.end {
            let line = self.lines[self.i];
            let raw = &self.src[line.begin..line.end];
            let spaces = line.indent;
            if raw.trim_start_matches(' ').is_empty() {
                let keep = indent.map_or("", |n| raw.get(n..).unwrap_or(""));
                content.push(keep);
                self.i += 1;
                continue;
            }
            let n = *indent.get_or_insert(spaces);
            if spaces < n || (spaces as isize) <= parent {
                break;
            }
            content.push(&raw[n..]);
            self.i += 1;
        }
        let last = content.iter().rposition(|s| !s.is_empty());
        let trailing = content.len() - last.map_or(0, |i| i + 1);
        let body = &content[..last.map_or(0, |i| i + 1)];
        let mut out = String::new();
        if folded {
            let mut empty = 0;
            let mut prev_more = false;
            for (n, line) in body.iter().enumerate() {
                if line.is_empty() {
                    empty += 1;
                    continue;
                }
                let more = line.starts_with([' ', '\t']);
                if n > empty {
                    if more || prev_more {
                        out.extend(std::iter::repeat_n('\n', empty + 1));
                    } else if empty == 0 {
                        out.push(' ');
                    } else {
                        out.extend(std::iter::repeat_n('\n', empty));
                    }
                } else {
                    out.extend(std::iter::repeat_n('\n', empty));
                }
                out.push_str(line);
                prev_more = more;
                empty = 0;
            }
        } else {
            out = body.join("\n");
        }
        match chomp {
            '-' => {}
            '+' => {
                if !body.is_empty() {
                    out.push('\n');
                }
                out.extend(std::iter::repeat_n('\n', trailing));
            }
            _ => {
                if !body.is_empty() {
                    out.push('\n');
                }
            }
        }
        Ok(out)
    }
}

/// A block sequence entry: `-` followed by white space or the end of the line.
fn is_dash(text: &str) -> bool {
    text.strip_prefix('-').is_some_and(is_sep)
}

/// What may follow a `:` or `-` indicator: nothing, or white space.
fn is_sep(rest: &str) -> bool {
    rest.is_empty() || rest.starts_with([' ', '\t'])
}

fn is_null(s: &str) -> bool {
    matches!(s, "" | "~" | "null" | "Null" | "NULL")
}

fn as_bool(s: &str) -> Option<bool> {
    match s {
        "true" | "True" | "TRUE" => Some(true),
        "false" | "False" | "FALSE" => Some(false),
        _ => None,
    }
}

fn as_int(s: &str) -> Option<i128> {
    let (neg, digits) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let v = if let Some(h) = digits.strip_prefix("0x") {
        i128::from_str_radix(h, 16).ok()?
    } else if let Some(o) = digits.strip_prefix("0o") {
        i128::from_str_radix(o, 8).ok()?
    } else if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        digits.parse().ok()?
    } else {
        return None;
    };
    Some(if neg { -v } else { v })
}

fn as_float(s: &str) -> Option<f64> {
    match s.trim_start_matches(['-', '+']) {
        ".inf" | ".Inf" | ".INF" => {
            return Some(if s.starts_with('-') {
                f64::NEG_INFINITY
            } else {
                f64::INFINITY
            });
        }
        ".nan" | ".NaN" | ".NAN" if s.starts_with('.') => return Some(f64::NAN),
        _ => {}
    }
    let ok = s.bytes().any(|b| b.is_ascii_digit())
        && s.bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'-' | b'+'));
    ok.then(|| s.parse().ok()).flatten()
}

impl Node {
    fn scalar(&self) -> Option<(&str, bool)> {
        match &self.kind {
            Kind::Scalar { value, plain } => Some((value, *plain)),
            _ => None,
        }
    }

    fn is_null(&self) -> bool {
        match &self.kind {
            Kind::Null => true,
            Kind::Scalar { value, plain } => *plain && is_null(value),
            _ => false,
        }
    }

    fn unexpected(&self) -> de::Unexpected<'_> {
        match &self.kind {
            Kind::Null => de::Unexpected::Unit,
            Kind::Scalar { value, .. } => de::Unexpected::Str(value),
            Kind::Seq(_) => de::Unexpected::Seq,
            Kind::Map(_) => de::Unexpected::Map,
        }
    }
}

/// Reads a node into `T`, with the line of the node that did not fit in the error.
pub(crate) fn from_node<'de, T: de::Deserialize<'de>>(node: &'de Node) -> Result<T> {
    T::deserialize(node)
}

impl Node {
    /// Names this node's line in an error that does not name one yet.
    fn at<T>(&self, r: Result<T>) -> Result<T> {
        r.map_err(|e| e.at(self.line))
    }

    /// This node is not what `expected` wants.
    fn wrong<T>(&self, expected: &dyn de::Expected) -> Result<T> {
        Err(<YamlError as de::Error>::invalid_type(self.unexpected(), expected).at(self.line))
    }

    /// Visits a sequence or mapping; `want` says which one the type asked for (`None`: any).
    fn collection<'de, V: Visitor<'de>>(
        &'de self,
        visitor: V,
        want: Option<bool>,
    ) -> Result<V::Value> {
        match (&self.kind, want) {
            (Kind::Seq(items), None | Some(true)) => {
                self.at(visitor.visit_seq(SeqAccess(items.iter())))
            }
            (Kind::Map(entries), None | Some(false)) => self.at(visitor.visit_map(MapAccess {
                entries: entries.iter(),
                value: None,
            })),
            _ => self.wrong(&visitor),
        }
    }
}

macro_rules! parsed {
    ($($method:ident => $visit:ident: $ty:ty,)*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
            match self.scalar().filter(|s| s.1).and_then(|(s, _)| as_int(s)) {
                Some(n) => match <$ty>::try_from(n) {
                    Ok(v) => self.at(visitor.$visit(v)),
                    Err(_) => self.wrong(&visitor),
                },
                None => self.wrong(&visitor),
            }
        }
    )*};
}

impl<'de> de::Deserializer<'de> for &'de Node {
    type Error = YamlError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        let value = match &self.kind {
            Kind::Null => return self.at(visitor.visit_unit()),
            Kind::Scalar { value, plain: true } => value,
            Kind::Scalar {
                value,
                plain: false,
            } => return self.at(visitor.visit_borrowed_str(value)),
            Kind::Seq(_) | Kind::Map(_) => return self.collection(visitor, None),
        };
        let r = if is_null(value) {
            visitor.visit_unit()
        } else if let Some(b) = as_bool(value) {
            visitor.visit_bool(b)
        } else if let Some(n) = as_int(value) {
            match (i64::try_from(n), u64::try_from(n)) {
                (Ok(i), _) => visitor.visit_i64(i),
                (_, Ok(u)) => visitor.visit_u64(u),
                _ => visitor.visit_borrowed_str(value),
            }
        } else if let Some(f) = as_float(value) {
            visitor.visit_f64(f)
        } else {
            visitor.visit_borrowed_str(value)
        };
        self.at(r)
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        match self.scalar().filter(|s| s.1).and_then(|(s, _)| as_bool(s)) {
            Some(b) => self.at(visitor.visit_bool(b)),
            None => self.wrong(&visitor),
        }
    }

    parsed! {
        deserialize_i8 => visit_i8: i8,
        deserialize_i16 => visit_i16: i16,
        deserialize_i32 => visit_i32: i32,
        deserialize_i64 => visit_i64: i64,
        deserialize_u8 => visit_u8: u8,
        deserialize_u16 => visit_u16: u16,
        deserialize_u32 => visit_u32: u32,
        deserialize_u64 => visit_u64: u64,
    }

    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.deserialize_f64(visitor)
    }

    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        match self.scalar().filter(|s| s.1).and_then(|(s, _)| as_float(s)) {
            Some(f) => self.at(visitor.visit_f64(f)),
            None => self.wrong(&visitor),
        }
    }

    /// Any scalar reads as a string, as Go's loader does: `name: 123` is `"123"`.
    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        match self.scalar() {
            Some((s, _)) => self.at(visitor.visit_borrowed_str(s)),
            None => self.wrong(&visitor),
        }
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.deserialize_str(visitor)
    }

    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.deserialize_str(visitor)
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.deserialize_str(visitor)
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.deserialize_str(visitor)
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.deserialize_str(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        if self.is_null() {
            self.at(visitor.visit_none())
        } else {
            self.at(visitor.visit_some(self))
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        if self.is_null() {
            self.at(visitor.visit_unit())
        } else {
            self.wrong(&visitor)
        }
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.collection(visitor, Some(true))
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.collection(visitor, Some(false))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value> {
        self.deserialize_map(visitor)
    }

    /// Unit variants only (`interactiveMode: IfAvailable`): kubeconfigs have no other enums.
    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value> {
        match self.scalar() {
            Some((s, _)) => self.at(visitor.visit_enum(s.into_deserializer())),
            None => self.wrong(&visitor),
        }
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_unit()
    }
}

struct SeqAccess<'de>(std::slice::Iter<'de, Node>);

impl<'de> de::SeqAccess<'de> for SeqAccess<'de> {
    type Error = YamlError;

    fn next_element_seed<T: de::DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>> {
        self.0.next().map(|n| seed.deserialize(n)).transpose()
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.0.len())
    }
}

struct MapAccess<'de> {
    entries: std::slice::Iter<'de, (String, Node)>,
    value: Option<&'de Node>,
}

impl<'de> de::MapAccess<'de> for MapAccess<'de> {
    type Error = YamlError;

    fn next_key_seed<K: de::DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>> {
        let Some((key, value)) = self.entries.next() else {
            return Ok(None);
        };
        self.value = Some(value);
        let key: de::value::BorrowedStrDeserializer<'de, YamlError> =
            de::value::BorrowedStrDeserializer::new(key);
        seed.deserialize(key)
            .map(Some)
            .map_err(|e| e.at(value.line))
    }

    fn next_value_seed<V: de::DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value> {
        match self.value.take() {
            Some(v) => seed.deserialize(v),
            None => Err(de::Error::custom("a value was asked for before its key")),
        }
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.entries.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::{Value, json};

    fn value(text: &str) -> Value {
        let docs = parse(text).unwrap_or_else(|e| panic!("{e} in:\n{text}"));
        from_node(&docs[0]).unwrap_or_else(|e| panic!("{e} in:\n{text}"))
    }

    #[test]
    fn block_scalars_chomp_and_fold() {
        let text = "a: |\n  one\n   two\n\n  three\n\n\nb: >\n  one\n  two\n\n  three\n   more\n  four\nc: |-\n  x\nd: |+\n  x\n\ne: |2\n    indented\nf: >-\n\n  lead\n";
        assert_eq!(
            value(text),
            json!({
                "a": "one\n two\n\nthree\n",
                "b": "one two\nthree\n more\nfour\n",
                "c": "x",
                "d": "x\n\n",
                "e": "  indented\n",
                "f": "\nlead",
            })
        );
    }

    #[test]
    fn scalars_resolve_by_the_core_schema_only_when_plain() {
        let text = "a: 1\nb: '1'\nc: -0x1F\nd: 2.5e3\ne: ~\nf: True\ng: yes\nh: 0o17\ni: \"\\u00e9\\x41\\\n  b\"\nj: 'it''s'\n";
        assert_eq!(
            value(text),
            json!({"a": 1, "b": "1", "c": -31, "d": 2500.0, "e": null, "f": true, "g": "yes", "h": 15, "i": "éAb", "j": "it's"})
        );
    }

    /// A tree to write as YAML in many styles and read back.
    #[derive(Clone, Debug)]
    enum Tree {
        Null,
        Bool(bool),
        Int(i64),
        Str(String),
        Seq(Vec<Tree>),
        Map(Vec<(String, Tree)>),
    }

    impl Tree {
        /// Whether the last thing written for this tree may be a literal block scalar.
        fn ends_in_text_block(&self) -> bool {
            match self {
                Tree::Str(s) => s.contains('\n'),
                Tree::Seq(v) => v.last().is_some_and(Tree::ends_in_text_block),
                Tree::Map(m) => m.last().is_some_and(|(_, v)| v.ends_in_text_block()),
                _ => false,
            }
        }

        fn json(&self) -> Value {
            match self {
                Tree::Null => Value::Null,
                Tree::Bool(b) => json!(b),
                Tree::Int(i) => json!(i),
                Tree::Str(s) => json!(s),
                Tree::Seq(v) => Value::Array(v.iter().map(Tree::json).collect()),
                Tree::Map(m) => {
                    Value::Object(m.iter().map(|(k, v)| (k.clone(), v.json())).collect())
                }
            }
        }
    }

    fn tree() -> impl Strategy<Value = Tree> {
        let leaf = prop_oneof![
            Just(Tree::Null),
            any::<bool>().prop_map(Tree::Bool),
            any::<i64>().prop_map(Tree::Int),
            "[a-z]{1,6}( [a-z/.:-]{1,8}){0,6}".prop_map(Tree::Str),
            "[ -~]{0,24}".prop_map(Tree::Str),
            "\\PC{0,12}".prop_map(Tree::Str),
            "(( {0,3}[!-~][ -~]{0,8})?\n){1,4}[ -~]{0,6}\n{0,3}".prop_map(Tree::Str),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(Tree::Seq),
                prop::collection::btree_map("[a-z][a-z0-9-]{0,7}", inner, 0..5)
                    .prop_map(|m| Tree::Map(m.into_iter().collect())),
            ]
        })
    }

    /// Writes trees in styles chosen by a small random generator.
    struct Writer {
        out: String,
        rng: u64,
    }

    impl Writer {
        fn coin(&mut self) -> bool {
            self.rng ^= self.rng << 13;
            self.rng ^= self.rng >> 7;
            self.rng ^= self.rng << 17;
            self.rng & 1 == 1
        }

        fn plain_ok(s: &str, flow: bool) -> bool {
            let first_ok = s.starts_with(|c: char| c.is_ascii_alphabetic() || c == '/');
            let body_ok = s
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || " ./_:-".contains(c))
                && !s.contains(": ")
                && !s.ends_with([' ', ':']);
            let not_typed =
                !is_null(s) && as_bool(s).is_none() && as_int(s).is_none() && as_float(s).is_none();
            first_ok && body_ok && not_typed && !(flow && s.contains(':'))
        }

        fn scalar(&mut self, s: &str, indent: usize, flow: bool) {
            if !flow && s.contains('\n') && !s.trim().is_empty() && self.coin() {
                // A literal block scalar, with an indentation indicator so that lines may
                // start with spaces, and the chomping that keeps the trailing line breaks.
                let body = s.trim_end_matches('\n');
                let trailing = s.len() - body.len();
                let chomp = match trailing {
                    0 => "-",
                    1 => "",
                    _ => "+",
                };
                self.out.push_str(&format!("|2{chomp}"));
                let pad = " ".repeat(indent + 2);
                for line in body.split('\n') {
                    self.out.push('\n');
                    if !line.is_empty() {
                        self.out.push_str(&pad);
                        self.out.push_str(line);
                    }
                }
                for _ in 1..trailing {
                    self.out.push('\n');
                }
            } else if Self::plain_ok(s, flow) && self.coin() {
                if !flow && s.contains(' ') && !s.contains("  ") && self.coin() {
                    // Fold at a space onto a continuation line. Not where spaces run
                    // together: YAML drops a continuation line's leading spaces, so `A  A`
                    // folded there reads back as `A A` (found by this test in CI).
                    let pad = " ".repeat(indent + 2);
                    self.out.push_str(&s.replacen(' ', &format!("\n{pad}"), 1));
                } else {
                    self.out.push_str(s);
                }
            } else if !s.contains(|c: char| {
                c.is_control() || c == '\u{85}' || c == '\u{a0}' || c.is_whitespace() && c != ' '
            }) && !s.starts_with(' ')
                && !s.ends_with(' ')
                && self.coin()
            {
                self.out.push('\'');
                self.out.push_str(&s.replace('\'', "''"));
                self.out.push('\'');
            } else {
                self.out.push('"');
                for c in s.chars() {
                    match c {
                        '"' => self.out.push_str("\\\""),
                        '\\' => self.out.push_str("\\\\"),
                        c if c.is_control() || c.is_whitespace() && c != ' ' => {
                            self.out.push_str(&format!("\\U{:08x}", c as u32));
                        }
                        c => self.out.push(c),
                    }
                }
                self.out.push('"');
            }
        }

        fn leaf(&mut self, t: &Tree, indent: usize, flow: bool) -> bool {
            match t {
                Tree::Null => {
                    let s = if self.coin() { "null" } else { "~" };
                    self.out.push_str(s);
                }
                Tree::Bool(b) => self.out.push_str(if *b { "true" } else { "false" }),
                Tree::Int(i) => self.out.push_str(&i.to_string()),
                Tree::Str(s) => self.scalar(s, indent, flow),
                _ => return false,
            }
            true
        }

        fn flow(&mut self, t: &Tree) {
            if self.leaf(t, 0, true) {
                return;
            }
            match t {
                Tree::Seq(v) => {
                    self.out.push('[');
                    for (n, item) in v.iter().enumerate() {
                        if n > 0 {
                            let sep = if self.coin() { ", " } else { ",\n  " };
                            self.out.push_str(sep);
                        }
                        self.flow(item);
                    }
                    self.out.push(']');
                }
                Tree::Map(m) => {
                    self.out.push('{');
                    for (n, (k, v)) in m.iter().enumerate() {
                        if n > 0 {
                            self.out.push_str(", ");
                        }
                        self.out.push_str(k);
                        self.out.push_str(": ");
                        self.flow(v);
                    }
                    self.out.push('}');
                }
                _ => {}
            }
        }

        /// A value after `key:` or `- `, at block indentation `indent`.
        fn value(&mut self, t: &Tree, indent: usize, in_seq: bool) {
            let empty = matches!(t, Tree::Seq(v) if v.is_empty())
                || matches!(t, Tree::Map(m) if m.is_empty());
            if matches!(t, Tree::Seq(_) | Tree::Map(_)) && (empty || self.coin() && self.coin()) {
                self.out.push(' ');
                self.flow(t);
                self.out.push('\n');
                return;
            }
            match t {
                Tree::Seq(v) => {
                    self.out.push('\n');
                    // Under a key the dashes may stay at the key's column; under a dash not.
                    let inner = if !in_seq && self.coin() {
                        indent
                    } else {
                        indent + 2
                    };
                    self.seq(v, inner);
                }
                Tree::Map(m) => {
                    if self.coin() {
                        self.out.push_str(" # c");
                    }
                    self.out.push('\n');
                    self.map(m, indent + 2);
                }
                leaf => {
                    self.out.push(' ');
                    self.leaf(leaf, indent, false);
                    self.out.push('\n');
                }
            }
        }

        fn seq(&mut self, v: &[Tree], indent: usize) {
            let pad = " ".repeat(indent);
            for item in v {
                self.out.push_str(&pad);
                self.out.push('-');
                match item {
                    Tree::Map(m) if !m.is_empty() && self.coin() => {
                        // Compact: the first entry on the dash's line.
                        self.out.push(' ');
                        let at = self.out.len();
                        self.map(m, indent + 2);
                        self.out.replace_range(at..at + indent + 2, "");
                    }
                    _ => self.value(item, indent, true),
                }
            }
        }

        fn map(&mut self, m: &[(String, Tree)], indent: usize) {
            let pad = " ".repeat(indent);
            for (k, v) in m {
                self.out.push_str(&pad);
                self.out.push_str(k);
                self.out.push(':');
                self.value(v, indent, false);
                // A blank line after a block scalar would belong to it.
                if !v.ends_in_text_block() && self.coin() && self.coin() {
                    self.out.push('\n');
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Whatever style a mapping of trees is written in, it reads back as the same tree.
        #[test]
        fn any_tree_reads_back_in_any_style(
            m in prop::collection::btree_map("[a-z][a-z0-9-]{0,7}", tree(), 1..6),
            seed in 1u64..,
        ) {
            let m: Vec<(String, Tree)> = m.into_iter().collect();
            let mut w = Writer { out: String::new(), rng: seed };
            if w.coin() {
                w.out.push_str("---\n");
            }
            w.map(&m, 0);
            let text = w.out;
            let docs = parse(&text).map_err(|e| TestCaseError::fail(format!("{e} in:\n{text}")))?;
            prop_assert_eq!(docs.len(), 1, "{}", text);
            let got: Value = from_node(&docs[0]).map_err(|e| TestCaseError::fail(format!("{e} in:\n{text}")))?;
            prop_assert_eq!(got, Tree::Map(m).json(), "{}", text);
        }

        /// Arbitrary input is read or refused, never a panic.
        #[test]
        fn arbitrary_text_never_panics(text in "[ -~\\n\\t]{0,200}") {
            if let Ok(docs) = parse(&text) {
                for d in &docs {
                    let _ = from_node::<Value>(d);
                }
            }
        }
    }
}
