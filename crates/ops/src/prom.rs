//! The Prometheus text exposition format (version 0.0.4), written once:
//! a family's `# HELP`/`# TYPE` header, its samples right after it, label
//! values and help text escaped as the format requires.

use std::fmt::Write as _;

/// The `Content-Type` of a rendered page.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4";

/// The `# TYPE` of a family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// A sample value: integers print as integers, floats as Rust prints them
/// (`1.5`, `90`), non-finite floats as the format spells them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value {
    Int(u64),
    Float(f64),
}

impl From<u64> for Value {
    fn from(v: u64) -> Value {
        Value::Int(v)
    }
}

impl From<u32> for Value {
    fn from(v: u32) -> Value {
        Value::Int(v.into())
    }
}

impl From<u8> for Value {
    fn from(v: u8) -> Value {
        Value::Int(v.into())
    }
}

impl From<bool> for Value {
    fn from(v: bool) -> Value {
        Value::Int(v.into())
    }
}

impl From<f64> for Value {
    fn from(v: f64) -> Value {
        Value::Float(v)
    }
}

fn write_value(out: &mut String, v: Value) {
    let _ = match v {
        Value::Int(n) => write!(out, "{n}"),
        Value::Float(f) if f.is_nan() => write!(out, "NaN"),
        Value::Float(f) if f == f64::INFINITY => write!(out, "+Inf"),
        Value::Float(f) if f == f64::NEG_INFINITY => write!(out, "-Inf"),
        Value::Float(f) => write!(out, "{f}"),
    };
}

/// Label values: backslash, double quote and line feed are escaped.
fn write_label_value(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// Help text: backslash and line feed are escaped (quotes are not).
fn write_help(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// `{a="x",b="y"}` (nothing without labels), `extra` appended last.
fn write_labels(out: &mut String, labels: &[(&str, &str)], extra: Option<(&str, &str)>) {
    if labels.is_empty() && extra.is_none() {
        return;
    }
    out.push('{');
    for (i, (k, v)) in labels.iter().chain(extra.as_ref()).enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(k);
        out.push_str("=\"");
        write_label_value(out, v);
        out.push('"');
    }
    out.push('}');
}

/// A page of metric families.
#[derive(Debug, Default)]
pub struct Writer {
    out: String,
    #[cfg(debug_assertions)]
    names: std::collections::BTreeSet<String>,
}

impl Writer {
    pub fn new() -> Writer {
        Writer::default()
    }

    /// Starts a family: writes its HELP and TYPE lines; its samples follow.
    /// A name may start one family only (the format wants a family's
    /// samples together).
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) -> Family<'_> {
        #[cfg(debug_assertions)]
        debug_assert!(
            self.names.insert(name.to_string()),
            "metric family {name} written twice"
        );
        let o = &mut self.out;
        let _ = write!(o, "# HELP {name} ");
        write_help(o, help);
        let _ = writeln!(o, "\n# TYPE {name} {}", kind.as_str());
        Family {
            out: &mut self.out,
            name: name.to_string(),
        }
    }

    /// A family of one unlabelled sample.
    pub fn single(&mut self, name: &str, kind: Kind, help: &str, v: impl Into<Value>) {
        self.family(name, kind, help).sample(&[], v);
    }

    /// Appends a page rendered elsewhere (another component's families).
    pub fn append(&mut self, page: &str) {
        self.out.push_str(page);
    }

    pub fn finish(self) -> String {
        self.out
    }
}

/// The samples of one family.
pub struct Family<'w> {
    out: &'w mut String,
    name: String,
}

