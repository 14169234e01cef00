//! The HTML report's figures, drawn by plotters as SVG text (no font
//! library: the browser lays out the text): the timeline of nodes and
//! steps, loss over time per signal with the threshold and the gate's
//! decisions, and node-pair heatmaps.
use std::error::Error;

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use plotters::{
    coord::Shift,
    prelude::*,
    style::text_anchor::{HPos, Pos, VPos},
};

use super::{Report, is_pair, parse, percent};
use crate::{
    loss::{LossRow, Signal},
    migrate::{
        gate::Thresholds,
        record::{Moment, NodeRecord},
        state::Step,
    },
};

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;
type Drawn = Result<(), Box<dyn Error>>;

const FONT: &str = "sans-serif";
const WIDTH: u32 = 960;
/// Nodes a heatmap shows: the node under migration and its worst peers.
pub const HEATMAP_NODES: usize = 12;
/// Nodes the timeline shows, in plan order; the rest are counted.
pub const TIMELINE_NODES: usize = 40;

const INK: RGBColor = RGBColor(0x33, 0x3a, 0x44);
const GRID: RGBColor = RGBColor(0xe3, 0xe6, 0xea);
const PASS: RGBColor = RGBColor(0x2e, 0x9e, 0x5b);
const FAIL: RGBColor = RGBColor(0xd6, 0x32, 0x32);

/// One colour per step, in the order they run.
pub fn step_colour(step: Step) -> RGBColor {
    match step {
        Step::Baseline => RGBColor(0x9a, 0xa5, 0xb1),
        Step::Cordon => RGBColor(0xf2, 0xb7, 0x05),
        Step::Drain => RGBColor(0xf2, 0x84, 0x1a),
        Step::Label => RGBColor(0xa8, 0x6c, 0xc1),
        Step::RestartCilium => RGBColor(0x1f, 0x9e, 0x9e),
        Step::Reboot => RGBColor(0x8d, 0x6e, 0x63),
        Step::RestartLegacy => RGBColor(0x5c, 0x8d, 0xd6),
        Step::Verify => RGBColor(0x3f, 0x51, 0xb5),
        Step::Soak => RGBColor(0x66, 0xbb, 0x6a),
        Step::Uncordon | Step::Done => RGBColor(0xc5, 0xcb, 0xd3),
    }
}

pub fn signal_colour(signal: Signal) -> RGBColor {
    match signal {
        Signal::Delivery => RGBColor(0x1f, 0x77, 0xb4),
        Signal::Handshake => RGBColor(0x94, 0x67, 0xbd),
        Signal::Retransmit => RGBColor(0xff, 0x7f, 0x0e),
        Signal::ProbeUdp => RGBColor(0x17, 0xbe, 0xcf),
        Signal::ProbeTcp => RGBColor(0xe3, 0x77, 0xc2),
        Signal::InNode => RGBColor(0xd6, 0x27, 0x28),
        Signal::Mtu => RGBColor(0x8c, 0x56, 0x4b),
    }
}

/// Draws into an SVG of `size`; a failure is shown in place of the figure.
fn svg(size: (u32, u32), draw: impl FnOnce(&Area) -> Drawn) -> String {
    let mut out = String::new();
    let result = {
        let area = SVGBackend::with_string(&mut out, size).into_drawing_area();
        area.fill(&WHITE)
            .map_err(Into::into)
            .and_then(|_| draw(&area))
            .and_then(|_| area.present().map_err(Into::into))
    };
    match result {
        Ok(()) => out,
        Err(e) => format!("<p class=\"error\">figure not drawn: {e}</p>"),
    }
}

/// Seconds since the start, for the time axes.
struct Clock(Timestamp);

impl Clock {
    fn seconds(&self, at: &str) -> Option<f64> {
        Some(parse(at)?.duration_since(self.0).as_secs_f64())
    }

    fn label(&self, seconds: f64) -> String {
        let t = self.0 + SignedDuration::from_secs_f64(seconds.max(0.0));
        t.strftime("%H:%M:%S").to_string()
    }
}

/// The span every figure's time axis covers.
fn time_span(report: &Report) -> Option<(Clock, f64)> {
    let clock = Clock(parse(&report.state.started)?);
    let end = report
        .ended()
        .map(|e| e.duration_since(clock.0).as_secs_f64())?;
    Some((clock, end.max(1.0) * 1.02))
}

