//! keepalived.conf → syncd TOML: maps the `vrrp_instance` and `vrrp_script`
//! blocks and says what it could not map.
//!
//! The parser follows keepalived's own rules loosely and tolerates the mess
//! found in the wild: `#` and `!` comments anywhere, braces glued to words,
//! quoted strings, and prose around the configuration (ignored).

use std::fmt::Write;

/// Result of a conversion.
#[derive(Debug, Clone)]
pub struct Imported {
    /// The TOML text (one `[[vrrp]]` per `vrrp_instance`).
    pub toml: String,
    /// Everything that was not mapped, or was mapped with a change of meaning.
    pub warnings: Vec<String>,
    /// What must not be converted at all (e.g. `auth_type AH`): the TOML must not be used.
    pub errors: Vec<String>,
    pub instances: usize,
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Word(String, usize),
    Open(usize),
    Close(usize),
    Eol,
}

fn tokenize(text: &str) -> Vec<Tok> {
    let mut out = Vec::new();
    for (ln, line) in text.lines().enumerate() {
        let ln = ln + 1;
        let mut chars = line.chars().peekable();
        let mut cur = String::new();
        let flush = |cur: &mut String, out: &mut Vec<Tok>| {
            if !cur.is_empty() {
                out.push(Tok::Word(std::mem::take(cur), ln));
            }
        };
        while let Some(c) = chars.next() {
            match c {
                '#' | '!' => break,
                '"' => {
                    flush(&mut cur, &mut out);
                    let mut s = String::new();
                    for c in chars.by_ref() {
                        if c == '"' {
                            break;
                        }
                        s.push(c);
                    }
                    out.push(Tok::Word(s, ln));
                }
                '{' => {
                    flush(&mut cur, &mut out);
                    out.push(Tok::Open(ln));
                }
                '}' => {
                    flush(&mut cur, &mut out);
                    out.push(Tok::Close(ln));
                }
                c if c.is_whitespace() => flush(&mut cur, &mut out),
                c => cur.push(c),
            }
        }
        flush(&mut cur, &mut out);
        out.push(Tok::Eol);
    }
    out
}

/// A statement: words on one line, optionally followed by a `{ ... }` block.
#[derive(Debug, Clone, Default)]
pub struct Node {
    pub words: Vec<String>,
    pub line: usize,
    pub children: Vec<Node>,
    pub has_block: bool,
}

impl Node {
    pub fn key(&self) -> &str {
        self.words.first().map_or("", |s| s.as_str())
    }
    pub fn arg(&self, i: usize) -> Option<&str> {
        self.words.get(i).map(|s| s.as_str())
    }
}

/// keepalived.conf as a tree of statements (what `syncd migrate` reads
/// beyond the VRRP blocks [`convert`] maps: `virtual_server`, the scripts).
pub fn parse(text: &str) -> Vec<Node> {
    let toks = tokenize(text);
    let mut pos = 0;
    parse_nodes(&toks, &mut pos, 0)
}

fn parse_nodes(toks: &[Tok], pos: &mut usize, depth: usize) -> Vec<Node> {
    let mut nodes = Vec::new();
    let mut cur = Node::default();
    while *pos < toks.len() {
        let t = toks[*pos].clone();
        *pos += 1;
        match t {
            Tok::Word(w, ln) => {
                if cur.words.is_empty() {
                    cur.line = ln;
                }
                cur.words.push(w);
            }
            Tok::Eol => {
                if !cur.words.is_empty() {
                    nodes.push(std::mem::take(&mut cur));
                }
            }
            Tok::Open(ln) => {
                if cur.words.is_empty() {
                    // "{" on its own line belongs to the previous statement
                    if let Some(prev) = nodes.pop().filter(|p: &Node| !p.has_block) {
                        cur = prev;
                    } else {
                        cur.line = ln;
                    }
                }
                cur.has_block = true;
                cur.children = parse_nodes(toks, pos, depth + 1);
                nodes.push(std::mem::take(&mut cur));
            }
            Tok::Close(_) => {
                if !cur.words.is_empty() {
                    nodes.push(std::mem::take(&mut cur));
                }
                if depth > 0 {
                    return nodes;
                }
            }
        }
    }
    if !cur.words.is_empty() {
        nodes.push(cur);
    }
    nodes
}

fn q(s: &str) -> String {
    let mut o = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            '\t' => o.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(o, "\\u{:04x}", c as u32);
            }
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

mod convert;
pub use convert::convert;

#[cfg(test)]
mod tests;
