//! The latency-percentile plot: one line per run, percentiles spread by their "nines" (50%, 90%,
//! 99%, 99.9% ... evenly apart) against microseconds on a log scale, as an SVG file.

use std::path::Path;

use anyhow::Context;
use plotters::prelude::*;

use crate::scenario::Outcome;

/// How far right the plot goes: 99.999%.
const NINES_MAX: f64 = 5.0;

/// The percentile as its distance in nines from 0: 90% is 1, 99% is 2, 100% is capped.
fn nines(percentile: f64) -> f64 {
    let rest = 1.0 - percentile / 100.0;
    if rest <= 0.0 {
        NINES_MAX
    } else {
        (-rest.log10()).min(NINES_MAX)
    }
}

fn percentile_label(nines: &f64) -> String {
    let percentile = 100.0 * (1.0 - 10f64.powf(-nines));
    format!("{}%", (percentile * 1000.0).round() / 1000.0)
}

pub fn latency(outcomes: &[Outcome], path: &Path) -> anyhow::Result<()> {
    let curves: Vec<(String, Vec<(f64, f64)>)> = outcomes
        .iter()
        .filter(|o| !o.latency_curve_us.is_empty())
        .map(|o| {
            let points =
                o.latency_curve_us.iter().map(|&(p, us)| (nines(p), us.max(1.0))).collect();
            (format!("{} ({} {}, QoS {})", o.broker, o.scenario.name(), o.mqtt, o.qos), points)
        })
        .collect();
    anyhow::ensure!(!curves.is_empty(), "no latencies to plot");
    let highest = curves.iter().flat_map(|(_, p)| p.iter().map(|&(_, us)| us)).fold(1.0, f64::max);
    let root = SVGBackend::new(path, (900, 540)).into_drawing_area();
    let draw = || -> Result<(), Box<dyn std::error::Error>> {
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption("Publish-to-delivery latency by percentile", ("sans-serif", 22))
            .margin(16)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(0f64..NINES_MAX, (1f64..highest * 2.0).log_scale())?;
        chart
            .configure_mesh()
            .x_labels(NINES_MAX as usize + 1)
            .x_label_formatter(&percentile_label)
            .x_desc("percentile")
            .y_desc("latency (µs)")
            .draw()?;
        for (i, (label, points)) in curves.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            chart
                .draw_series(LineSeries::new(points.iter().copied(), color.stroke_width(2)))?
                .label(label.as_str())
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2))
                });
        }
        chart.configure_series_labels().border_style(BLACK).background_style(WHITE).draw()?;
        root.present()?;
        Ok(())
    };
    draw()
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("plotting {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_spread_by_nines() {
        assert!((nines(90.0) - 1.0).abs() < 1e-9);
        assert!((nines(99.9) - 3.0).abs() < 1e-9);
        assert_eq!(nines(100.0), NINES_MAX);
        assert_eq!(percentile_label(&2.0), "99%");
        assert_eq!(percentile_label(&0.0), "0%");
    }
}