/// Nodes in plan order, one band each; bars for every step run, red
/// edged when it failed, breached or was interrupted.
pub fn timeline(report: &Report) -> String {
    let Some((clock, span)) = time_span(report) else {
        return "<p>no timeline: the start is not a time</p>".into();
    };
    // Plan order, top to bottom; nodes not reached yet have an empty band.
    let names: Vec<&str> = report
        .state
        .nodes
        .iter()
        .take(TIMELINE_NODES)
        .map(|n| n.name.as_str())
        .collect();
    let n = names.len().max(1);
    let flip = |i: usize| n - 1 - i;
    let height = 70 + 34 * n as u32;
    svg((WIDTH, height), |area| {
        let mut chart = ChartBuilder::on(area)
            .margin(12)
            .x_label_area_size(28)
            .y_label_area_size(110)
            .build_cartesian_2d(0f64..span, (0..n - 1).into_segmented())?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .light_line_style(TRANSPARENT)
            .bold_line_style(GRID)
            .x_labels(8)
            .x_label_formatter(&|s| clock.label(*s))
            .y_label_formatter(&|v| match v {
                SegmentValue::CenterOf(i) if *i < n => names
                    .get(flip(*i))
                    .map(|s| s.to_string())
                    .unwrap_or_default(),
                _ => String::new(),
            })
            .label_style((FONT, 16).into_font().color(&INK))
            .axis_style(GRID)
            .draw()?;
        for (i, name) in names.iter().enumerate() {
            let Some(r) = report.records.iter().find(|r| r.node == *name) else {
                continue;
            };
            let i = flip(i);
            for s in &r.steps {
                let Some(from) = clock.seconds(&s.started) else {
                    continue;
                };
                let to = s
                    .ended
                    .as_deref()
                    .and_then(|e| clock.seconds(e))
                    .unwrap_or(span);
                // A 1 s step still shows.
                let to = to.max(from + span / 400.0);
                let colour = step_colour(s.step);
                let bad = matches!(s.outcome.as_str(), "failed" | "breach" | "interrupted");
                let corners = [
                    (from, SegmentValue::Exact(i)),
                    (to, SegmentValue::Exact(i + 1)),
                ];
                let mut bar = Rectangle::new(corners.clone(), colour.filled());
                bar.set_margin(7, 7, 0, 0);
                chart.draw_series([bar])?;
                if bad {
                    let mut edge = Rectangle::new(corners, FAIL.stroke_width(3));
                    edge.set_margin(4, 4, 0, 0);
                    chart.draw_series([edge])?;
                }
            }
        }
        Ok(())
    })
}

