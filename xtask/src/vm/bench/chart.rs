//! The bench's chart (target/bench/throughput.svg): delivered MB/s and lost % against the
//! offered rate, ours and C, one row of panels per guest and mode. Fixture panels take the
//! fixed-rate and max rows (tmpfs output; the copy ceiling of each print size as a flat line),
//! real-workload panels the rate sweep of the SystemTap 4.x/5.x modules.

use std::collections::BTreeSet;

use plotters::prelude::*;

use super::report::{GuestResults, RealRun, Run};

const PANEL: (u32, u32) = (420, 300);

/// One plotted series: label, colour, points (offered MB/s, value).
struct Series {
    label: String,
    color: RGBColor,
    points: Vec<(f64, f64)>,
    /// A flat reference line (the ceiling) instead of measured points.
    flat: bool,
}

struct Panel {
    title: String,
    y_desc: &'static str,
    series: Vec<Series>,
}

const OURS: [RGBColor; 4] = [
    RGBColor(0, 90, 200),
    RGBColor(0, 170, 230),
    RGBColor(40, 40, 130),
    RGBColor(0, 190, 150),
];
const THEIRS: [RGBColor; 4] = [
    RGBColor(210, 30, 30),
    RGBColor(240, 130, 0),
    RGBColor(140, 30, 90),
    RGBColor(190, 150, 0),
];
const CEILING: [RGBColor; 4] = [
    RGBColor(60, 60, 60),
    RGBColor(120, 120, 120),
    RGBColor(170, 170, 170),
    RGBColor(30, 30, 30),
];

fn tool_label(tool: &str) -> &str {
    match tool {
        "theirs" => "C",
        t => t,
    }
}

fn tool_color(tool: &str, i: usize) -> RGBColor {
    match tool {
        "theirs" => THEIRS[i % THEIRS.len()],
        _ => OURS[i % OURS.len()],
    }
}

fn size_name(s: u64) -> String {
    if s >= 1024 && s % 1024 == 0 {
        format!("{} KiB", s / 1024)
    } else {
        format!("{s} B")
    }
}

fn sorted(mut v: Vec<(f64, f64)>) -> Vec<(f64, f64)> {
    v.sort_by(|a, b| a.0.total_cmp(&b.0));
    v
}

/// Fixture panels (delivered, lost %) of one guest and mode, or none without such rows.
fn fixture_panels(g: &GuestResults, mode: &str) -> Vec<Panel> {
    let rows: Vec<&Run> = g
        .runs
        .iter()
        .filter(|r| r.mode == mode && r.secs > 0.0 && r.tool != "base")
        .collect();
    let out = if rows.iter().any(|r| r.out == "tmpfs") {
        "tmpfs"
    } else {
        "null"
    };
    let rows: Vec<&Run> = rows.into_iter().filter(|r| r.out == out).collect();
    if rows.is_empty() {
        return Vec::new();
    }
    let sizes: BTreeSet<u64> = rows.iter().map(|r| r.size).collect();
    let (mut delivered, mut lost) = (Vec::new(), Vec::new());
    for tool in ["ours", "theirs"] {
        for (i, &size) in sizes.iter().enumerate() {
            let v: Vec<&&Run> = rows
                .iter()
                .filter(|r| r.tool == tool && r.size == size)
                .collect();
            if v.is_empty() {
                continue;
            }
            let label = format!("{} {}", tool_label(tool), size_name(size));
            delivered.push(Series {
                label: label.clone(),
                color: tool_color(tool, i),
                points: sorted(v.iter().map(|r| (r.offered_mbps(), r.mbps)).collect()),
                flat: false,
            });
            lost.push(Series {
                label,
                color: tool_color(tool, i),
                points: sorted(
                    v.iter()
                        .map(|r| {
                            (
                                r.offered_mbps(),
                                100.0 * r.lost as f64 / r.expected.max(1) as f64,
                            )
                        })
                        .collect(),
                ),
                flat: false,
            });
        }
    }
    for (i, &size) in sizes.iter().enumerate() {
        if let Some(&c) = g.ceiling.get(&size) {
            delivered.push(Series {
                label: format!("ceiling {}", size_name(size)),
                color: CEILING[i % CEILING.len()],
                points: vec![(0.0, c)],
                flat: true,
            });
        }
    }
    vec![
        Panel {
            title: format!("{} vCPUs, {mode}, fixture ({out}): delivered", g.cpus),
            y_desc: "delivered MB/s",
            series: delivered,
        },
        Panel {
            title: format!("{} vCPUs, {mode}, fixture ({out}): lost", g.cpus),
            y_desc: "lost % of prints",
            series: lost,
        },
    ]
}

