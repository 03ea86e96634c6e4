//! Line charts as SVG, rendered on the server by one pure function
//! ([`render`]): axes with "nice" ticks in the metric's unit (binary
//! steps for bytes), UTC time ticks, one path per series broken where
//! data is missing (a gap longer than two steps), a min–max band for a
//! single series, and a caption with min, max and last. Every label goes
//! through maud, so agent-supplied names (mount points, interfaces) are
//! escaped like any other text.
//!
//! The `<svg>` carries its mapping (`data-x0/x1` in ms, `data-y0/y1` in
//! the unit, `data-plot="left top width height"`), so a test can map the
//! path's coordinates back to values and compare them with what is stored.

use maud::{Markup, html};

use crate::format::{self, Unit};

/// One point of a series: the bucket's time, its average, min and max.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChartPoint {
    pub t_ms: u64,
    pub avg: f64,
    pub min: f64,
    pub max: f64,
}

/// One line.
#[derive(Debug, Clone)]
pub struct ChartSeries {
    /// Legend text (e.g. the mount point or `rx`); may be empty.
    pub label: String,
    /// Oldest first.
    pub points: Vec<ChartPoint>,
}

/// What to draw.
#[derive(Debug, Clone)]
pub struct Chart {
    /// The `<svg>` element's id (a page can hold several charts).
    pub id: String,
    pub title: String,
    pub unit: Unit,
    /// The time range shown (the selector's, not the data's).
    pub from_ms: u64,
    pub to_ms: u64,
    /// Expected spacing of points: a longer gap than two steps breaks the line.
    pub step_ms: u64,
    pub series: Vec<ChartSeries>,
}

/// Size of the drawing (viewBox units; CSS scales it to the page).
pub const WIDTH: f64 = 720.0;
pub const HEIGHT: f64 = 220.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 12.0;
const TOP: f64 = 10.0;
const BOTTOM: f64 = 26.0;

/// min, max and last of a chart's data (first series' last).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub min: f64,
    pub max: f64,
    pub last: f64,
}

/// The summary of `series`, `None` without points.
pub fn summary(series: &[ChartSeries]) -> Option<Summary> {
    let mut pts = series.iter().flat_map(|s| s.points.iter());
    let first = pts.next()?;
    let (mut min, mut max) = (first.min.min(first.avg), first.max.max(first.avg));
    for p in pts {
        min = min.min(p.min).min(p.avg);
        max = max.max(p.max).max(p.avg);
    }
    let last = series
        .iter()
        .find_map(|s| s.points.last())
        .map_or(f64::NAN, |p| p.avg);
    Some(Summary { min, max, last })
}

/// Ticks from `lo` to at least `hi` in steps of 1, 2 or 5 × 10^k, about
/// `target` of them (at least two). The last tick is ≥ `hi`.
pub fn nice_ticks(lo: f64, hi: f64, target: usize) -> Vec<f64> {
    let (lo, hi) = if hi > lo { (lo, hi) } else { (lo, lo + 1.0) };
    let raw = (hi - lo) / target.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    let start = (lo / step).floor() * step;
    let decimals = 10f64.powi((-step.log10().floor()).max(0.0) as i32);
    let mut ticks = Vec::new();
    let mut i = 0.0;
    loop {
        let t = start + i * step;
        // Round away binary noise (0.30000000000000004).
        let t = (t * decimals).round() / decimals;
        ticks.push(t);
        if t >= hi || ticks.len() > 50 {
            break;
        }
        i += 1.0;
    }
    ticks
}

/// The power of 1024 byte axes are labelled in (so ticks are whole MiB,
/// GiB...).
fn byte_scale(max: f64) -> f64 {
    let mut s = 1.0;
    while max / s >= 1024.0 && s < 1024f64.powi(6) {
        s *= 1024.0;
    }
    s
}

