//! MariaDB option files (my.cnf): what an operator's `--defaults-file` says of the
//! client login, and what mariadb-backup's `backup-my.cnf` says a copy of the data
//! needs. Read as the server's own parser reads them: `[group]` headers, `key = value`
//! or a bare `key`, `#` and `;` comments, values in single or double quotes with
//! backslash escapes, `-` and `_` alike in names. `!include` and `!includedir` lines
//! are not followed (a login in an included file is not found: say so).

use std::collections::BTreeMap;
use std::path::Path;

use crate::error::{Error, Result};

/// The options of an option file by group, later settings replacing earlier ones.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OptionFile {
    groups: BTreeMap<String, BTreeMap<String, String>>,
    /// `!include`/`!includedir` lines seen (not followed).
    pub includes: Vec<String>,
}

/// Option names as the server compares them.
fn normalise(key: &str) -> String {
    key.trim().to_ascii_lowercase().replace('-', "_")
}

/// A value without its quotes and escapes, or with an unquoted value's trailing
/// comment cut off.
fn unquote(raw: &str) -> std::result::Result<String, String> {
    let raw = raw.trim();
    let Some(q) = raw.chars().next().filter(|c| *c == '\'' || *c == '"') else {
        // `#` starts a comment after a value only after whitespace (the server's rule).
        let cut = raw
            .char_indices()
            .find(|&(i, c)| c == '#' && raw[..i].ends_with(char::is_whitespace))
            .map_or(raw.len(), |(i, _)| i);
        return Ok(raw[..cut].trim_end().to_string());
    };
    let mut out = String::new();
    let mut chars = raw[1..].chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some('r') => out.push('\r'),
                Some('b') => out.push('\u{8}'),
                Some('s') => out.push(' '),
                Some(other) => out.push(other),
                None => return Err("a value ends in a backslash".into()),
            },
            c if c == q => {
                let rest = chars.as_str().trim_start();
                if !(rest.is_empty() || rest.starts_with('#') || rest.starts_with(';')) {
                    return Err(format!("text after a quoted value: {rest:?}"));
                }
                return Ok(out);
            }
            c => out.push(c),
        }
    }
    Err(format!("a value opened with {q} is not closed"))
}

impl OptionFile {
    /// Parses option-file text; a line the server would refuse is an error naming it.
    pub fn parse(text: &str) -> std::result::Result<Self, String> {
        let mut file = OptionFile::default();
        let mut group: Option<String> = None;
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            let bad = |what: String| format!("line {}: {what}", n + 1);
            if line.starts_with("!include") {
                file.includes.push(line.to_string());
                continue;
            }
            if let Some(rest) = line.strip_prefix('[') {
                let Some(name) = rest.split_once(']').map(|(g, _)| g.trim()) else {
                    return Err(bad(format!("group header {line:?} has no closing ]")));
                };
                if name.is_empty() {
                    return Err(bad("an empty group name".into()));
                }
                group = Some(name.to_ascii_lowercase());
                continue;
            }
            let Some(g) = &group else {
                return Err(bad(format!("option {line:?} comes before any [group]")));
            };
            let (key, value) = match line.split_once('=') {
                Some((k, v)) => (k, unquote(v).map_err(&bad)?),
                None => (line, String::new()),
            };
            let key = normalise(key);
            if key.is_empty() {
                return Err(bad("an option with no name".into()));
            }
            file.groups.entry(g.clone()).or_default().insert(key, value);
        }
        Ok(file)
    }

    /// Reads and parses the file at `path`.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::parse(&text).map_err(|detail| Error::Parse {
            what: path.display().to_string(),
            detail,
        })
    }

    /// `key` as the last of `groups` that sets it says (the order clients read them in).
    pub fn get(&self, groups: &[&str], key: &str) -> Option<&str> {
        let key = normalise(key);
        groups
            .iter()
            .rev()
            .find_map(|g| self.groups.get(*g).and_then(|o| o.get(&key)))
            .map(String::as_str)
    }

    /// Every option of `group`.
    pub fn group(&self, group: &str) -> impl Iterator<Item = (&str, &str)> {
        self.groups
            .get(group)
            .into_iter()
            .flatten()
            .map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

/// The groups a client such as mariadb-backup reads its login from, in order.
pub const CLIENT_GROUPS: [&str; 5] = [
    "client",
    "client-server",
    "client-mariadb",
    "mariadb-backup",
    "mariabackup",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_debian_style_client_file_gives_its_login() {
        let f = OptionFile::parse(
            "# written by an operator\n[client]\nuser = ops\npassword = \"s3cr#t \\\"x\\\"\" # c\n\
             socket=/run/mysqld/mysqld.sock\n\n[mysqld]\nskip-name-resolve\ninnodb-buffer-pool-size = 1G # big\n\
             !includedir /etc/mysql/conf.d/\n",
        )
        .unwrap();
        assert_eq!(f.get(&CLIENT_GROUPS, "user"), Some("ops"));
        assert_eq!(f.get(&CLIENT_GROUPS, "password"), Some("s3cr#t \"x\""));
        assert_eq!(f.get(&["mysqld"], "skip_name_resolve"), Some(""));
        assert_eq!(f.get(&["mysqld"], "innodb_buffer_pool_size"), Some("1G"));
        assert_eq!(f.includes, vec!["!includedir /etc/mysql/conf.d/"]);
    }

    #[test]
    fn a_later_group_wins_as_in_the_client() {
        let f = OptionFile::parse("[client]\nuser=a\n[mariadb-backup]\nuser=b\n").unwrap();
        assert_eq!(f.get(&CLIENT_GROUPS, "user"), Some("b"));
        assert_eq!(f.get(&["client"], "user"), Some("a"));
    }

    #[test]
    fn what_the_server_would_refuse_is_named_with_its_line() {
        for (text, expect) in [
            (
                "user=x\n",
                "line 1: option \"user=x\" comes before any [group]",
            ),
            ("[client\nuser=x\n", "line 1: group header"),
            (
                "[client]\npassword='open\n",
                "line 2: a value opened with ' is not closed",
            ),
            (
                "[client]\npassword='a' b\n",
                "line 2: text after a quoted value",
            ),
            ("[client]\n=x\n", "line 2: an option with no name"),
        ] {
            let e = OptionFile::parse(text).unwrap_err();
            assert!(e.starts_with(expect), "{text:?}: {e}");
        }
    }
}