/// Real-workload panels (delivered, lost %) of one guest and mode, or none without such runs.
fn real_panels(g: &GuestResults, mode: &str) -> Vec<Panel> {
    let runs: Vec<&RealRun> = g
        .real
        .iter()
        .filter(|r| r.mode == mode && r.produced > 0 && !(r.kind == "timer" && r.step == 0))
        .collect();
    if runs.is_empty() {
        return Vec::new();
    }
    let workloads: BTreeSet<String> = runs.iter().map(|r| r.workload()).collect();
    let (mut delivered, mut lost) = (Vec::new(), Vec::new());
    for tool in ["ours", "theirs"] {
        for (i, w) in workloads.iter().enumerate() {
            let v: Vec<&&RealRun> = runs
                .iter()
                .filter(|r| r.tool == tool && &r.workload() == w)
                .collect();
            if v.is_empty() {
                continue;
            }
            let label = format!("{} {w}", tool_label(tool));
            delivered.push(Series {
                label: label.clone(),
                color: tool_color(tool, i),
                points: sorted(
                    v.iter()
                        .map(|r| (r.offered_mbps(), r.delivered_mbps()))
                        .collect(),
                ),
                flat: false,
            });
            lost.push(Series {
                label,
                color: tool_color(tool, i),
                points: sorted(v.iter().map(|r| (r.offered_mbps(), r.lost_pct())).collect()),
                flat: false,
            });
        }
    }
    vec![
        Panel {
            title: format!("{} vCPUs, {mode}, real SystemTap: delivered", g.cpus),
            y_desc: "delivered MB/s",
            series: delivered,
        },
        Panel {
            title: format!("{} vCPUs, {mode}, real SystemTap: lost", g.cpus),
            y_desc: "lost % of lines",
            series: lost,
        },
    ]
}

fn draw<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    p: &Panel,
) -> Result<(), String>
where
    DB::ErrorType: 'static,
{
    let e = |e: DrawingAreaErrorKind<DB::ErrorType>| format!("chart: {e:?}");
    let measured = p.series.iter().filter(|s| !s.flat).flat_map(|s| &s.points);
    let (mut x0, mut x1, mut y1) = (f64::INFINITY, 0.0f64, 0.0f64);
    for &(x, y) in measured {
        if x > 0.0 {
            x0 = x0.min(x);
            x1 = x1.max(x);
        }
        y1 = y1.max(y);
    }
    for s in p.series.iter().filter(|s| s.flat) {
        y1 = y1.max(s.points[0].1);
    }
    if !x0.is_finite() {
        (x0, x1) = (1.0, 10.0);
    }
    let (x0, x1) = ((x0 / 1.5).max(0.01), x1 * 1.5);
    let y1 = if p.y_desc.starts_with("lost") {
        100.0
    } else {
        (y1 * 1.1).max(1.0)
    };
    let mut chart = ChartBuilder::on(area)
        .caption(&p.title, ("sans-serif", 14))
        .margin(6)
        .x_label_area_size(32)
        .y_label_area_size(44)
        .build_cartesian_2d((x0..x1).log_scale(), 0.0..y1)
        .map_err(e)?;
    chart
        .configure_mesh()
        .x_desc("offered MB/s (log)")
        .y_desc(p.y_desc)
        .label_style(("sans-serif", 11))
        // The log axis has a key point per unit of each decade: label a few, no light mesh.
        .x_labels(6)
        .x_label_formatter(&|x| {
            if *x >= 1.0 {
                format!("{x:.0}")
            } else {
                format!("{x:.1}")
            }
        })
        .light_line_style(TRANSPARENT)
        .draw()
        .map_err(e)?;
    if !p.y_desc.starts_with("lost") {
        // Delivered = offered: no loss (a curve on the log x axis, so many points).
        let lim = x1.min(y1);
        let diagonal: Vec<(f64, f64)> = (0..=64)
            .map(|i| x0 * (lim / x0).powf(f64::from(i) / 64.0))
            .map(|x| (x, x))
            .collect();
        chart
            .draw_series(LineSeries::new(diagonal, BLACK.mix(0.25).stroke_width(1)))
            .map_err(e)?
            .label("delivered = offered")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 14, y)], BLACK.mix(0.25)));
    }
    for s in &p.series {
        let color = s.color;
        let points = if s.flat {
            vec![(x0, s.points[0].1), (x1, s.points[0].1)]
        } else {
            s.points.clone()
        };
        chart
            .draw_series(LineSeries::new(
                points.clone(),
                color.stroke_width(if s.flat { 1 } else { 2 }),
            ))
            .map_err(e)?
            .label(s.label.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 14, y)], color));
        if !s.flat {
            chart
                .draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled())))
                .map_err(e)?;
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font(("sans-serif", 10))
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK.mix(0.4))
        .draw()
        .map_err(e)?;
    Ok(())
}