/// Value ticks of an axis of `unit` covering `[lo, hi]`.
pub fn value_ticks(unit: Unit, lo: f64, hi: f64) -> Vec<f64> {
    match unit {
        Unit::Bytes | Unit::BytesPerSec => {
            let s = byte_scale(hi.max(lo.abs()));
            nice_ticks(lo / s, hi / s, 4)
                .into_iter()
                .map(|t| t * s)
                .collect()
        }
        _ => nice_ticks(lo, hi, 4),
    }
}

/// Time ticks inside `[from, to]`: multiples (UTC) of the smallest
/// interval that gives at most 7.
pub fn time_ticks(from_ms: u64, to_ms: u64) -> Vec<u64> {
    const MIN: u64 = 60_000;
    const H: u64 = 60 * MIN;
    const STEPS: [u64; 14] = [
        MIN,
        5 * MIN,
        10 * MIN,
        15 * MIN,
        30 * MIN,
        H,
        2 * H,
        3 * H,
        6 * H,
        12 * H,
        24 * H,
        2 * 24 * H,
        7 * 24 * H,
        14 * 24 * H,
    ];
    if to_ms <= from_ms {
        return vec![from_ms];
    }
    let span = to_ms - from_ms;
    let step = STEPS
        .iter()
        .copied()
        .find(|s| span / s <= 6)
        .unwrap_or(30 * 24 * H);
    let mut t = from_ms.div_ceil(step) * step;
    let mut out = Vec::new();
    while t <= to_ms && out.len() < 16 {
        out.push(t);
        t += step;
    }
    out
}

/// The y range drawn: from 0 (or the data's minimum when negative) to the
/// last tick above the data; percentages stop at 100 when the data does.
fn y_range(unit: Unit, s: Option<Summary>) -> (f64, f64, Vec<f64>) {
    let (lo, hi) = match s {
        Some(s) => (s.min.min(0.0), s.max.max(unit.axis_floor_max())),
        None => (0.0, unit.axis_floor_max()),
    };
    let hi = if unit == Unit::Percent && hi <= 100.0 && hi > 50.0 {
        100.0
    } else {
        hi
    };
    let ticks = value_ticks(unit, lo, hi);
    let y0 = ticks.first().copied().unwrap_or(lo);
    let y1 = ticks.last().copied().unwrap_or(hi).max(y0 + f64::EPSILON);
    (y0, y1, ticks)
}

/// A series' path: `M x y L x y ...`, a new `M` after a gap; points alone
/// between gaps come back separately (drawn as dots).
fn path(
    points: &[ChartPoint],
    step_ms: u64,
    x: &dyn Fn(u64) -> f64,
    y: &dyn Fn(f64) -> f64,
) -> (String, Vec<(f64, f64)>) {
    let mut d = String::new();
    let mut lone = Vec::new();
    let mut run: Vec<(f64, f64)> = Vec::new();
    let gap = step_ms.saturating_mul(2).max(1);
    let mut flush = |run: &mut Vec<(f64, f64)>, d: &mut String| {
        match run.len() {
            0 => {}
            1 => lone.push(run[0]),
            _ => {
                for (i, (px, py)) in run.iter().enumerate() {
                    let cmd = if i == 0 { 'M' } else { 'L' };
                    if !d.is_empty() {
                        d.push(' ');
                    }
                    d.push_str(&format!("{cmd}{px:.1} {py:.1}"));
                }
            }
        }
        run.clear();
    };
    let mut prev: Option<u64> = None;
    for p in points.iter().filter(|p| p.avg.is_finite()) {
        if let Some(t) = prev
            && p.t_ms.saturating_sub(t) > gap
        {
            flush(&mut run, &mut d);
        }
        run.push((x(p.t_ms), y(p.avg)));
        prev = Some(p.t_ms);
    }
    flush(&mut run, &mut d);
    (d, lone)
}

