//! A whole xl config file: its settings in order, with the text between them (comments,
//! blank lines) and each setting's own text kept until it is edited.
//!
//! The grammar is libxlu's: `KEY = VALUE` or `KEY += VALUE` (append to a list), ended
//! by a newline or `;`; VALUE a string (`"..."` with C escapes, or `'...'` as is), a
//! number, or a list `[ VALUE, ... ]` that may span lines and end with a comma; `#`
//! starts a comment anywhere outside a string. A later setting of a key overrides an
//! earlier one.

use crate::error::{Error, Result};
use crate::value::Value;

/// One statement of the file, or the text between statements.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Item {
    /// Comments, blank lines and indentation, exactly as read.
    Text(String),
    Setting(Setting),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Setting {
    key: String,
    /// `+=`: appends to the list set before.
    append: bool,
    value: Value,
    /// The statement as read (with its comment and line end); `None` once edited.
    text: Option<String>,
}

/// A parsed xl config file.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct XlConfig {
    items: Vec<Item>,
}

/// Longest file accepted: configs are a few KiB; a megabyte is not one.
pub const MAX_LEN: usize = 1 << 20;
/// Deepest list nesting accepted (xl itself uses one level, disks in lists of strings).
const MAX_DEPTH: usize = 8;

impl XlConfig {
    pub fn parse(text: &str) -> Result<XlConfig> {
        if text.len() > MAX_LEN {
            return Err(Error::Syntax {
                line: 1,
                column: 1,
                what: format!(
                    "the file is {} bytes; an xl config is at most {MAX_LEN}",
                    text.len()
                ),
            });
        }
        Parser::new(text).file()
    }

    /// The file's text: what was read, with edited settings written anew.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for item in &self.items {
            match item {
                Item::Text(t) => out.push_str(t),
                Item::Setting(s) => match &s.text {
                    Some(t) => out.push_str(t),
                    None => {
                        if !out.is_empty() && !out.ends_with('\n') {
                            out.push('\n');
                        }
                        let op = if s.append { "+=" } else { "=" };
                        out.push_str(&format!("{} {op} {}\n", s.key, s.value.render()));
                    }
                },
            }
        }
        out
    }

    /// The keys set, in the order they first appear.
    pub fn keys(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for s in self.settings() {
            if !out.contains(&s.key.as_str()) {
                out.push(&s.key);
            }
        }
        out
    }

    /// A key's value as xl sees it: the last `=`, with the `+=` after it appended.
    pub fn get(&self, key: &str) -> Option<Value> {
        let mut value: Option<Value> = None;
        for s in self.settings().filter(|s| s.key == key) {
            value = match (value, s.append) {
                (Some(Value::List(mut l)), true) => {
                    match &s.value {
                        Value::List(more) => l.extend(more.iter().cloned()),
                        one => l.push(one.clone()),
                    }
                    Some(Value::List(l))
                }
                (_, _) => Some(s.value.clone()),
            };
        }
        value
    }

    pub fn get_str(&self, key: &str) -> Option<String> {
        self.get(key).and_then(|v| v.as_str().map(str::to_string))
    }

    /// Sets `key` to `value`: its first setting takes the value (in place, the rest of
    /// the file untouched) and later ones go; a key not set yet is added at the end.
    pub fn set(&mut self, key: &str, value: Value) {
        let mut placed = false;
        self.items.retain_mut(|item| match item {
            Item::Setting(s) if s.key == key => {
                if placed {
                    return false;
                }
                placed = true;
                s.append = false;
                s.value = value.clone();
                s.text = None;
                true
            }
            _ => true,
        });
        if !placed {
            self.items.push(Item::Setting(Setting {
                key: key.to_string(),
                append: false,
                value,
                text: None,
            }));
        }
    }

    /// Removes every setting of `key`; whether there was one.
    pub fn remove(&mut self, key: &str) -> bool {
        let before = self.items.len();
        self.items
            .retain(|item| !matches!(item, Item::Setting(s) if s.key == key));
        self.items.len() != before
    }

    fn settings(&self) -> impl Iterator<Item = &Setting> {
        self.items.iter().filter_map(|i| match i {
            Item::Setting(s) => Some(s),
            Item::Text(_) => None,
        })
    }
}

