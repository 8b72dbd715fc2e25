//! What one sweep measured, and the three ways it is shown: a table on stdout, a CSV and a
//! latency-versus-throughput chart (SVG) under the output directory.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context as _;
use hdrhistogram::Histogram;

/// Latencies of one kind of operation at one rate, in microseconds from the intended
/// send time (so a call that waited behind a slow one counts its wait).
pub struct OpStats {
    pub op: &'static str,
    pub count: u64,
    pub errors: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl OpStats {
    pub fn of(op: &'static str, hist: &Histogram<u64>, errors: u64) -> OpStats {
        let ms = |us: u64| us as f64 / 1000.0;
        OpStats {
            op,
            count: hist.len(),
            errors,
            p50_ms: ms(hist.value_at_quantile(0.5)),
            p99_ms: ms(hist.value_at_quantile(0.99)),
            p999_ms: ms(hist.value_at_quantile(0.999)),
            max_ms: ms(hist.max()),
        }
    }
}

/// One arrival rate of the sweep.
pub struct Step {
    /// Requests per second asked for.
    pub target: f64,
    /// Requests per second answered successfully, over the step's wall time.
    pub achieved: f64,
    /// Per operation, then `all` last.
    pub ops: Vec<OpStats>,
    /// CPU seconds each process spent during the step, and the step's wall seconds.
    pub cpu: Vec<(String, f64)>,
    pub wall_seconds: f64,
}

impl Step {
    pub fn all(&self) -> &OpStats {
        self.ops.last().expect("a step has the `all` row")
    }

    pub fn error_ratio(&self) -> f64 {
        let all = self.all();
        all.errors as f64 / all.count.max(1) as f64
    }

    /// The step held the rate: p99 under the limit, at most 1% errors, and at least 95% of
    /// the asked rate answered (an overloaded generator or system falls behind first).
    pub fn passes(&self, p99_limit_ms: f64) -> bool {
        self.all().p99_ms < p99_limit_ms
            && self.error_ratio() <= 0.01
            && self.achieved >= 0.95 * self.target
    }
}

/// The highest rate that [`Step::passes`].
pub fn max_rate(steps: &[Step], p99_limit_ms: f64) -> Option<&Step> {
    steps
        .iter()
        .filter(|s| s.passes(p99_limit_ms))
        .max_by(|a, b| a.achieved.total_cmp(&b.achieved))
}

/// The step as table rows for stdout.
pub fn table(step: &Step) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "rate {:.0}/s: achieved {:.0}/s, errors {} ({:.2}%), {:.1} s",
        step.target,
        step.achieved,
        step.all().errors,
        100.0 * step.error_ratio(),
        step.wall_seconds
    );
    let _ = writeln!(
        out,
        "  {:<14} {:>8} {:>7} {:>9} {:>9} {:>9} {:>9}",
        "operation", "calls", "errors", "p50 ms", "p99 ms", "p99.9 ms", "max ms"
    );
    for o in &step.ops {
        let _ = writeln!(
            out,
            "  {:<14} {:>8} {:>7} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
            o.op, o.count, o.errors, o.p50_ms, o.p99_ms, o.p999_ms, o.max_ms
        );
    }
    let total: f64 = step.cpu.iter().map(|(_, s)| s).sum();
    let _ = writeln!(
        out,
        "  cpu seconds: {} (total {:.1}, {:.2} cores)",
        step.cpu
            .iter()
            .map(|(p, s)| format!("{p} {s:.2}"))
            .collect::<Vec<_>>()
            .join(", "),
        total,
        total / step.wall_seconds.max(1e-9)
    );
    out
}

/// One row per (rate, operation), then one per (rate, process) in a second file.
pub fn write_csv(dir: &Path, stem: &str, steps: &[Step]) -> anyhow::Result<()> {
    let mut lat = String::from(
        "target_rate,achieved_rate,operation,calls,errors,p50_ms,p99_ms,p999_ms,max_ms\n",
    );
    let mut cpu = String::from("target_rate,process,cpu_seconds,wall_seconds\n");
    for s in steps {
        for o in &s.ops {
            let _ = writeln!(
                lat,
                "{:.0},{:.1},{},{},{},{:.3},{:.3},{:.3},{:.3}",
                s.target,
                s.achieved,
                o.op,
                o.count,
                o.errors,
                o.p50_ms,
                o.p99_ms,
                o.p999_ms,
                o.max_ms
            );
        }
        for (p, secs) in &s.cpu {
            let _ = writeln!(cpu, "{:.0},{p},{secs:.3},{:.3}", s.target, s.wall_seconds);
        }
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let write = |name: String, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
    };
    write(format!("{stem}.csv"), &lat)?;
    write(format!("{stem}-cpu.csv"), &cpu)
}

