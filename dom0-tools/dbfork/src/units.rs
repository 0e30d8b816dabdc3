//! Sizes and byte ranges as operators type them.

/// Parses `4096`, `512K`, `256M`, `1G`, `4GiB`, `2T` (binary multiples; case-insensitive).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    if t.starts_with('-') {
        return Err(format!(
            "size {s:?}: must be positive, a number like 4096, 256M or 1G"
        ));
    }
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    if num.is_empty() {
        return Err(format!(
            "size {s:?}: expected a number like 4096, 256M or 1G"
        ));
    }
    let n: u64 = num
        .parse()
        .map_err(|_| format!("size {s:?}: number too large"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        other => {
            return Err(format!(
                "size {s:?}: unknown unit {other:?} (use K, M, G or T)"
            ))
        }
    };
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("size {s:?}: too large"))
}

/// Human-readable binary size, for status lines.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < UNITS.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

/// Parses a prefetch ranges file: one `OFFSET LENGTH` pair a line (sizes may carry
/// units), blank lines and `#` comments ignored. Errors name the line.
pub fn parse_ranges(text: &str) -> Result<Vec<(u64, u64)>, String> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let mut parts = line.split_whitespace();
        let (Some(off), Some(len), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(format!(
                "line {}: expected `OFFSET LENGTH`, got {raw:?}",
                i + 1
            ));
        };
        let off = parse_size(off).map_err(|e| format!("line {}: {e}", i + 1))?;
        let len = parse_size(len).map_err(|e| format!("line {}: {e}", i + 1))?;
        out.push((off, len));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("256M"), Ok(256 << 20));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert_eq!(parse_size("4GiB"), Ok(4 << 30));
        assert_eq!(parse_size(" 64 KiB "), Ok(64 << 10));
        assert!(parse_size("").is_err());
        assert!(parse_size("M").is_err());
        assert!(parse_size("12Q").unwrap_err().contains("unknown unit"));
        assert!(parse_size("99999999999T")
            .unwrap_err()
            .contains("too large"));
        assert!(parse_size("-1").is_err());
    }

    #[test]
    fn humans() {
        assert_eq!(human(10), "10 B");
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(1 << 30), "1.0 GiB");
    }

    #[test]
    fn ranges() {
        let r = parse_ranges("# boot files\n0 1M\n\n4096 16384 # a page\n").unwrap();
        assert_eq!(r, vec![(0, 1 << 20), (4096, 16384)]);
        let e = parse_ranges("0 1M\n12\n").unwrap_err();
        assert!(e.starts_with("line 2"), "{e}");
        let e = parse_ranges("0 1X\n").unwrap_err();
        assert!(e.contains("line 1") && e.contains("unknown unit"), "{e}");
    }
}