/// The band between min and max of one series (closed polygon per run).
fn band(
    points: &[ChartPoint],
    step_ms: u64,
    x: &dyn Fn(u64) -> f64,
    y: &dyn Fn(f64) -> f64,
) -> String {
    let gap = step_ms.saturating_mul(2).max(1);
    let mut runs: Vec<Vec<&ChartPoint>> = Vec::new();
    let mut prev: Option<u64> = None;
    for p in points
        .iter()
        .filter(|p| p.min.is_finite() && p.max.is_finite())
    {
        if prev.is_none_or(|t| p.t_ms.saturating_sub(t) > gap) {
            runs.push(Vec::new());
        }
        if let Some(r) = runs.last_mut() {
            r.push(p);
        }
        prev = Some(p.t_ms);
    }
    let mut d = String::new();
    for r in runs.iter().filter(|r| r.len() > 1) {
        for (i, p) in r.iter().enumerate() {
            let cmd = if i == 0 { 'M' } else { 'L' };
            d.push_str(&format!("{cmd}{:.1} {:.1} ", x(p.t_ms), y(p.max)));
        }
        for p in r.iter().rev() {
            d.push_str(&format!("L{:.1} {:.1} ", x(p.t_ms), y(p.min)));
        }
        d.push_str("Z ");
    }
    d.trim_end().to_string()
}