struct Parser<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Parser<'a> {
    fn new(text: &'a str) -> Self {
        Parser { text, at: 0 }
    }

    fn peek(&self) -> Option<char> {
        self.text[self.at..].chars().next()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.at += c.len_utf8();
        Some(c)
    }

    fn error(&self, what: impl Into<String>) -> Error {
        let before = &self.text[..self.at];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        Error::Syntax {
            line,
            column,
            what: what.into(),
        }
    }

    fn file(mut self) -> Result<XlConfig> {
        let mut items = Vec::new();
        let mut text_start = 0;
        loop {
            match self.peek() {
                None => break,
                Some(' ' | '\t' | '\r' | '\n' | ';') => {
                    self.bump();
                }
                Some('#') => self.comment(),
                Some(c) if c.is_ascii_alphabetic() || c == '_' => {
                    if text_start < self.at {
                        items.push(Item::Text(self.text[text_start..self.at].to_string()));
                    }
                    let start = self.at;
                    let (key, append, value) = self.setting()?;
                    items.push(Item::Setting(Setting {
                        key,
                        append,
                        value,
                        text: Some(self.text[start..self.at].to_string()),
                    }));
                    text_start = self.at;
                }
                Some(c) => {
                    return Err(self.error(format!(
                        "unexpected {c:?}: expected a setting (KEY = VALUE)"
                    )))
                }
            }
        }
        if text_start < self.at {
            items.push(Item::Text(self.text[text_start..].to_string()));
        }
        Ok(XlConfig { items })
    }

    fn comment(&mut self) {
        while let Some(c) = self.bump() {
            if c == '\n' {
                break;
            }
        }
    }

    /// Spaces, tabs and, inside a list, line ends and comments.
    fn blank(&mut self, in_list: bool) {
        while let Some(c) = self.peek() {
            match c {
                ' ' | '\t' | '\r' => {
                    self.bump();
                }
                '\n' if in_list => {
                    self.bump();
                }
                '#' if in_list => self.comment(),
                _ => break,
            }
        }
    }

    /// `KEY = VALUE` up to and with its line end (and a comment before it).
    fn setting(&mut self) -> Result<(String, bool, Value)> {
        let start = self.at;
        while self
            .peek()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            self.bump();
        }
        let key = self.text[start..self.at].to_string();
        self.blank(false);
        let append = match (self.bump(), self.peek()) {
            (Some('='), _) => false,
            (Some('+'), Some('=')) => {
                self.bump();
                true
            }
            _ => return Err(self.error(format!("expected `=` after {key}"))),
        };
        self.blank(false);
        let value = self.value(0)?;
        self.blank(false);
        match self.peek() {
            None => {}
            Some('#') => self.comment(),
            Some('\n' | ';') => {
                self.bump();
            }
            Some(c) => {
                return Err(self.error(format!(
                "unexpected {c:?} after the value of {key}: one setting per line (or `;` between)"
            )))
            }
        }
        Ok((key, append, value))
    }

    fn value(&mut self, depth: usize) -> Result<Value> {
        match self.peek() {
            Some('"') => self.string('"').map(Value::Str),
            Some('\'') => self.string('\'').map(Value::Str),
            Some('[') => self.list(depth),
            Some(c) if c.is_ascii_digit() || c == '-' || c == '+' || c == '.' => {
                let start = self.at;
                self.bump();
                while self
                    .peek()
                    .is_some_and(|c| c.is_ascii_alphanumeric() || c == '.')
                {
                    self.bump();
                }
                Ok(Value::Num(self.text[start..self.at].to_string()))
            }
            Some(c) => Err(self.error(format!(
                "unexpected {c:?}: a value is a \"string\", a number or a [list]"
            ))),
            None => Err(self.error("the file ends where a value was expected")),
        }
    }

    fn string(&mut self, quote: char) -> Result<String> {
        self.bump();
        let mut out = String::new();
        loop {
            if matches!(self.peek(), None | Some('\n')) {
                return Err(self.error("a string is not closed on its line"));
            }
            match self.bump() {
                None => return Err(self.error("a string is not closed on its line")),
                Some(c) if c == quote => return Ok(out),
                Some('\\') if quote == '"' => match self.bump() {
                    Some('n') => out.push('\n'),
                    Some('t') => out.push('\t'),
                    Some('r') => out.push('\r'),
                    Some(c @ ('\\' | '"' | '\'')) => out.push(c),
                    Some(c) => {
                        out.push('\\');
                        out.push(c);
                    }
                    None => return Err(self.error("a string is not closed on its line")),
                },
                Some(c) => out.push(c),
            }
        }
    }

    fn list(&mut self, depth: usize) -> Result<Value> {
        if depth >= MAX_DEPTH {
            return Err(self.error(format!("lists nested deeper than {MAX_DEPTH}")));
        }
        self.bump();
        let mut items = Vec::new();
        loop {
            self.blank(true);
            match self.peek() {
                Some(']') => {
                    self.bump();
                    return Ok(Value::List(items));
                }
                None => return Err(self.error("the file ends inside a list")),
                Some(_) => {}
            }
            items.push(self.value(depth + 1)?);
            self.blank(true);
            match self.bump() {
                Some(',') => {}
                Some(']') => return Ok(Value::List(items)),
                Some(c) => {
                    return Err(
                        self.error(format!("unexpected {c:?} in a list: expected `,` or `]`"))
                    )
                }
                None => return Err(self.error("the file ends inside a list")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PV: &str = "# a PV guest\nname = \"db1\"\ntype = \"pv\"  # paravirtualised\nmemory = 2048\nvcpus=2\nmy_own_key = 'kept as is'\ndisk = [ 'phy:/dev/vg/os,xvda,r',\n         'vdev=xvdb, access=rw, target=/dev/vg/db', # data\n]\non_crash = \"preserve\"; on_reboot = \"restart\"\n";

    #[test]
    fn a_file_reads_back_as_it_was() {
        let c = XlConfig::parse(PV).unwrap();
        assert_eq!(c.render(), PV);
        assert_eq!(c.get_str("name").as_deref(), Some("db1"));
        assert_eq!(c.get("memory"), Some(Value::Num("2048".into())));
        assert_eq!(c.get_str("my_own_key").as_deref(), Some("kept as is"));
        assert_eq!(c.get_str("on_reboot").as_deref(), Some("restart"));
        assert_eq!(c.get("disk").unwrap().as_list().unwrap().len(), 2);
        assert_eq!(
            c.keys(),
            [
                "name",
                "type",
                "memory",
                "vcpus",
                "my_own_key",
                "disk",
                "on_crash",
                "on_reboot"
            ]
        );
    }

    #[test]
    fn edits_touch_only_their_settings() {
        let mut c = XlConfig::parse(PV).unwrap();
        c.set("name", Value::Str("db1-r1".into()));
        c.set("maxmem", Value::Num("4096".into()));
        assert!(c.remove("vcpus"));
        assert!(!c.remove("uuid"));
        let out = c.render();
        assert!(
            out.starts_with("# a PV guest\nname = \"db1-r1\"\ntype = \"pv\"  # paravirtualised\n"),
            "{out}"
        );
        assert!(!out.contains("vcpus"));
        assert!(out.ends_with("maxmem = 4096\n"), "{out}");
        assert!(out.contains("my_own_key = 'kept as is'"));
        // What it wrote reads back the same.
        let again = XlConfig::parse(&out).unwrap();
        assert_eq!(again.get_str("name").as_deref(), Some("db1-r1"));
        assert_eq!(again.get("disk"), c.get("disk"));
    }

    #[test]
    fn appends_and_overrides_are_what_xl_sees() {
        let c = XlConfig::parse(
            "vif = ['bridge=xenbr0']\nvif += ['bridge=xenbr1']\nmemory = 1\nmemory = 2\n",
        )
        .unwrap();
        assert_eq!(c.get("vif").unwrap().as_list().unwrap().len(), 2);
        assert_eq!(c.get("memory"), Some(Value::Num("2".into())));
        let mut c = c;
        c.set(
            "vif",
            Value::List(vec![Value::Str("mac=00:16:3e:00:00:01".into())]),
        );
        assert_eq!(c.get("vif").unwrap().as_list().unwrap().len(), 1);
    }

    #[test]
    fn strings_escape_and_round_trip() {
        let v = Value::Str("a \"b\" \\ c\nd".into());
        let c = XlConfig::parse(&format!("x = {}\n", v.render())).unwrap();
        assert_eq!(c.get("x"), Some(v));
    }

    #[test]
    fn bad_files_are_named_by_line_and_column() {
        for (text, line, what) in [
            ("name = \"x\n", 1, "not closed"),
            ("a = 1\nb 2\n", 2, "expected `=`"),
            ("disk = [ 'a' 'b' ]\n", 1, "expected `,` or `]`"),
            ("a = 1 b = 2\n", 1, "one setting per line"),
            ("= 3\n", 1, "expected a setting"),
            ("d = [\n'a',\n", 3, "ends inside a list"),
            ("x = @\n", 1, "a value is"),
            (
                &format!("x = {}1{}\n", "[".repeat(20), "]".repeat(20)),
                1,
                "nested deeper",
            ),
        ] {
            match XlConfig::parse(text) {
                Err(Error::Syntax {
                    line: l, what: w, ..
                }) => {
                    assert_eq!(l, line, "{text:?}: {w}");
                    assert!(w.contains(what), "{text:?}: {w}");
                }
                other => panic!("{text:?}: {other:?}"),
            }
        }
    }
}
