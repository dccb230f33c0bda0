//! backup-<size>GB.png: what the application saw across one whole backup, per case
//! (the first repeat): commits acknowledged per second (line) and the slowest commit
//! begun in each 250 ms (dots, log axis on the right), with the phases marked — the
//! lock window (solid), for dbsnap its copy (light) and what follows it (publish and
//! release, darker), for the others the rest of the run; then, grey, the time after the
//! run until the filesystem had freed the deleted snapshots (the btrfs cleaner).

use std::path::Path;

use anyhow::Context;
use plotters::prelude::*;

use crate::cases::Case;
use crate::metrics::Run;
use crate::SizeResult;

/// The cases drawn: dbsnap paced and unpaced, and what it is compared with.
const DRAWN: [Case; 4] = [
    Case::Dbsnap("auto"),
    Case::DbsnapUnpaced,
    Case::Mariabackup,
    Case::SnapshotOnly,
];

const BUCKET_MS: f64 = 250.0;
const FLOOR_MS: f64 = 0.5;
/// Seconds drawn before and after the run.
const MARGIN_S: f64 = 3.0;

pub fn draw(out: &Path, size: &SizeResult) -> anyhow::Result<()> {
    let path = out.join(format!("backup-{}GB.png", size.size_gb));
    let root = BitMapBackend::new(&path, (1400, 1100)).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((DRAWN.len(), 1));
    for (panel, case) in panels.iter().zip(DRAWN) {
        let Some(run) = size.runs.iter().find(|r| r.measured.case == case.name()) else {
            continue;
        };
        panel_for(panel, size, run)?;
    }
    root.present()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// When the copy ended, for a run whose manifest says how long it took.
fn copy_end_ms(run: &Run) -> Option<f64> {
    let copy_ms = run.measured.detail["transfer"]["duration_ms"].as_f64()?;
    Some(run.measured.lock_to_ms + copy_ms)
}

fn panel_for<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    size: &SizeResult,
    run: &Run,
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let m = &run.measured;
    let (x_min, x_max) = (m.start_ms / 1e3 - MARGIN_S, m.settled_ms / 1e3 + MARGIN_S);
    let in_view: Vec<(f64, f64)> = size
        .commits
        .iter()
        .filter(|(b, _)| (x_min..x_max).contains(&(b / 1e3)))
        .copied()
        .collect();
    let seconds = (x_max - x_min).ceil() as usize;
    let mut per_second = vec![0u32; seconds];
    for (b, l) in &in_view {
        if let Some(n) = per_second.get_mut(((b + l) / 1e3 - x_min) as usize) {
            *n += 1;
        }
    }
    let tps_max = per_second.iter().copied().max().unwrap_or(1).max(1) as f64 * 1.2;
    let y_max = in_view.iter().map(|(_, l)| *l).fold(10.0, f64::max) * 1.5;
    let mut chart = ChartBuilder::on(area)
        .caption(
            format!(
                "{}: commits per second (line), slowest commit per {BUCKET_MS} ms (dots)",
                m.case
            ),
            ("sans-serif", 15),
        )
        .margin(8)
        .x_label_area_size(28)
        .y_label_area_size(50)
        .right_y_label_area_size(50)
        .build_cartesian_2d(x_min..x_max, 0f64..tps_max)?
        .set_secondary_coord(x_min..x_max, (FLOOR_MS..y_max).log_scale());
    chart
        .configure_mesh()
        .x_desc("seconds since the writers started")
        .y_desc("commits/s")
        .light_line_style(TRANSPARENT)
        .label_style(("sans-serif", 11))
        .draw()?;
    chart
        .configure_secondary_axes()
        .y_desc("latency ms")
        .label_style(("sans-serif", 11))
        .draw()?;
    let band = |from: f64, to: f64, color: RGBColor, alpha: f64| {
        Rectangle::new([(from, 0.0), (to, tps_max)], color.mix(alpha).filled())
    };
    let (lock_from, lock_to) = (m.lock_from_ms / 1e3, m.lock_to_ms / 1e3);
    let copy_end = copy_end_ms(run).map_or(m.end_ms / 1e3, |e| e / 1e3);
    chart.draw_series([
        band(lock_to, copy_end, BLUE, 0.12),
        band(copy_end, m.end_ms / 1e3, RED, 0.15),
        band(m.end_ms / 1e3, m.settled_ms / 1e3, BLACK, 0.1),
        band(lock_from, lock_to.max(lock_from + 0.05), BLACK, 0.8),
    ])?;
    chart.draw_series(LineSeries::new(
        per_second
            .iter()
            .enumerate()
            .map(|(s, n)| (x_min + s as f64 + 0.5, *n as f64)),
        BLUE.stroke_width(2),
    ))?;
    let buckets = ((x_max - x_min) * 1e3 / BUCKET_MS).ceil() as usize;
    let mut slowest = vec![0f64; buckets];
    for (b, l) in &in_view {
        let i = ((b / 1e3 - x_min) * 1e3 / BUCKET_MS) as usize;
        if let Some(s) = slowest.get_mut(i) {
            *s = s.max(*l);
        }
    }
    chart.draw_secondary_series(slowest.iter().enumerate().filter(|(_, l)| **l > 0.0).map(
        |(i, l)| {
            let x = x_min + (i as f64 + 0.5) * BUCKET_MS / 1e3;
            Circle::new((x, l.max(FLOOR_MS)), 2, BLACK.filled())
        },
    ))?;
    Ok(())
}
