//! latency-<size>GB.png: commit latency over the whole run with every backup shaded
//! (light: the whole backup; solid: its lock window), and below it one close-up per
//! case around the lock window, all repeats overlaid.

use std::path::Path;

use anyhow::Context;
use plotters::prelude::*;

use crate::cases::Case;
use crate::metrics::Run;
use crate::SizeResult;

/// plotters' ab_glyph text backend needs a font; DejaVu is in Debian's fonts-dejavu-core.
const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// Latencies are drawn on a log axis; faster commits are drawn at this floor.
const FLOOR_MS: f64 = 0.5;

/// Width of one bucket of the timeline (the slowest commit that began in it is drawn).
const BUCKET_MS: f64 = 100.0;

pub fn draw(out: &Path, size: &SizeResult) -> anyhow::Result<()> {
    register_font()?;
    let path = out.join(format!("latency-{}GB.png", size.size_gb));
    let root = BitMapBackend::new(&path, (1400, 1280)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(320);
    let y_max = size
        .commits
        .iter()
        .map(|(_, l)| *l)
        .fold(FLOOR_MS * 4.0, f64::max)
        * 1.5;
    timeline(&top, size, y_max)?;
    let panels = bottom.split_evenly((4, 3));
    for (i, (panel, case)) in panels.iter().zip(Case::ALL).enumerate() {
        closeup(panel, size, case, Palette99::pick(i), y_max)?;
    }
    // The tenth panel is free: the legend goes there instead of over the data.
    legend(&panels[Case::ALL.len()])?;
    root.present()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn register_font() -> anyhow::Result<()> {
    static REGISTERED: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    if REGISTERED.get().is_some() {
        return Ok(());
    }
    let bytes = std::fs::read(FONT).with_context(|| {
        format!("reading {FONT} for the plot's text (apt-get install fonts-dejavu-core)")
    })?;
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes.leak())
        .map_err(|_| anyhow::anyhow!("{FONT} is not a usable font"))?;
    let _ = REGISTERED.set(());
    Ok(())
}

fn runs_of(size: &SizeResult, case: Case) -> Vec<&Run> {
    size.runs
        .iter()
        .filter(|r| r.measured.case == case.name())
        .collect()
}

fn timeline<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    size: &SizeResult,
    y_max: f64,
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let x_max = size
        .runs
        .iter()
        .map(|r| r.measured.settled_ms)
        .fold(1.0, f64::max)
        / 1e3
        + 5.0;
    let mut chart = ChartBuilder::on(area)
        .caption(
            format!(
                "{} GB of filler ({} MiB datadir): slowest commit per {BUCKET_MS} ms; backups shaded, lock windows solid",
                size.size_gb,
                size.data_bytes >> 20
            ),
            ("sans-serif", 18),
        )
        .margin(8)
        .x_label_area_size(35)
        .y_label_area_size(55)
        .build_cartesian_2d(0f64..x_max, (FLOOR_MS..y_max).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("seconds since the writers started (by when the commit began)")
        .y_desc("commit latency (ms)")
        .light_line_style(TRANSPARENT)
        .y_label_formatter(&|v| format!("{v}"))
        .draw()?;
    // A lock window of a few ms would be thinner than a pixel at this scale.
    let min_width = x_max / 600.0;
    for (i, case) in Case::ALL.into_iter().enumerate() {
        let color = Palette99::pick(i);
        let runs = runs_of(size, case);
        chart.draw_series(runs.iter().map(|r| {
            Rectangle::new(
                [
                    (r.measured.start_ms / 1e3, FLOOR_MS),
                    (r.measured.settled_ms / 1e3, y_max),
                ],
                color.mix(0.15).filled(),
            )
        }))?;
        chart.draw_series(runs.iter().map(|r| {
            let from = r.measured.lock_from_ms / 1e3;
            let to = (r.measured.lock_to_ms / 1e3).max(from + min_width);
            Rectangle::new([(from, FLOOR_MS), (to, y_max)], color.filled())
        }))?;
    }
    let buckets = (x_max * 1e3 / BUCKET_MS).ceil() as usize;
    let mut slowest = vec![0f64; buckets];
    for (began, latency) in &size.commits {
        let b = (began / BUCKET_MS).max(0.0) as usize;
        if b < buckets {
            slowest[b] = slowest[b].max(*latency);
        }
    }
    // Points, not a line: a line would join the buckets on either side of a stall
    // (in which no commit began) and draw a slope that never happened.
    chart.draw_series(
        slowest
            .iter()
            .enumerate()
            .filter(|(_, l)| **l > 0.0)
            .map(|(b, l)| {
                Circle::new(
                    (b as f64 * BUCKET_MS / 1e3, l.max(FLOOR_MS)),
                    1,
                    BLACK.filled(),
                )
            }),
    )?;
    Ok(())
}

fn legend<DB: DrawingBackend>(area: &DrawingArea<DB, plotters::coord::Shift>) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let text = ("sans-serif", 14).into_font();
    for (i, case) in Case::ALL.into_iter().enumerate() {
        let y = 30 + 26 * i as i32;
        area.draw(&Rectangle::new(
            [(30, y), (48, y + 14)],
            Palette99::pick(i).filled(),
        ))?;
        area.draw(&Text::new(case.name(), (58, y), text.clone()))?;
    }
    let y = 30 + 26 * Case::ALL.len() as i32;
    area.draw(&Text::new(
        "shaded: lock request to release; dots: commits",
        (30, y),
        text,
    ))?;
    Ok(())
}

/// Every commit that began near a run's lock window, by when it began relative to the
/// lock request: commits queued behind the lock form a diagonal ending at the unlock.
fn closeup<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    size: &SizeResult,
    case: Case,
    color: PaletteColor<Palette99>,
    y_max: f64,
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let runs = runs_of(size, case);
    let longest = runs
        .iter()
        .map(|r| r.measured.lock_to_ms - r.measured.lock_from_ms)
        .fold(0.0, f64::max);
    let (x_min, x_max) = (-500.0, longest + 1000.0);
    let mut chart = ChartBuilder::on(area)
        .caption(case.name(), ("sans-serif", 14))
        .margin(6)
        .x_label_area_size(30)
        .y_label_area_size(45)
        .build_cartesian_2d(x_min..x_max, (FLOOR_MS..y_max).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("ms from lock request")
        .y_desc("latency ms")
        .x_labels(5)
        .label_style(("sans-serif", 11))
        // Fine grid lines add nothing here but double the PNG's size.
        .light_line_style(TRANSPARENT)
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| format!("{v}"))
        .draw()?;
    chart.draw_series(runs.iter().map(|r| {
        let hold = r.measured.lock_to_ms - r.measured.lock_from_ms;
        Rectangle::new(
            [(0.0, FLOOR_MS), (hold.max(1.0), y_max)],
            color.mix(0.25).filled(),
        )
    }))?;
    for r in &runs {
        let from = r.measured.lock_from_ms;
        // Only this run's own neighbourhood: a short run must not lend its later
        // commits to the time axis of a long one (they would appear inside its window).
        let own = x_min..(r.measured.lock_to_ms - from + 1000.0);
        chart.draw_series(
            size.commits
                .iter()
                .map(|(began, latency)| (began - from, *latency))
                .filter(|(x, _)| own.contains(x))
                .map(|(x, l)| Circle::new((x, l.max(FLOOR_MS)), 1, BLACK.filled())),
        )?;
    }
    Ok(())
}
