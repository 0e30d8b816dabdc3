//! Human or JSON output, chosen once by `--json`.

pub struct Output {
    pub json: bool,
}

impl Output {
    /// Reports a finished action: a sentence for people, an object for scripts.
    pub fn done(&self, human: &str, json: serde_json::Value) {
        if self.json {
            self.print_json(&json);
        } else {
            outln!("{human}");
        }
    }

    pub fn print_json(&self, v: &serde_json::Value) {
        outln!(
            "{}",
            serde_json::to_string_pretty(v).expect("values serialize")
        );
    }
}