/// One point a reading and signal: the worst judged ratio the gate saw;
/// the threshold of each signal dashed; a gate decision as a ring
/// (passed) or a cross (closed) on the top line; nodes as shaded bands.
pub fn loss_over_time(report: &Report) -> String {
    let Some((clock, span)) = time_span(report) else {
        return "<p>no plot: the start is not a time</p>".into();
    };
    let t = &report.state.settings.thresholds;
    let mut series: Vec<(Signal, Vec<(f64, f64)>)> = Vec::new();
    let mut decisions: Vec<(f64, bool)> = Vec::new();
    let mut highest = 0f64;
    let mut readings: Vec<_> = report
        .records
        .iter()
        .flat_map(|r| r.readings.iter())
        .collect();
    readings.sort_by(|a, b| a.decision.at.cmp(&b.decision.at));
    for reading in readings {
        let Some(x) = clock.seconds(&reading.decision.at) else {
            continue;
        };
        for (signal, ratio) in &reading.decision.worst {
            highest = highest.max(*ratio);
            match series.iter_mut().find(|(s, _)| s == signal) {
                Some((_, points)) => points.push((x, ratio * 100.0)),
                None => series.push((*signal, vec![(x, ratio * 100.0)])),
            }
        }
        if reading.moment != Moment::During {
            decisions.push((x, reading.decision.passed));
        }
    }
    series.sort_by_key(|(s, _)| *s);
    let ceiling = thresholds_shown(t, &series).fold(highest, |m, (_, v)| m.max(v));
    let top = (ceiling * 100.0 * 1.25).max(0.5);
    let bands = node_bands(report, &clock, span);
    svg((WIDTH, 340), |area| {
        let mut chart = ChartBuilder::on(area)
            .margin(12)
            .x_label_area_size(28)
            .y_label_area_size(56)
            .build_cartesian_2d(0f64..span, 0f64..top)?;
        for (k, (name, from, to)) in bands.iter().enumerate() {
            let shade = if k % 2 == 0 {
                RGBColor(0xf3, 0xf6, 0xfa)
            } else {
                RGBColor(0xe9, 0xee, 0xf5)
            };
            chart.draw_series([Rectangle::new([(*from, 0.0), (*to, top)], shade.filled())])?;
            chart.draw_series([Text::new(
                name.to_string(),
                ((from + to) / 2.0, top * 0.93),
                (FONT, 15)
                    .into_font()
                    .color(&INK)
                    .pos(Pos::new(HPos::Center, VPos::Center)),
            )])?;
        }
        chart
            .configure_mesh()
            .disable_x_mesh()
            .light_line_style(TRANSPARENT)
            .bold_line_style(GRID)
            .x_labels(8)
            .y_labels(6)
            .x_label_formatter(&|s| clock.label(*s))
            .y_label_formatter(&|v| format!("{v:.1}%"))
            .label_style((FONT, 15).into_font().color(&INK))
            .axis_style(GRID)
            .draw()?;
        for (signal, threshold) in thresholds_shown(t, &series) {
            let colour = signal.map(signal_colour).unwrap_or(FAIL);
            chart.draw_series(DashedLineSeries::new(
                [(0.0, threshold * 100.0), (span, threshold * 100.0)],
                8,
                5,
                colour.stroke_width(2),
            ))?;
            let label = match signal {
                Some(s) => format!("{s} threshold {}", percent(threshold)),
                None => format!("threshold {}", percent(threshold)),
            };
            chart.draw_series([Text::new(
                label,
                (span * 0.005, threshold * 100.0 + top * 0.02),
                (FONT, 15)
                    .into_font()
                    .color(&colour)
                    .pos(Pos::new(HPos::Left, VPos::Bottom)),
            )])?;
        }
        for (signal, points) in &series {
            let colour = signal_colour(*signal);
            chart.draw_series(LineSeries::new(
                points.iter().copied(),
                colour.stroke_width(2),
            ))?;
            chart.draw_series(points.iter().map(|p| Circle::new(*p, 3, colour.filled())))?;
        }
        let y = top * 0.84;
        for (x, passed) in &decisions {
            if *passed {
                chart.draw_series([Circle::new((*x, y), 5, PASS.stroke_width(2))])?;
            } else {
                chart.draw_series([Cross::new((*x, y), 6, FAIL.stroke_width(3))])?;
                chart.draw_series([PathElement::new(
                    vec![(*x, 0.0), (*x, y)],
                    FAIL.mix(0.5).stroke_width(1),
                )])?;
            }
        }
        Ok(())
    })
}

/// The default threshold, and each signal's own when it has one and is
/// plotted.
fn thresholds_shown<'a>(
    t: &'a Thresholds,
    series: &'a [(Signal, Vec<(f64, f64)>)],
) -> impl Iterator<Item = (Option<Signal>, f64)> + 'a {
    std::iter::once((None, t.default)).chain(
        t.per_signal
            .iter()
            .filter(|(s, _)| series.iter().any(|(p, _)| p == *s))
            .map(|(s, v)| (Some(*s), *v)),
    )
}

/// Each node's span, from its first step to its last, for the bands.
fn node_bands(report: &Report, clock: &Clock, span: f64) -> Vec<(String, f64, f64)> {
    report
        .records
        .iter()
        .take(TIMELINE_NODES)
        .filter_map(|r| {
            let from = clock.seconds(&r.steps.first()?.started)?;
            let to = r
                .steps
                .iter()
                .filter_map(|s| clock.seconds(s.ended.as_deref()?))
                .fold(from, f64::max);
            Some((r.node.clone(), from, to.min(span)))
        })
        .collect()
}

/// A node pair's figure in one panel.
#[derive(Clone, Copy, PartialEq, Debug)]
pub enum Cell {
    /// No row kept for the pair (fine, or beyond what a record keeps).
    NotKept,
    /// Rows, all with fewer packets than the gate judges.
    TooFew,
    /// The worst judged row: its ratio and that ratio over its threshold.
    Loss { ratio: f64, of_threshold: f64 },
}