/// The SVG chart of these guests' results; None when they hold nothing to plot.
pub fn render(guests: &[GuestResults]) -> Result<Option<String>, String> {
    let mut rows: Vec<Vec<Panel>> = Vec::new();
    for g in guests {
        let mut modes: Vec<&str> = g
            .runs
            .iter()
            .map(|r| r.mode.as_str())
            .chain(g.real.iter().map(|r| r.mode.as_str()))
            .collect();
        modes.sort_unstable();
        modes.dedup();
        for mode in modes {
            let mut row = fixture_panels(g, mode);
            row.extend(real_panels(g, mode));
            if !row.is_empty() {
                rows.push(row);
            }
        }
    }
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    if cols == 0 {
        return Ok(None);
    }
    let mut svg = String::new();
    {
        let size = (PANEL.0 * cols as u32, PANEL.1 * rows.len() as u32);
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        root.fill(&WHITE).map_err(|e| format!("chart: {e:?}"))?;
        let areas = root.split_evenly((rows.len(), cols));
        for (r, row) in rows.iter().enumerate() {
            for (c, panel) in row.iter().enumerate() {
                draw(&areas[r * cols + c], panel)?;
            }
        }
        root.present().map_err(|e| format!("chart: {e:?}"))?;
    }
    Ok(Some(svg))
}

#[cfg(test)]
mod tests {
    use super::super::report::parse;
    use super::*;

    #[test]
    fn renders_ours_c_and_the_ceiling_per_mode() {
        let lines = [
            "BENCH ceiling size=1024 secs=1 mbps=200.0",
            "BENCH run tool=ours mode=bulk out=tmpfs size=1024 load=max rate=0 secs=2 mbps=100.00 payload=200000000 expected=262144 lost=0 cpu_s=0.5 rss_kib=2048 exit=0",
            "BENCH run tool=theirs mode=bulk out=tmpfs size=1024 load=max rate=0 secs=4 mbps=40.00 payload=160000000 expected=262144 lost=50000 cpu_s=0.5 rss_kib=2048 exit=0",
            "BENCH run tool=ours mode=bulk out=tmpfs size=1024 load=r50 rate=25000 secs=4 mbps=50.00 payload=200000000 expected=200000 lost=0 cpu_s=0.5 rss_kib=2048 exit=0",
            "BENCH run tool=theirs mode=bulk out=tmpfs size=1024 load=r50 rate=25000 secs=4 mbps=45.00 payload=180000000 expected=200000 lost=20000 cpu_s=0.5 rss_kib=2048 exit=0",
            "BENCH real gen=4 kind=timer mode=serial tool=ours step=0 lines=0 rate=0 size=1024 secs=2 produced=0 delivered=0 lost=0 failures=0 skipped=0 calls=0 cpu_s=0.3 rss_kib=3000 exit=0",
            "BENCH real gen=4 kind=timer mode=serial tool=ours step=4 lines=4 rate=0 size=1024 secs=2 produced=16000 delivered=16000 lost=0 failures=0 skipped=0 calls=0 cpu_s=0.4 rss_kib=3000 exit=0",
            "BENCH real gen=4 kind=timer mode=serial tool=ours step=16 lines=16 rate=0 size=1024 secs=2 produced=64000 delivered=64000 lost=0 failures=0 skipped=0 calls=0 cpu_s=0.6 rss_kib=3000 exit=0",
            "BENCH real gen=4 kind=timer mode=serial tool=theirs step=4 lines=4 rate=0 size=1024 secs=2 produced=16000 delivered=16000 lost=0 failures=0 skipped=0 calls=0 cpu_s=0.4 rss_kib=3000 exit=0",
            "BENCH real gen=4 kind=timer mode=serial tool=theirs step=16 lines=16 rate=0 size=1024 secs=2 produced=64000 delivered=40000 lost=24000 failures=12 skipped=0 calls=0 cpu_s=0.9 rss_kib=3000 exit=0",
        ];
        let g = parse(2, &lines);
        assert_eq!(g.real.len(), 5);
        let svg = render(&[g]).unwrap().expect("something to plot");
        assert!(svg.starts_with("<svg"), "{}", &svg[..100.min(svg.len())]);
        for label in [
            "ours 1 KiB",
            "C 1 KiB",
            "ceiling 1 KiB",
            "ours 4.x timer",
            "C 4.x timer",
            "2 vCPUs, bulk, fixture (tmpfs): delivered",
            "2 vCPUs, serial, real SystemTap: lost",
        ] {
            assert!(svg.contains(label), "no {label:?} in the chart");
        }
        // One row per mode: bulk has fixture panels only, serial real ones only.
        assert!(!svg.contains("bulk, real SystemTap"));
        assert!(svg.matches("<polyline").count() >= 8, "series missing");
        // Nothing to plot: no chart.
        assert!(render(&[GuestResults::default()]).unwrap().is_none());
    }
}