impl Family<'_> {
    /// One sample: `name{labels} value`.
    pub fn sample(&mut self, labels: &[(&str, &str)], v: impl Into<Value>) -> &mut Self {
        self.out.push_str(&self.name);
        write_labels(self.out, labels, None);
        self.out.push(' ');
        write_value(self.out, v.into());
        self.out.push('\n');
        self
    }

    /// One histogram series: `buckets` are (upper bound, observations in
    /// that bucket alone); they are written cumulative, then `+Inf` (=
    /// `count`), `_sum` and `_count`.
    pub fn histogram(
        &mut self,
        labels: &[(&str, &str)],
        buckets: &[(f64, u64)],
        sum: f64,
        count: u64,
    ) -> &mut Self {
        let mut cum = 0u64;
        let mut le = String::new();
        for (bound, n) in buckets {
            cum = cum.saturating_add(*n);
            le.clear();
            write_value(&mut le, Value::Float(*bound));
            self.line("_bucket", labels, Some(("le", &le)), Value::Int(cum));
        }
        self.line("_bucket", labels, Some(("le", "+Inf")), Value::Int(count));
        self.line("_sum", labels, None, Value::Float(sum));
        self.line("_count", labels, None, Value::Int(count));
        self
    }

    fn line(
        &mut self,
        suffix: &str,
        labels: &[(&str, &str)],
        extra: Option<(&str, &str)>,
        v: Value,
    ) {
        self.out.push_str(&self.name);
        self.out.push_str(suffix);
        write_labels(self.out, labels, extra);
        self.out.push(' ');
        write_value(self.out, v);
        self.out.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_once_then_samples() {
        let mut w = Writer::new();
        w.family("x_total", Kind::Counter, "Things.")
            .sample(&[("role", "primary")], 3u64)
            .sample(&[("role", "standby")], 0u64);
        w.single("up", Kind::Gauge, "Up.", true);
        assert_eq!(
            w.finish(),
            "# HELP x_total Things.\n# TYPE x_total counter\n\
             x_total{role=\"primary\"} 3\nx_total{role=\"standby\"} 0\n\
             # HELP up Up.\n# TYPE up gauge\nup 1\n"
        );
    }

    #[test]
    fn label_values_and_help_are_escaped() {
        let mut w = Writer::new();
        w.family("m", Kind::Gauge, "a \\ b\nc \"q\"").sample(
            &[("a", "say \"hi\""), ("b", "c:\\dir"), ("c", "two\nlines")],
            1u64,
        );
        assert_eq!(
            w.finish(),
            "# HELP m a \\\\ b\\nc \"q\"\n# TYPE m gauge\n\
             m{a=\"say \\\"hi\\\"\",b=\"c:\\\\dir\",c=\"two\\nlines\"} 1\n"
        );
    }

    #[test]
    fn floats_print_as_the_format_spells_them() {
        let mut w = Writer::new();
        w.family("f", Kind::Gauge, "F.")
            .sample(&[], 1.5)
            .sample(&[], 90.0)
            .sample(&[], f64::NAN)
            .sample(&[], f64::INFINITY)
            .sample(&[], f64::NEG_INFINITY);
        assert!(w.finish().ends_with("f 1.5\nf 90\nf NaN\nf +Inf\nf -Inf\n"));
    }

    #[test]
    fn histogram_is_cumulative_with_inf_sum_and_count() {
        let mut w = Writer::new();
        w.family("rt_seconds", Kind::Histogram, "Latency.")
            .histogram(
                &[("server", "a")],
                &[(0.005, 1), (0.25, 2), (10.0, 0)],
                61.5,
                4,
            );
        assert_eq!(
            w.finish(),
            "# HELP rt_seconds Latency.\n# TYPE rt_seconds histogram\n\
             rt_seconds_bucket{server=\"a\",le=\"0.005\"} 1\n\
             rt_seconds_bucket{server=\"a\",le=\"0.25\"} 3\n\
             rt_seconds_bucket{server=\"a\",le=\"10\"} 3\n\
             rt_seconds_bucket{server=\"a\",le=\"+Inf\"} 4\n\
             rt_seconds_sum{server=\"a\"} 61.5\n\
             rt_seconds_count{server=\"a\"} 4\n"
        );
    }

    #[test]
    fn histogram_without_labels() {
        let mut w = Writer::new();
        w.family("h", Kind::Histogram, "H.")
            .histogram(&[], &[(1.0, 0)], 0.0, 0);
        assert!(w
            .finish()
            .ends_with("h_bucket{le=\"1\"} 0\nh_bucket{le=\"+Inf\"} 0\nh_sum 0\nh_count 0\n"));
    }
}
