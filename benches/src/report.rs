//! Result lines: one `RESULT <scenario> key=value ...` line per scenario on
//! stdout (stable, scripts parse it) and optionally the same as JSON.

use std::path::Path;

/// An ordered set of figures of one scenario.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub scenario: String,
    pub fields: Vec<(String, String)>,
}

impl Report {
    pub fn new(scenario: &str) -> Report {
        Report {
            scenario: scenario.to_string(),
            fields: Vec::new(),
        }
    }

    pub fn int(&mut self, key: &str, v: u64) -> &mut Self {
        self.fields.push((key.to_string(), v.to_string()));
        self
    }

    pub fn num(&mut self, key: &str, v: f64) -> &mut Self {
        let s = if v.abs() >= 100.0 {
            format!("{v:.0}")
        } else if v.abs() >= 1.0 {
            format!("{v:.2}")
        } else {
            format!("{v:.3}")
        };
        self.fields.push((key.to_string(), s));
        self
    }

    pub fn text(&mut self, key: &str, v: &str) -> &mut Self {
        self.fields
            .push((key.to_string(), v.replace(char::is_whitespace, "_")));
        self
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// `RESULT <scenario> k=v ...`
    pub fn line(&self) -> String {
        let mut s = format!("RESULT {}", self.scenario);
        for (k, v) in &self.fields {
            s.push_str(&format!(" {k}={v}"));
        }
        s
    }

    pub fn json(&self) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        m.insert("scenario".into(), self.scenario.clone().into());
        for (k, v) in &self.fields {
            let val = v
                .parse::<f64>()
                .map(serde_json::Value::from)
                .unwrap_or_else(|_| v.clone().into());
            m.insert(k.clone(), val);
        }
        serde_json::Value::Object(m)
    }

    /// Prints the RESULT line and writes JSON if asked.
    pub fn emit(&self, json: Option<&Path>) -> anyhow::Result<()> {
        println!("{}", self.line());
        if let Some(p) = json {
            std::fs::write(p, serde_json::to_string_pretty(&self.json())? + "\n")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_line_format_is_stable() {
        let mut r = Report::new("ingest");
        r.int("agents", 1000)
            .num("records_per_sec", 123456.7)
            .num("p50_ms", 0.8123)
            .text("note", "a b");
        assert_eq!(
            r.line(),
            "RESULT ingest agents=1000 records_per_sec=123457 p50_ms=0.812 note=a_b"
        );
        assert_eq!(r.json()["records_per_sec"], 123457.0);
        assert_eq!(r.json()["note"], "a_b");
    }
}
