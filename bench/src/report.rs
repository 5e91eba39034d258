//! The result of one run and its two renderings: a human summary and one `JSON {...}` line.
//!
//! The JSON line is what scripts consume (`grep '^JSON '`); its keys are stable. It is written
//! by hand because a flat object of numbers and a few strings does not justify a serializer
//! dependency.

use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;

use crate::workload::OpKind;

/// An empty histogram of microsecond latencies from 1 µs to 10 min, 3 significant digits (the
/// watch and lease benchmarks; `driver` keeps its own bounds).
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).unwrap_or_else(|_| unreachable!("valid histogram bounds"))
}

/// Latency percentiles of the successful requests, in microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LatencySummary {
    pub count: u64,
    pub mean_us: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

impl LatencySummary {
    /// Reads the summary off a histogram of microsecond values.
    pub fn from_histogram(histogram: &Histogram<u64>) -> Self {
        if histogram.is_empty() {
            return Self::default();
        }
        Self {
            count: histogram.len(),
            mean_us: histogram.mean(),
            p50_us: histogram.value_at_quantile(0.50),
            p90_us: histogram.value_at_quantile(0.90),
            p99_us: histogram.value_at_quantile(0.99),
            p999_us: histogram.value_at_quantile(0.999),
            max_us: histogram.max(),
        }
    }
}

/// Everything measured in one run.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RunReport {
    /// The benchmark (`put`, `range`, ...) or compare scenario name.
    pub label: String,
    /// The server under test, when `compare` knows it.
    pub server: Option<String>,
    pub clients: usize,
    pub conns: usize,
    /// Successful requests (including `txn-put` compares that failed).
    pub ops: u64,
    /// Requests answered with an error or timed out.
    pub errors: u64,
    /// `txn-put` responses whose compare failed.
    pub cas_failed: u64,
    /// Successful requests per kind, indexed by [`OpKind::index`].
    pub ops_by_kind: [u64; OpKind::ALL.len()],
    /// From the first request sent to the last answer received.
    pub elapsed: Duration,
    pub latency: LatencySummary,
    pub server_cpu: Option<Duration>,
    pub client_cpu: Option<Duration>,
    pub server_rss_kib: Option<u64>,
    /// The first error message seen, to tell a flaky server from a wrong endpoint.
    pub first_error: Option<String>,
    /// The run stopped early because `--max-errors` was exceeded.
    pub aborted: bool,
}

impl RunReport {
    pub fn ops_per_sec(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.ops as f64 / secs
        } else {
            0.0
        }
    }

    /// CPU per answered request (errors cost the server work too).
    fn per_op_us(&self, cpu: Option<Duration>) -> Option<f64> {
        let requests = self.ops + self.errors;
        cpu.filter(|_| requests > 0).map(|cpu| cpu.as_secs_f64() * 1e6 / requests as f64)
    }

    pub fn server_cpu_us_per_op(&self) -> Option<f64> {
        self.per_op_us(self.server_cpu)
    }

    pub fn client_cpu_us_per_op(&self) -> Option<f64> {
        self.per_op_us(self.client_cpu)
    }

    /// A few aligned lines for a person.
    pub fn human(&self) -> String {
        let mut out = String::new();
        let server = self.server.as_deref().map(|s| format!(" [{s}]")).unwrap_or_default();
        let _ = writeln!(out, "{}{server}: {} clients, {} conns", self.label, self.clients, self.conns);
        let _ = writeln!(
            out,
            "  requests   {} ok in {:.3} s = {:.0} ops/s; errors {}{}{}",
            self.ops,
            self.elapsed.as_secs_f64(),
            self.ops_per_sec(),
            self.errors,
            if self.cas_failed > 0 { format!("; cas failed {}", self.cas_failed) } else { String::new() },
            if self.aborted { " (aborted: too many errors)" } else { "" },
        );
        let l = &self.latency;
        let _ = writeln!(
            out,
            "  latency us p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  (mean {:.0})",
            l.p50_us, l.p90_us, l.p99_us, l.p999_us, l.max_us, l.mean_us
        );
        let _ = writeln!(
            out,
            "  cpu us/op  server {}  client {}",
            fmt_opt(self.server_cpu_us_per_op()),
            fmt_opt(self.client_cpu_us_per_op()),
        );
        if let Some(kib) = self.server_rss_kib {
            let _ = writeln!(out, "  server RSS {:.1} MiB", kib as f64 / 1024.0);
        }
        if self.ops_by_kind.iter().filter(|&&n| n > 0).count() > 1 {
            let mix: Vec<String> = OpKind::ALL
                .iter()
                .filter(|kind| self.ops_by_kind[kind.index()] > 0)
                .map(|kind| format!("{} {}", kind.name(), self.ops_by_kind[kind.index()]))
                .collect();
            let _ = writeln!(out, "  by kind    {}", mix.join(", "));
        }
        if let Some(error) = &self.first_error {
            let _ = writeln!(out, "  first error: {error}");
        }
        out
    }

    /// The machine-readable line, prefixed with `JSON `.
    pub fn json_line(&self) -> String {
        let l = &self.latency;
        let mut json = JsonObject::new();
        json.str("bench", &self.label);
        json.opt_str("server", self.server.as_deref());
        json.uint("clients", self.clients as u64);
        json.uint("conns", self.conns as u64);
        json.uint("ops", self.ops);
        json.uint("errors", self.errors);
        json.uint("cas_failed", self.cas_failed);
        json.bool("aborted", self.aborted);
        json.float("elapsed_s", Some(self.elapsed.as_secs_f64()));
        json.float("ops_per_s", Some(self.ops_per_sec()));
        json.float("lat_mean_us", Some(l.mean_us));
        json.uint("lat_p50_us", l.p50_us);
        json.uint("lat_p90_us", l.p90_us);
        json.uint("lat_p99_us", l.p99_us);
        json.uint("lat_p999_us", l.p999_us);
        json.uint("lat_max_us", l.max_us);
        json.float("server_cpu_us_per_op", self.server_cpu_us_per_op());
        json.float("client_cpu_us_per_op", self.client_cpu_us_per_op());
        json.opt_uint("server_rss_kib", self.server_rss_kib);
        for kind in OpKind::ALL {
            let count = self.ops_by_kind[kind.index()];
            if count > 0 {
                json.uint(&format!("ops_{}", kind.name()), count);
            }
        }
        json.opt_str("first_error", self.first_error.as_deref());
        format!("JSON {}", json.finish())
    }
}

