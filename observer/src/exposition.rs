//! The Prometheus text exposition format (0.0.4), as far as crossover
//! writes it: HELP and TYPE lines, samples with escaped label values. The
//! agent's and the probes' families both go through it, so `/metrics` has
//! one set of rules.
use std::fmt::{Display, Write};

pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A metric family being written.
pub struct Family<'a> {
    out: &'a mut String,
    name: &'static str,
}

/// Starts family `name` of `kind` (counter, gauge, summary) in `out`.
pub fn family<'a>(out: &'a mut String, name: &'static str, kind: &str, help: &str) -> Family<'a> {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    Family { out, name }
}

impl Family<'_> {
    pub fn sample<V: AsRef<str>>(&mut self, labels: &[(&str, V)], value: impl Display) {
        self.sample_suffixed("", labels, value);
    }

    /// A sample of a series the family's name plus `suffix` names, as a
    /// summary's `_sum` and `_count`.
    pub fn sample_suffixed<V: AsRef<str>>(
        &mut self,
        suffix: &str,
        labels: &[(&str, V)],
        value: impl Display,
    ) {
        let _ = write!(self.out, "{}{suffix}", self.name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape(v.as_ref()));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
