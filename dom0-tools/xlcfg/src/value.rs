//! A setting's value: a string, a number (kept as written) or a list of values.

/// How a value is written in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Str(String),
    /// As written (decimal, hex, with a sign or a fraction): xl reads it, we keep it.
    Num(String),
    List(Vec<Value>),
}

impl Value {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_list(&self) -> Option<&[Value]> {
        match self {
            Value::List(l) => Some(l),
            _ => None,
        }
    }

    /// The value in xl's syntax. Strings are double-quoted with `\\` and `\"`
    /// escaped (what libxlu reads back as the same string).
    pub fn render(&self) -> String {
        match self {
            Value::Str(s) => {
                let mut out = String::with_capacity(s.len() + 2);
                out.push('"');
                for c in s.chars() {
                    match c {
                        '"' => out.push_str("\\\""),
                        '\\' => out.push_str("\\\\"),
                        '\n' => out.push_str("\\n"),
                        c => out.push(c),
                    }
                }
                out.push('"');
                out
            }
            Value::Num(n) => n.clone(),
            Value::List(items) if items.is_empty() => "[]".into(),
            Value::List(items) => {
                let inner: Vec<String> = items.iter().map(Value::render).collect();
                let one_line = format!("[ {} ]", inner.join(", "));
                if one_line.len() <= 80 {
                    one_line
                } else {
                    format!("[\n    {},\n]", inner.join(",\n    "))
                }
            }
        }
    }
}