/// A number with one decimal, or `-` when not measured.
pub fn fmt_opt(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| format!("{v:.1}"))
}

/// Builds one flat JSON object; keys are ours and need no escaping, string values do.
struct JsonObject {
    buf: String,
}

impl JsonObject {
    fn new() -> Self {
        Self { buf: String::from("{") }
    }

    fn key(&mut self, key: &str) {
        if self.buf.len() > 1 {
            self.buf.push(',');
        }
        self.buf.push('"');
        self.buf.push_str(key);
        self.buf.push_str("\":");
    }

    fn str(&mut self, key: &str, value: &str) {
        self.key(key);
        push_json_string(&mut self.buf, value);
    }

    fn opt_str(&mut self, key: &str, value: Option<&str>) {
        match value {
            Some(value) => self.str(key, value),
            None => {
                self.key(key);
                self.buf.push_str("null");
            }
        }
    }

    fn uint(&mut self, key: &str, value: u64) {
        self.key(key);
        let _ = write!(self.buf, "{value}");
    }

    fn opt_uint(&mut self, key: &str, value: Option<u64>) {
        match value {
            Some(value) => self.uint(key, value),
            None => {
                self.key(key);
                self.buf.push_str("null");
            }
        }
    }

    fn bool(&mut self, key: &str, value: bool) {
        self.key(key);
        self.buf.push_str(if value { "true" } else { "false" });
    }

    /// JSON has no NaN or infinity, so those become `null` like a missing value.
    fn float(&mut self, key: &str, value: Option<f64>) {
        self.key(key);
        match value.filter(|v| v.is_finite()) {
            Some(v) => {
                let _ = write!(self.buf, "{v:.3}");
            }
            None => self.buf.push_str("null"),
        }
    }

    fn finish(mut self) -> String {
        self.buf.push('}');
        self.buf
    }
}

/// Appends `value` as a JSON string literal (RFC 8259 escaping).
fn push_json_string(buf: &mut String, value: &str) {
    buf.push('"');
    for c in value.chars() {
        match c {
            '"' => buf.push_str("\\\""),
            '\\' => buf.push_str("\\\\"),
            '\n' => buf.push_str("\\n"),
            '\r' => buf.push_str("\\r"),
            '\t' => buf.push_str("\\t"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(buf, "\\u{:04x}", u32::from(c));
            }
            c => buf.push(c),
        }
    }
    buf.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn histogram() -> Histogram<u64> {
        Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")
    }

    #[test]
    fn latency_summary_uniform_values_gives_expected_percentiles() {
        let mut h = histogram();
        for us in 1..=1000 {
            h.record(us).expect("in range");
        }
        let s = LatencySummary::from_histogram(&h);
        assert_eq!(s.count, 1000);
        assert_eq!(s.p50_us, 500);
        assert_eq!(s.p90_us, 900);
        assert_eq!(s.p99_us, 990);
        assert_eq!(s.p999_us, 999);
        assert_eq!(s.max_us, 1000);
        assert!((s.mean_us - 500.5).abs() < 1.0);
    }

    #[test]
    fn latency_summary_single_outlier_shows_only_in_tail() {
        let mut h = histogram();
        h.record_n(100, 9_999).expect("in range");
        h.record(50_000).expect("in range");
        let s = LatencySummary::from_histogram(&h);
        assert_eq!(s.p99_us, 100);
        assert_eq!(s.p999_us, 100);
        // Three significant digits: the max is reported within 0.1 %.
        assert!((49_950..=50_050).contains(&s.max_us));
    }

    #[test]
    fn latency_summary_empty_histogram_is_zero() {
        assert_eq!(LatencySummary::from_histogram(&histogram()), LatencySummary::default());
    }

    #[test]
    fn json_line_has_prefix_and_nulls_for_unmeasured() {
        let report = RunReport {
            label: "put".into(),
            clients: 16,
            conns: 4,
            ops: 1000,
            elapsed: Duration::from_millis(500),
            client_cpu: Some(Duration::from_millis(50)),
            first_error: Some("bad \"quote\"\n".into()),
            ..RunReport::default()
        };
        let line = report.json_line();
        assert!(line.starts_with("JSON {\"bench\":\"put\",\"server\":null,"));
        assert!(line.contains("\"ops_per_s\":2000.000"));
        assert!(line.contains("\"server_cpu_us_per_op\":null"));
        assert!(line.contains("\"client_cpu_us_per_op\":50.000"));
        assert!(line.contains("\"first_error\":\"bad \\\"quote\\\"\\n\""));
        assert!(line.ends_with('}'));
        assert!(!line.contains('\n'));
    }

    #[test]
    fn json_string_escapes_control_characters() {
        let mut buf = String::new();
        push_json_string(&mut buf, "a\u{1}b\\");
        assert_eq!(buf, "\"a\\u0001b\\\\\"");
    }
}