/// One heatmap: node pairs of the readings it merges (worst per pair).
pub struct Panel {
    pub title: String,
    pub nodes: Vec<String>,
    /// `cells[from][to]`.
    pub cells: Vec<Vec<Cell>>,
    /// Peers beyond [`HEATMAP_NODES`].
    pub left_out: usize,
}

/// Before, during (the worst of the readings while the node changed),
/// the closed gate if any, and after: the panels of one node's move.
pub fn panels(report: &Report, record: &NodeRecord) -> Vec<Panel> {
    let t = &report.state.settings.thresholds;
    let of = |moment: Moment| -> Vec<&LossRow> {
        let readings: Vec<_> = record
            .readings
            .iter()
            .filter(|r| r.moment == moment)
            .collect();
        // Before: the last baseline; after: the last soak's.
        let chosen: Vec<_> = match moment {
            Moment::During => readings,
            _ => readings.last().into_iter().copied().collect(),
        };
        chosen.iter().flat_map(|r| r.rows.iter()).collect()
    };
    let closed: Vec<&LossRow> = record
        .readings
        .iter()
        .filter(|r| !r.decision.passed && r.moment != Moment::During)
        .flat_map(|r| r.rows.iter())
        .collect();
    let last_after_passed = record
        .readings
        .iter()
        .rev()
        .find(|r| r.moment == Moment::After)
        .is_some_and(|r| r.decision.passed);
    let mut out = vec![
        ("before".to_string(), of(Moment::Before)),
        ("during the move (worst)".to_string(), of(Moment::During)),
    ];
    if !closed.is_empty() {
        out.push(("when the gate closed".into(), closed));
    }
    if last_after_passed {
        out.push(("after (soak passed)".into(), of(Moment::After)));
    }
    out.into_iter()
        .filter(|(_, rows)| !rows.is_empty())
        .map(|(title, rows)| panel(title, &record.node, &rows, t, report))
        .collect()
}

fn panel(title: String, node: &str, rows: &[&LossRow], t: &Thresholds, report: &Report) -> Panel {
    let judged = |r: &&&LossRow| is_pair(r) && r.sent >= t.min_sent;
    let of_threshold = |r: &LossRow| {
        let threshold = t.for_signal(r.signal);
        r.ratio().unwrap_or(0.0) / if threshold > 0.0 { threshold } else { 1.0 }
    };
    // Every node of the plan (the same axes in every panel) and any other
    // the rows name; past HEATMAP_NODES, the node and its worst peers.
    let plan: Vec<&str> = report.state.nodes.iter().map(|n| n.name.as_str()).collect();
    let mut peers: Vec<(&str, f64)> = plan.iter().map(|p| (*p, 0.0)).collect();
    for r in rows.iter().filter(|r| is_pair(r)) {
        for name in [r.node.as_str(), r.peer_node.as_str()] {
            let badness = if judged(&r) { of_threshold(r) } else { 0.0 };
            match peers.iter_mut().find(|(p, _)| *p == name) {
                Some(p) => p.1 = p.1.max(badness),
                None => peers.push((name, badness)),
            }
        }
    }
    let rank = |name: &str| plan.iter().position(|p| *p == name).unwrap_or(usize::MAX);
    peers.retain(|(p, _)| *p != node);
    if peers.len() + 1 > HEATMAP_NODES {
        peers.sort_by(|a, b| b.1.total_cmp(&a.1).then(rank(a.0).cmp(&rank(b.0))));
    }
    let left_out = (peers.len() + 1).saturating_sub(HEATMAP_NODES);
    peers.truncate(HEATMAP_NODES - 1);
    let mut nodes: Vec<String> = peers.iter().map(|(p, _)| p.to_string()).collect();
    nodes.push(node.to_string());
    nodes.sort_by_key(|n| rank(n));
    let index = |name: &str| nodes.iter().position(|n| n == name);
    let mut cells = vec![vec![Cell::NotKept; nodes.len()]; nodes.len()];
    for r in rows.iter().filter(|r| is_pair(r)) {
        let (Some(i), Some(j)) = (index(&r.node), index(&r.peer_node)) else {
            continue;
        };
        let cell = &mut cells[i][j];
        if !judged(&r) {
            if *cell == Cell::NotKept {
                *cell = Cell::TooFew;
            }
            continue;
        }
        let new = Cell::Loss {
            ratio: r.ratio().unwrap_or(0.0),
            of_threshold: of_threshold(r),
        };
        match *cell {
            Cell::Loss {
                of_threshold: old, ..
            } if old >= of_threshold(r) => {}
            _ => *cell = new,
        }
    }
    Panel {
        title,
        nodes,
        cells,
        left_out,
    }
}

