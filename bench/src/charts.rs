//! PNG charts of the KV comparison for docs/PERFORMANCE.md: throughput and p99 latency against
//! the number of clients, one line per workload and server.
//!
//! Drawn by `compare --charts DIR` from the runs just made, or by `charts --from LOG` from the
//! `JSON` lines a saved compare log holds, so a chart never needs the benchmark rerun.
//! Text is rendered from a TrueType file (DejaVu Sans, Debian's `fonts-dejavu-core`, which
//! scripts/setup.sh installs) rather than through fontconfig.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use plotters::prelude::*;

use crate::error::BenchError;

/// The font the charts are labelled with.
pub const FONT_PATH: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
const FONT_FAMILY: &str = "sans-serif";
const SIZE: (u32, u32) = (900, 560);

/// One measured run: a workload at a client count against one server.
#[derive(Clone, Debug, PartialEq)]
pub struct Point {
    /// The scenario name without its client count: `put`, `range-s`, ...
    pub workload: String,
    pub server: String,
    pub clients: usize,
    pub ops_per_s: f64,
    pub p99_ms: f64,
}

impl Point {
    /// A run of the compare scenario `label` (`<workload>-<clients>`, e.g. `put-16`); `None` for
    /// a label without a client count.
    pub fn of_scenario(label: &str, server: &str, clients: usize, ops_per_s: f64, p99_us: f64) -> Option<Point> {
        let (workload, count) = label.rsplit_once('-')?;
        count.parse::<usize>().ok()?;
        Some(Point {
            workload: workload.to_owned(),
            server: server.to_owned(),
            clients,
            ops_per_s,
            p99_ms: p99_us / 1000.0,
        })
    }
}

/// The points of a compare log: its `JSON` lines of KV scenarios (with a server), skipping
/// watch and lease lines and anything that does not parse.
pub fn points_from_log(text: &str) -> Vec<Point> {
    text.lines()
        .filter_map(|line| line.strip_prefix("JSON "))
        .filter_map(|json| serde_json::from_str::<serde_json::Value>(json).ok())
        .filter_map(|v| {
            Point::of_scenario(
                v.get("bench")?.as_str()?,
                v.get("server")?.as_str()?,
                usize::try_from(v.get("clients")?.as_u64()?).ok()?,
                v.get("ops_per_s")?.as_f64()?,
                v.get("lat_p99_us")?.as_f64()?,
            )
        })
        .collect()
}

/// One line of a chart: (clients, value) pairs in client order.
type Series = BTreeMap<(String, String), Vec<(usize, f64)>>;

/// Groups points into lines (workload, server), keeping only workloads measured at two or more
/// client counts: a single point is no line.
fn series(points: &[Point], value: impl Fn(&Point) -> f64) -> Series {
    let mut out: Series = BTreeMap::new();
    for p in points {
        out.entry((p.workload.clone(), p.server.clone())).or_default().push((p.clients, value(p)));
    }
    out.retain(|_, line| {
        line.sort_by_key(|&(c, _)| c);
        line.dedup_by_key(|&mut (c, _)| c);
        line.len() >= 2
    });
    out
}

/// Writes `throughput.png` and `p99.png` into `dir`; returns their paths.
pub fn write(dir: &Path, points: &[Point]) -> Result<Vec<PathBuf>, BenchError> {
    let chart_err = |path: &Path, reason: String| BenchError::Chart { path: path.to_path_buf(), reason };
    register_font().map_err(|reason| chart_err(Path::new(FONT_PATH), reason))?;
    std::fs::create_dir_all(dir).map_err(|e| chart_err(dir, e.to_string()))?;
    let charts = [
        ("throughput.png", "Throughput vs clients (higher is better)", "ops/s", series(points, |p| p.ops_per_s)),
        ("p99.png", "p99 latency vs clients (lower is better)", "p99 latency (ms)", series(points, |p| p.p99_ms)),
    ];
    let mut written = Vec::new();
    for (file, title, y_label, lines) in charts {
        let path = dir.join(file);
        if lines.is_empty() {
            return Err(chart_err(&path, "no workload was measured at two or more client counts".into()));
        }
        draw(&path, title, y_label, &lines).map_err(|reason| chart_err(&path, reason))?;
        written.push(path);
    }
    Ok(written)
}

fn register_font() -> Result<(), String> {
    let bytes = std::fs::read(FONT_PATH).map_err(|e| format!("{e} (install fonts-dejavu-core: scripts/setup.sh)"))?;
    // plotters keeps registered fonts for the life of the process.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font(FONT_FAMILY, FontStyle::Normal, bytes).map_err(|_| "not a usable font".to_string())
}

