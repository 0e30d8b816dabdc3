//! Markdown tables: printed to stdout as they are, and written to the results file.

#[derive(Default)]
pub struct Report {
    out: String,
}

pub struct Table {
    pub title: String,
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
    pub notes: Vec<String>,
}

impl Table {
    pub fn new(title: &str, header: &[&str]) -> Table {
        Table {
            title: title.to_string(),
            header: header.iter().map(|s| s.to_string()).collect(),
            rows: Vec::new(),
            notes: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn note(&mut self, n: impl Into<String>) {
        self.notes.push(n.into());
    }

    fn render(&self) -> String {
        let cols = self.header.len();
        let width: Vec<usize> = (0..cols)
            .map(|c| {
                self.rows
                    .iter()
                    .map(|r| r.get(c).map_or(0, |s| s.chars().count()))
                    .chain([self.header[c].chars().count(), 3])
                    .max()
                    .unwrap_or(3)
            })
            .collect();
        let line = |cells: &[String]| {
            let padded: Vec<String> = (0..cols)
                .map(|c| {
                    let cell = cells.get(c).map_or("", String::as_str);
                    let pad = width[c].saturating_sub(cell.chars().count());
                    format!("{cell}{}", " ".repeat(pad))
                })
                .collect();
            format!("| {} |\n", padded.join(" | "))
        };
        let mut s = format!("### {}\n\n", self.title);
        s += &line(&self.header);
        let dashes: Vec<String> = width.iter().map(|w| "-".repeat(*w)).collect();
        s += &line(&dashes);
        for r in &self.rows {
            s += &line(r);
        }
        for n in &self.notes {
            s += &format!("\n{n}\n");
        }
        s + "\n"
    }
}

impl Report {
    pub fn text(&mut self, t: &str) {
        self.out += t;
        self.out += "\n";
    }

    pub fn table(&mut self, t: &Table) {
        self.out += &t.render();
    }

    pub fn as_str(&self) -> &str {
        &self.out
    }
}

pub fn ms(d: std::time::Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e3)
}

pub fn us(v: f64) -> String {
    format!("{v:.0}")
}

pub fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 && a.is_finite() && b.is_finite() {
        format!("{:.2}x", a / b)
    } else {
        "n/a".into()
    }
}

pub fn human(bytes: u64) -> String {
    const K: u64 = 1024;
    if bytes >= K * K * K && bytes % (K * K * K) == 0 {
        format!("{} GiB", bytes / (K * K * K))
    } else if bytes >= K * K && bytes % (K * K) == 0 {
        format!("{} MiB", bytes / (K * K))
    } else {
        format!("{} KiB", bytes / K)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_columns_line_up() {
        let mut t = Table::new("t", &["a", "µs"]);
        t.row(vec!["long cell".into(), "x".into()]);
        let r = t.render();
        let lines: Vec<&str> = r.lines().filter(|l| l.starts_with('|')).collect();
        assert_eq!(lines.len(), 3);
        let w = |l: &&str| l.chars().count();
        assert!(lines.iter().all(|l| w(l) == w(&lines[0])), "{r}");
    }

    #[test]
    fn ratio_of_zero_is_not_infinite() {
        assert_eq!(ratio(1.0, 0.0), "n/a");
        assert_eq!(ratio(3.0, 2.0), "1.50x");
        assert_eq!(human(256 << 20), "256 MiB");
        assert_eq!(human(4 << 30), "4 GiB");
    }
}