/// Green at no loss, amber at half the threshold, red at or over it.
fn heat(of_threshold: f64) -> RGBColor {
    let lerp = |a: RGBColor, b: RGBColor, x: f64| {
        let c = |p: u8, q: u8| (p as f64 + (q as f64 - p as f64) * x.clamp(0.0, 1.0)) as u8;
        RGBColor(c(a.0, b.0), c(a.1, b.1), c(a.2, b.2))
    };
    let green = RGBColor(0xd8, 0xf0, 0xdc);
    let amber = RGBColor(0xff, 0xd5, 0x80);
    let red = RGBColor(0xe5, 0x3e, 0x3e);
    if of_threshold <= 0.5 {
        lerp(green, amber, of_threshold * 2.0)
    } else {
        lerp(amber, red, (of_threshold - 0.5) * 2.0)
    }
}

/// `row_names`: whether the rows are named (not when the panel on its
/// left names the same rows).
pub fn heatmap(panel: &Panel, row_names: bool) -> String {
    let n = panel.nodes.len().max(1);
    let cell = 40u32;
    // Room for the longest name (about 8 px a character at this size).
    let longest = panel
        .nodes
        .iter()
        .map(|n| n.chars().count())
        .max()
        .unwrap_or(4) as u32;
    let label = (longest * 8 + 14).clamp(40, 160);
    let left = if row_names { label } else { 4 };
    let size = (left + cell * n as u32 + 14, label + cell * n as u32 + 10);
    let names = &panel.nodes;
    svg(size, |area| {
        let mut chart = ChartBuilder::on(area)
            .margin(6)
            .x_label_area_size(label - 10)
            .y_label_area_size(left)
            .build_cartesian_2d((0..n - 1).into_segmented(), (0..n - 1).into_segmented())?;
        let name = |v: &SegmentValue<usize>| match v {
            SegmentValue::CenterOf(i) => names.get(*i).cloned().unwrap_or_default(),
            _ => String::new(),
        };
        // Rows from top to bottom: the y axis counts down.
        let flip = |i: usize| n - 1 - i;
        let row_name = |v: &SegmentValue<usize>| match v {
            SegmentValue::CenterOf(i) if *i < n && row_names => names[flip(*i)].clone(),
            _ => String::new(),
        };
        chart
            .configure_mesh()
            .disable_mesh()
            .x_labels(n)
            .y_labels(n)
            .x_label_formatter(&|_| String::new())
            .y_label_formatter(&row_name)
            .y_label_style((FONT, 15).into_font().color(&INK))
            .axis_style(WHITE)
            .draw()?;
        // Column names downwards from under each column (plotters turns
        // a centred label about its middle, into the grid).
        for j in 0..n {
            let (x, y) = chart.backend_coord(&(SegmentValue::CenterOf(j), SegmentValue::Exact(0)));
            area.draw(&Text::new(
                name(&SegmentValue::CenterOf(j)),
                (x, y + 6),
                (FONT, 15)
                    .into_font()
                    .color(&INK)
                    .transform(FontTransform::Rotate90)
                    .pos(Pos::new(HPos::Left, VPos::Center)),
            ))?;
        }
        for (i, row) in panel.cells.iter().enumerate() {
            for (j, c) in row.iter().enumerate() {
                let (fill, text) = match *c {
                    _ if i == j => (RGBColor(0xf5, 0xf5, 0xf5), String::new()),
                    Cell::NotKept => (RGBColor(0xf0, 0xf1, 0xf3), "·".into()),
                    Cell::TooFew => (RGBColor(0xe6, 0xe8, 0xeb), "few".into()),
                    Cell::Loss {
                        ratio,
                        of_threshold,
                    } => (heat(of_threshold), short_percent(ratio)),
                };
                let y = flip(i);
                let mut r = Rectangle::new(
                    [
                        (SegmentValue::Exact(j), SegmentValue::Exact(y)),
                        (SegmentValue::Exact(j + 1), SegmentValue::Exact(y + 1)),
                    ],
                    fill.filled(),
                );
                r.set_margin(1, 1, 1, 1);
                chart.draw_series([r])?;
                chart.draw_series([Text::new(
                    text,
                    (SegmentValue::CenterOf(j), SegmentValue::CenterOf(y)),
                    (FONT, 15)
                        .into_font()
                        .color(&INK)
                        .pos(Pos::new(HPos::Center, VPos::Center)),
                )])?;
            }
        }
        Ok(())
    })
}