/// p50, p99 and p99.9 of all operations against the achieved rate, log latency axis, with
/// the 50 ms line.
pub fn write_svg(
    path: &Path,
    title: &str,
    steps: &[Step],
    p99_limit_ms: f64,
) -> anyhow::Result<()> {
    use plotters::prelude::*;
    if steps.is_empty() {
        return Ok(());
    }
    let x_max = steps.iter().map(|s| s.achieved).fold(1.0, f64::max) * 1.1;
    let y_max = steps
        .iter()
        .map(|s| s.all().p999_ms)
        .fold(p99_limit_ms, f64::max)
        * 2.0;
    let y_min = steps
        .iter()
        .map(|s| s.all().p50_ms)
        .fold(f64::INFINITY, f64::min)
        .clamp(0.01, 1.0)
        / 2.0;
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    let draw = || -> Result<(), Box<dyn std::error::Error + '_>> {
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(16)
            .x_label_area_size(44)
            .y_label_area_size(64)
            .build_cartesian_2d(0f64..x_max, (y_min..y_max).log_scale())?;
        chart
            .configure_mesh()
            .x_desc("achieved requests/s")
            .y_desc("latency, ms (log)")
            .draw()?;
        type Series = (&'static str, RGBColor, fn(&OpStats) -> f64);
        let series: [Series; 3] = [
            ("p50", BLUE, |o| o.p50_ms),
            ("p99", RED, |o| o.p99_ms),
            ("p99.9", MAGENTA, |o| o.p999_ms),
        ];
        for (name, color, value) in series {
            let points: Vec<(f64, f64)> = steps
                .iter()
                .map(|s| (s.achieved, value(s.all()).max(y_min)))
                .collect();
            chart
                .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
                .label(name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
            chart.draw_series(
                points
                    .into_iter()
                    .map(|p| Circle::new(p, 3, color.filled())),
            )?;
        }
        chart
            .draw_series(LineSeries::new(
                vec![(0.0, p99_limit_ms), (x_max, p99_limit_ms)],
                BLACK.mix(0.4),
            ))?
            .label(format!("{p99_limit_ms} ms"))
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.mix(0.4)));
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
        root.present()?;
        Ok(())
    };
    draw().map_err(|e| anyhow::anyhow!("drawing {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(target: f64, achieved: f64, p99: f64, errors: u64) -> Step {
        let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
        for _ in 0..99 {
            h.record(1_000).unwrap();
        }
        h.record((p99 * 1000.0) as u64).unwrap();
        let mut all = OpStats::of("all", &h, errors);
        all.p99_ms = p99;
        Step {
            target,
            achieved,
            ops: vec![all],
            cpu: vec![("tweet".into(), 1.0)],
            wall_seconds: 1.0,
        }
    }

    #[test]
    fn the_max_rate_is_the_highest_passing_step() {
        let steps = vec![
            step(100.0, 100.0, 5.0, 0),
            step(200.0, 199.0, 20.0, 0),
            // Too slow.
            step(400.0, 390.0, 80.0, 0),
            // Fast but fell behind the asked rate.
            step(800.0, 500.0, 10.0, 0),
            // Fast but failing.
            step(300.0, 300.0, 10.0, 50),
        ];
        assert_eq!(max_rate(&steps, 50.0).map(|s| s.target), Some(200.0));
        assert!(max_rate(&steps[2..4], 50.0).is_none());
    }

    #[test]
    fn csv_and_chart_are_written() {
        let dir = tempfile::tempdir().unwrap();
        let steps = vec![step(100.0, 100.0, 5.0, 0), step(200.0, 199.0, 20.0, 0)];
        write_csv(dir.path(), "load", &steps).unwrap();
        let csv = std::fs::read_to_string(dir.path().join("load.csv")).unwrap();
        assert_eq!(csv.lines().count(), 3);
        assert!(csv
            .lines()
            .nth(2)
            .unwrap()
            .starts_with("200,199.0,all,100,0,"));
        let cpu = std::fs::read_to_string(dir.path().join("load-cpu.csv")).unwrap();
        assert!(cpu.contains("\n100,tweet,1.000,1.000\n"));
        let svg = dir.path().join("load.svg");
        write_svg(&svg, "test", &steps, 50.0).unwrap();
        let text = std::fs::read_to_string(svg).unwrap();
        assert!(text.starts_with("<svg") && text.contains("p99.9"));
        assert!(table(&steps[0]).contains("achieved 100/s"));
    }
}
