//! The SVG plot of the error curves of a simulation run (plotters, SVG backend: no font
//! or system library needed).

use std::path::Path;

use plotters::prelude::*;

use super::SimError;
use super::baselines::BaselineResult;
use super::report::SimReport;

impl SimReport {
    /// Draws the error curves (normalized RMSE per window) as SVG.
    pub fn write_svg(&self, path: &Path) -> Result<(), SimError> {
        let plot_err = |e: &dyn std::fmt::Display| SimError::Plot {
            path: path.display().to_string(),
            reason: e.to_string(),
        };
        let root = SVGBackend::new(path, (900, 540)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| plot_err(&e))?;
        let rpw = self.rounds_per_window as f64;
        let points = |b: &BaselineResult| -> Vec<(f64, f64)> {
            b.curve
                .iter()
                .enumerate()
                .filter(|(_, v)| v.is_finite())
                .map(|(i, v)| ((i as f64 + 0.5) * rpw, *v))
                .collect()
        };
        let y_max = self
            .baselines
            .iter()
            .flat_map(|b| b.curve.iter().copied())
            .filter(|v| v.is_finite())
            .fold(0.0f64, f64::max)
            * 1.1;
        let x_max = (self.config.episodes as f64).max(1.0);
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!(
                    "qis sim: error over time ({} robots, seed {})",
                    self.config.robots, self.config.seed
                ),
                ("sans-serif", 22),
            )
            .margin(16)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..x_max, 0.0..y_max.max(1e-6))
            .map_err(|e| plot_err(&e))?;
        chart
            .configure_mesh()
            .x_desc("round (episodes per robot)")
            .y_desc("normalized RMSE")
            .draw()
            .map_err(|e| plot_err(&e))?;
        let colors = [RED, BLUE, GREEN, BLACK, MAGENTA, CYAN];
        for (b, color) in self.baselines.iter().zip(colors) {
            chart
                .draw_series(LineSeries::new(points(b), color.stroke_width(2)))
                .map_err(|e| plot_err(&e))?
                .label(b.name.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| plot_err(&e))?;
        root.present().map_err(|e| plot_err(&e))?;
        Ok(())
    }
}
