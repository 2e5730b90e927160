//! Loss and Dice curves drawn to PNG with plotters (embedded DejaVu font).

use anyhow::{anyhow, Result};
use plotters::prelude::*;
use seg_train::trainer::EpochRecord;
use std::path::Path;
use std::sync::Once;

static FONT: Once = Once::new();

fn register_font() {
    FONT.call_once(|| {
        let _ = plotters::style::register_font(
            "sans-serif",
            FontStyle::Normal,
            dejavu::sans::regular(),
        );
    });
}

/// Draws training loss and validation Dice per epoch to `path` (atomically).
pub fn draw_curves(history: &[EpochRecord], path: &Path) -> Result<()> {
    if history.is_empty() {
        return Ok(());
    }
    register_font();
    let tmp = path.with_extension("tmp.png");
    {
        let root = BitMapBackend::new(&tmp, (900, 420)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
        let (left, right) = root.split_horizontally(450);
        let n = history.len() as f64;
        let loss_max = history.iter().map(|r| r.train_loss).fold(0.0, f64::max) * 1.1 + 1e-6;
        let mut c = ChartBuilder::on(&left)
            .caption("training loss", ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(30)
            .y_label_area_size(50)
            .build_cartesian_2d(1.0..n.max(2.0), 0.0..loss_max)
            .map_err(|e| anyhow!("{e}"))?;
        c.configure_mesh()
            .x_desc("epoch")
            .draw()
            .map_err(|e| anyhow!("{e}"))?;
        c.draw_series(LineSeries::new(
            history.iter().map(|r| (r.epoch as f64, r.train_loss)),
            &BLUE,
        ))
        .map_err(|e| anyhow!("{e}"))?;
        let mut d = ChartBuilder::on(&right)
            .caption("validation Dice / AUC", ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(30)
            .y_label_area_size(50)
            .build_cartesian_2d(1.0..n.max(2.0), 0.0..1.0)
            .map_err(|e| anyhow!("{e}"))?;
        d.configure_mesh()
            .x_desc("epoch")
            .draw()
            .map_err(|e| anyhow!("{e}"))?;
        d.draw_series(LineSeries::new(
            history
                .iter()
                .filter_map(|r| r.val_dice_best.map(|v| (r.epoch as f64, v))),
            &RED,
        ))
        .map_err(|e| anyhow!("{e}"))?
        .label("Dice (best threshold)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], RED));
        d.draw_series(LineSeries::new(
            history
                .iter()
                .filter_map(|r| r.val_dice.map(|v| (r.epoch as f64, v))),
            &MAGENTA,
        ))
        .map_err(|e| anyhow!("{e}"))?
        .label("Dice @0.5")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], MAGENTA));
        d.draw_series(LineSeries::new(
            history
                .iter()
                .filter_map(|r| r.val_auc.map(|v| (r.epoch as f64, v))),
            &GREEN,
        ))
        .map_err(|e| anyhow!("{e}"))?
        .label("AUC")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], GREEN));
        d.configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::LowerRight)
            .draw()
            .map_err(|e| anyhow!("{e}"))?;
        root.present().map_err(|e| anyhow!("{e}"))?;
    }
    std::fs::rename(&tmp, path)?;
    Ok(())
}