/// `0%`, `0.8%`, `5.2%`: what fits a heatmap's cell.
fn short_percent(ratio: f64) -> String {
    let p = ratio * 100.0;
    if p == 0.0 {
        "0%".into()
    } else if p < 0.1 {
        "<0.1%".into()
    } else {
        format!("{p:.1}%")
    }
}

#[cfg(test)]
mod tests {
    use super::{super::fixtures, *};

    #[test]
    fn the_closed_gate_has_its_own_panel_with_the_faulted_pairs_red() {
        let report = fixtures::completed_migration();
        let w3 = &report.records[2];
        let p = panels(&report, w3);
        let titles: Vec<&str> = p.iter().map(|p| p.title.as_str()).collect();
        assert_eq!(
            titles,
            [
                "before",
                "during the move (worst)",
                "when the gate closed",
                "after (soak passed)"
            ]
        );
        let closed = &p[2];
        assert_eq!(closed.nodes, fixtures::NODES);
        let (from, to) = (0, 2); // worker-1 -> worker-3
        match closed.cells[from][to] {
            Cell::Loss {
                ratio,
                of_threshold,
            } => {
                // The worst against its threshold: 5.2% of 2% delivery,
                // not 5% of the probes' 5%.
                assert_eq!(ratio, 0.052);
                assert!(of_threshold > 2.5, "{of_threshold}");
            }
            c => panic!("{c:?}"),
        }
        assert_eq!(
            closed.cells[2][0],
            Cell::Loss {
                ratio: 0.0,
                of_threshold: 0.0
            }
        );
        // worker-1 -> worker-2 is not worker-3's: not kept.
        assert_eq!(closed.cells[0][1], Cell::NotKept);
        let svg = heatmap(closed, true);
        assert!(
            svg.starts_with("<svg") && svg.contains("5.2%") && svg.contains("worker-3"),
            "{svg}"
        );
    }

    #[test]
    fn a_heatmap_of_a_large_cluster_keeps_the_worst_peers() {
        let t = fixtures::thresholds();
        let report = fixtures::halted_migration();
        let rows: Vec<LossRow> = (0..200)
            .map(|i| {
                fixtures::row(
                    &format!("node-{i:03}"),
                    "worker-3",
                    observer_ebpf::Overlay::Cilium,
                    Signal::Delivery,
                    1000,
                    if i == 150 { 90 } else { 0 },
                )
            })
            .collect();
        let refs: Vec<&LossRow> = rows.iter().collect();
        let p = panel("x".into(), "worker-3", &refs, &t, &report);
        assert_eq!(p.nodes.len(), HEATMAP_NODES);
        // 200 senders and the plan's 4 nodes.
        assert_eq!(p.left_out, 204 - HEATMAP_NODES);
        assert!(p.nodes.iter().any(|n| n == "node-150"), "{:?}", p.nodes);
    }

    #[test]
    fn a_one_node_heatmap_still_draws() {
        let p = Panel {
            title: "before".into(),
            nodes: vec!["solo".into()],
            cells: vec![vec![Cell::NotKept]],
            left_out: 0,
        };
        let svg = heatmap(&p, true);
        assert!(svg.starts_with("<svg") && svg.contains("solo"), "{svg}");
    }

    #[test]
    fn the_loss_plot_marks_thresholds_and_decisions() {
        let svg = loss_over_time(&fixtures::halted_migration());
        assert!(
            svg.contains("threshold 2.00%") && svg.contains("probe_udp threshold 5.00%"),
            "{svg}"
        );
        // Nodes named on their bands, times on the axis.
        assert!(svg.contains("worker-3") && svg.contains("10:0"), "{svg}");
        // The control plane, not reached, still has its band.
        let timeline = timeline(&fixtures::halted_migration());
        assert!(timeline.contains("control-plane"), "{timeline}");
    }
}