/// The chart as SVG plus its caption (see the module docs).
pub fn render(c: &Chart) -> Markup {
    let s = summary(&c.series);
    let (y0, y1, yticks) = y_range(c.unit, s);
    let (from, to) = (c.from_ms, c.to_ms.max(c.from_ms + 1));
    let (pw, ph) = (WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM);
    let x = move |t: u64| LEFT + (t.clamp(from, to) - from) as f64 / (to - from) as f64 * pw;
    let y = move |v: f64| TOP + ph - (v - y0) / (y1 - y0) * ph;
    let xticks = time_ticks(from, to);
    let span = to - from;
    let single = c.series.len() == 1;
    let drawn: Vec<(String, Vec<(f64, f64)>)> = c
        .series
        .iter()
        .map(|sr| path(&sr.points, c.step_ms, &x, &y))
        .collect();
    let bands = if single {
        band(&c.series[0].points, c.step_ms, &x, &y)
    } else {
        String::new()
    };
    let plot = format!("{LEFT} {TOP} {pw} {ph}");
    html! {
        figure.chart {
            figcaption {
                span.chart-title { (c.title) }
                @if let Some(s) = s {
                    span.chart-summary {
                        "min " b { (c.unit.format(s.min)) }
                        " · max " b { (c.unit.format(s.max)) }
                        " · last " b { (c.unit.format(s.last)) }
                    }
                }
            }
            svg id=(c.id) class="chart-svg" viewBox=(format!("0 0 {WIDTH} {HEIGHT}"))
                role="img" aria-label=(c.title)
                data-x0=(from) data-x1=(to) data-y0=(y0) data-y1=(y1) data-plot=(plot) {
                title { (c.title) }
                g.grid {
                    @for t in &yticks {
                        line x1=(LEFT) x2=(LEFT + pw) y1=(format!("{:.1}", y(*t))) y2=(format!("{:.1}", y(*t))) {}
                        text.ylabel x=(LEFT - 6.0) y=(format!("{:.1}", y(*t) + 4.0)) text-anchor="end" { (c.unit.format(*t)) }
                    }
                    @for t in &xticks {
                        line.xtick x1=(format!("{:.1}", x(*t))) x2=(format!("{:.1}", x(*t))) y1=(TOP) y2=(TOP + ph) {}
                        text.xlabel x=(format!("{:.1}", x(*t))) y=(HEIGHT - 8.0) text-anchor="middle" { (format::axis_time(*t, span)) }
                    }
                }
                rect.frame x=(LEFT) y=(TOP) width=(pw) height=(ph) {}
                @if !bands.is_empty() {
                    path.band d=(bands) {}
                }
                @for (i, (d, lone)) in drawn.iter().enumerate() {
                    @if !d.is_empty() {
                        path class=(format!("line s{i}")) d=(d) data-series=(c.series[i].label) {}
                    }
                    @for (px, py) in lone {
                        circle class=(format!("dot s{i}")) cx=(format!("{px:.1}")) cy=(format!("{py:.1}")) r="2.5" {}
                    }
                }
                @if s.is_none() {
                    text.empty x=(LEFT + pw / 2.0) y=(TOP + ph / 2.0) text-anchor="middle" { "No data in this range" }
                }
            }
            @if c.series.len() > 1 || c.series.first().is_some_and(|s| !s.label.is_empty()) {
                ul.legend {
                    @for (i, sr) in c.series.iter().enumerate() {
                        li { span class=(format!("swatch s{i}")) {} (sr.label) }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pt(t_ms: u64, v: f64) -> ChartPoint {
        ChartPoint {
            t_ms,
            avg: v,
            min: v - 1.0,
            max: v + 1.0,
        }
    }

    fn chart(points: Vec<ChartPoint>, unit: Unit) -> Chart {
        Chart {
            id: "c".into(),
            title: "CPU".into(),
            unit,
            from_ms: 0,
            to_ms: 3_600_000,
            step_ms: 300_000,
            series: vec![ChartSeries {
                label: String::new(),
                points,
            }],
        }
    }

    /// (x, y) pairs of every `M`/`L` of the line paths.
    fn coords(svg: &str) -> Vec<Vec<(f64, f64)>> {
        svg.split("<path class=\"line")
            .skip(1)
            .map(|p| {
                let d = p.split("d=\"").nth(1).unwrap().split('"').next().unwrap();
                d.split(['M', 'L'])
                    .filter(|s| !s.trim().is_empty())
                    .map(|s| {
                        let mut it = s.split_whitespace().map(|n| n.parse::<f64>().unwrap());
                        (it.next().unwrap(), it.next().unwrap())
                    })
                    .collect()
            })
            .collect()
    }

    fn attr(svg: &str, name: &str) -> f64 {
        svg.split(&format!("{name}=\""))
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    }

    #[test]
    fn nice_ticks_step_by_one_two_or_five_and_cover_the_data() {
        assert_eq!(nice_ticks(0.0, 27.2, 4), vec![0.0, 10.0, 20.0, 30.0]);
        assert_eq!(nice_ticks(0.0, 100.0, 4), vec![0.0, 50.0, 100.0]);
        assert_eq!(nice_ticks(0.0, 0.9, 4), vec![0.0, 0.5, 1.0]);
        let t = nice_ticks(0.0, 0.3, 3);
        assert_eq!(t, vec![0.0, 0.1, 0.2, 0.3], "no binary noise");
        assert_eq!(
            nice_ticks(5.0, 5.0, 4).len(),
            3,
            "a flat line still has an axis"
        );
    }

    #[test]
    fn byte_axes_tick_in_whole_binary_units() {
        let gib = 1024.0 * 1024.0 * 1024.0;
        let t = value_ticks(Unit::Bytes, 0.0, 3.3 * gib);
        assert_eq!(t, vec![0.0, gib, 2.0 * gib, 3.0 * gib, 4.0 * gib]);
        let labels: Vec<String> = t.iter().map(|v| Unit::Bytes.format(*v)).collect();
        assert_eq!(labels[1], "1.0 GiB");
    }

    #[test]
    fn time_ticks_are_round_utc_times_inside_the_range() {
        let from = 1_700_000_000_000;
        let t = time_ticks(from, from + 3_600_000);
        assert!(t.len() <= 7 && t.len() >= 4, "{t:?}");
        assert!(t.iter().all(|x| x % 600_000 == 0 && *x >= from));
        let week = time_ticks(from, from + 7 * 86_400_000);
        assert!(week.iter().all(|x| x % (2 * 86_400_000) == 0), "{week:?}");
    }

    /// The path's points map back (through the svg's data attributes) to
    /// the stored values and times.
    #[test]
    fn the_path_draws_the_points_at_their_values_and_times() {
        let pts: Vec<ChartPoint> = (0..12)
            .map(|i| pt(i * 300_000, 20.0 + 10.0 * (i % 5) as f64))
            .collect();
        let svg = render(&chart(pts.clone(), Unit::Percent)).into_string();
        let lines = coords(&svg);
        assert_eq!(lines.len(), 1, "one unbroken line");
        assert_eq!(lines[0].len(), 12);
        let (x0, x1, y0, y1) = (
            attr(&svg, "data-x0"),
            attr(&svg, "data-x1"),
            attr(&svg, "data-y0"),
            attr(&svg, "data-y1"),
        );
        assert_eq!((y0, y1), (0.0, 100.0), "a percent axis up to 100");
        let plot: Vec<f64> = svg
            .split("data-plot=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap()
            .split(' ')
            .map(|n| n.parse().unwrap())
            .collect();
        for ((px, py), p) in lines[0].iter().zip(&pts) {
            let t = x0 + (px - plot[0]) / plot[2] * (x1 - x0);
            let v = y0 + (plot[1] + plot[3] - py) / plot[3] * (y1 - y0);
            assert!((t - p.t_ms as f64).abs() < 10_000.0, "{t} vs {}", p.t_ms);
            assert!((v - p.avg).abs() < 0.2, "{v} vs {}", p.avg);
        }
        assert!(svg.contains("min <b>19 %</b>"), "{svg}");
        assert!(svg.contains("max <b>61 %</b>"), "{svg}");
        assert!(svg.contains("last <b>30 %</b>"), "{svg}");
        assert!(svg.contains("class=\"band\""), "a min-max band");
    }

    #[test]
    fn missing_data_breaks_the_line_and_lone_points_are_dots() {
        // 0, 5, 10 min; then nothing until 40 min (a gap); then 40 min alone;
        // then 55, 60 min.
        let pts = vec![
            pt(0, 1.0),
            pt(300_000, 2.0),
            pt(600_000, 3.0),
            pt(2_400_000, 4.0),
            pt(3_300_000, 5.0),
            pt(3_600_000, 6.0),
        ];
        let svg = render(&chart(pts, Unit::Count)).into_string();
        let d = svg.split("class=\"line s0\" d=\"").nth(1).unwrap();
        let d = d.split('"').next().unwrap();
        assert_eq!(d.matches('M').count(), 2, "two runs: {d}");
        assert_eq!(svg.matches("<circle").count(), 1, "the lone point");
    }

    #[test]
    fn an_empty_range_says_so_and_labels_are_escaped() {
        let mut c = chart(vec![], Unit::Bytes);
        c.title = "<script>alert(1)</script>".into();
        c.series[0].label = "/mnt/\"x\"&<y>".into();
        let svg = render(&c).into_string();
        assert!(svg.contains("No data in this range"));
        assert!(!svg.contains("<script>"), "{svg}");
        assert!(svg.contains("&lt;script&gt;"));
        assert!(svg.contains("/mnt/&quot;x&quot;&amp;&lt;y&gt;"), "{svg}");
    }

    #[test]
    fn several_series_get_a_legend_and_no_band() {
        let mut c = chart(vec![pt(0, 1.0), pt(300_000, 2.0)], Unit::BytesPerSec);
        c.series[0].label = "rx".into();
        c.series.push(ChartSeries {
            label: "tx".into(),
            points: vec![pt(0, 3.0), pt(300_000, 4.0)],
        });
        let svg = render(&c).into_string();
        assert_eq!(coords(&svg).len(), 2);
        assert!(!svg.contains("class=\"band\""));
        assert!(svg.contains("class=\"legend\"") && svg.contains(">tx</li>"));
        let s = summary(&c.series).unwrap();
        assert_eq!((s.min, s.max, s.last), (0.0, 5.0, 2.0));
    }
}