/// Clients on a log-2 x axis (1, 16, 256 are evenly spaced), values on a linear y axis from 0.
fn draw(path: &Path, title: &str, y_label: &str, lines: &Series) -> Result<(), String> {
    let err = |e: &dyn std::fmt::Display| e.to_string();
    let max_clients = lines.values().flatten().map(|&(c, _)| c).max().unwrap_or(1).max(2);
    let max_y = lines.values().flatten().map(|&(_, v)| v).fold(0.0_f64, f64::max).max(1e-9) * 1.1;
    let x_max = (max_clients as f64).log2();
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, (FONT_FAMILY, 22))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(70)
        .build_cartesian_2d(-0.3..x_max + 0.3, 0.0..max_y)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("clients")
        .y_desc(y_label)
        .x_labels(x_max as usize + 1)
        .x_label_formatter(&|x| {
            let c = 2f64.powf(x.round());
            if (x - x.round()).abs() < 0.05 {
                format!("{c}")
            } else {
                String::new()
            }
        })
        .y_label_formatter(&|y| if max_y >= 100.0 { format!("{y:.0}") } else { format!("{y:.1}") })
        .label_style((FONT_FAMILY, 14))
        .draw()
        .map_err(|e| err(&e))?;
    // One colour per workload; corekv's line thick, etcd's thin.
    let mut workloads: Vec<&String> = lines.keys().map(|(w, _)| w).collect();
    workloads.dedup();
    for ((workload, server), line) in lines {
        let index = workloads.iter().position(|w| *w == workload).unwrap_or(0);
        let color = Palette99::pick(index).to_rgba();
        let style = ShapeStyle { color, filled: true, stroke_width: if server == "corekv" { 3 } else { 1 } };
        let pts: Vec<(f64, f64)> = line.iter().map(|&(c, v)| ((c as f64).log2(), v)).collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), style))
            .map_err(|e| err(&e))?
            .label(format!("{workload} — {server}"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
        chart.draw_series(pts.into_iter().map(|p| Circle::new(p, 4, style))).map_err(|e| err(&e))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font((FONT_FAMILY, 14))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = r#"  requests 10 ok
JSON {"bench":"put-1","server":"etcd","clients":1,"ops_per_s":1000.5,"lat_p99_us":1500}
JSON {"bench":"put-16","server":"etcd","clients":16,"ops_per_s":6000,"lat_p99_us":7000}
JSON {"bench":"put-1","server":"corekv","clients":1,"ops_per_s":1200,"lat_p99_us":1600}
JSON {"bench":"put-16","server":"corekv","clients":16,"ops_per_s":8000,"lat_p99_us":3500}
JSON {"bench":"txn-put-16","server":"corekv","clients":16,"ops_per_s":6600,"lat_p99_us":5000}
JSON {"bench":"watch","label":"watch-1k","server":"corekv","watchers":1000}
JSON {"bench":"put","server":null,"clients":1,"ops_per_s":1,"lat_p99_us":1}
JSON not json"#;

    #[test]
    fn log_lines_become_points_and_single_points_are_no_line() {
        let points = points_from_log(LOG);
        assert_eq!(points.len(), 5, "watch, server-less and broken lines are skipped: {points:?}");
        assert_eq!(
            points[0],
            Point { workload: "put".into(), server: "etcd".into(), clients: 1, ops_per_s: 1000.5, p99_ms: 1.5 }
        );
        let lines = series(&points, |p| p.ops_per_s);
        let keys: Vec<_> = lines.keys().cloned().collect();
        assert_eq!(keys, vec![("put".to_string(), "corekv".to_string()), ("put".to_string(), "etcd".to_string())]);
        assert_eq!(lines[&("put".to_string(), "corekv".to_string())], vec![(1, 1200.0), (16, 8000.0)]);
    }

    #[test]
    fn charts_are_written_as_png_when_the_font_is_there() {
        if !Path::new(FONT_PATH).exists() {
            // scripts/setup.sh installs the font; without it `write` must say so.
            let d = tempfile::tempdir().expect("tmp");
            let e = write(d.path(), &points_from_log(LOG)).expect_err("no font");
            assert!(e.to_string().contains("fonts-dejavu-core"), "{e}");
            return;
        }
        let d = tempfile::tempdir().expect("tmp");
        let paths = write(d.path(), &points_from_log(LOG)).expect("charts");
        for p in paths {
            let bytes = std::fs::read(&p).expect("read");
            assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "{} is a PNG", p.display());
            assert!(bytes.len() > 5_000, "{} has content", p.display());
        }
    }
}
