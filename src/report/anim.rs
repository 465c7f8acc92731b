//! An animated GIF of predicted fate paths (`cellfate predict-fate --animate`, dynamo's
//! `mv.animate_fates`): the cells in grey on the first two dimensions of the embedding, each
//! path drawn up to the frame's time in the colour of the cluster it ends in, its head as a
//! dot. Frames are drawn in memory and encoded with the `gif` crate, then written atomically.

use std::path::Path;

use plotters::prelude::*;

use super::ReportError;
use crate::io::{Element, H5adReader};

const FRAMES: usize = 48;
const SIZE: (u32, u32) = (640, 520);

fn draw_failure(detail: impl std::fmt::Display) -> ReportError {
    ReportError::Draw {
        figure: "fate_animation".into(),
        format: "gif",
        detail: detail.to_string(),
    }
}

/// Animates `uns["fate_<basis>"]` of `h5ad` (written by `predict-fate`) into `out`.
pub fn animate_fates(h5ad: &Path, basis: &str, out: &Path) -> Result<(), ReportError> {
    super::plots::ensure_font_public();
    let r = H5adReader::open(h5ad)?;
    let (n, w, x) = r.dense(&format!("obsm/X_{basis}"))?;
    let group = format!("uns/fate_{basis}");
    let pred = match r.read(&format!("{group}/prediction"))? {
        Element::Dense(a) if a.shape.len() == 3 => a,
        _ => {
            return Err(draw_failure(format!(
                "{group}/prediction: expected a k × d × points array"
            )))
        }
    };
    let (k, d, np) = (pred.shape[0], pred.shape[1], pred.shape[2]);
    let p = pred.data.to_f64();
    let ends = match r.read(&format!("{group}/end_cluster"))? {
        Element::Strings { values, .. } => values,
        _ => vec![String::new(); k],
    };
    let mut cats: Vec<String> = ends.clone();
    cats.sort();
    cats.dedup();
    let palette = super::hex_or_palette(None, cats.len());
    let color_of = |s: &str| palette[cats.iter().position(|c| c == s).unwrap_or(0)];
    let y = if w >= 2 && d >= 2 { 1 } else { 0 };
    let cell_xy: Vec<(f64, f64)> = (0..n).map(|i| (x[i * w], x[i * w + y])).collect();
    let (mut lo, mut hi) = ([f64::INFINITY; 2], [f64::NEG_INFINITY; 2]);
    for &(a, b) in &cell_xy {
        lo = [lo[0].min(a), lo[1].min(b)];
        hi = [hi[0].max(a), hi[1].max(b)];
    }
    let pad = [
        0.05 * (hi[0] - lo[0]).max(1e-9),
        0.05 * (hi[1] - lo[1]).max(1e-9),
    ];
    let (xr, yr) = (
        lo[0] - pad[0]..hi[0] + pad[0],
        lo[1] - pad[1]..hi[1] + pad[1],
    );
    let at = |path: usize, c: usize, s: usize| p[(path * d + c) * np + s];
    let mut bytes = Vec::new();
    {
        let mut enc = gif::Encoder::new(&mut bytes, SIZE.0 as u16, SIZE.1 as u16, &[])
            .map_err(draw_failure)?;
        enc.set_repeat(gif::Repeat::Infinite)
            .map_err(draw_failure)?;
        let mut rgb = vec![0u8; (SIZE.0 * SIZE.1 * 3) as usize];
        for f in 0..FRAMES {
            let upto = (f * (np - 1)) / (FRAMES - 1);
            {
                let root = BitMapBackend::with_buffer(&mut rgb, SIZE).into_drawing_area();
                root.fill(&WHITE).map_err(draw_failure)?;
                let mut chart = ChartBuilder::on(&root)
                    .caption(
                        format!("predicted fates ({k} paths), frame {}/{FRAMES}", f + 1),
                        ("sans-serif", 18),
                    )
                    .margin(10)
                    .x_label_area_size(30)
                    .y_label_area_size(40)
                    .build_cartesian_2d(xr.clone(), yr.clone())
                    .map_err(draw_failure)?;
                chart
                    .configure_mesh()
                    .disable_mesh()
                    .x_desc(format!("{basis} 1"))
                    .y_desc(format!("{basis} {}", y + 1))
                    .draw()
                    .map_err(draw_failure)?;
                chart
                    .draw_series(
                        cell_xy
                            .iter()
                            .map(|&c| Circle::new(c, 1, RGBColor(200, 200, 200).filled())),
                    )
                    .map_err(draw_failure)?;
                for (path, end) in ends.iter().enumerate().take(k) {
                    let col = color_of(end);
                    let pts: Vec<(f64, f64)> = (0..=upto)
                        .map(|s| (at(path, 0, s), at(path, y, s)))
                        .take_while(|q| q.0.is_finite() && q.1.is_finite())
                        .collect();
                    if pts.len() >= 2 {
                        chart
                            .draw_series(LineSeries::new(pts.clone(), col.mix(0.5)))
                            .map_err(draw_failure)?;
                    }
                    if let Some(&head) = pts.last() {
                        chart
                            .draw_series(std::iter::once(Circle::new(head, 3, col.filled())))
                            .map_err(draw_failure)?;
                    }
                }
                root.present().map_err(draw_failure)?;
            }
            let mut frame = gif::Frame::from_rgb_speed(SIZE.0 as u16, SIZE.1 as u16, &rgb, 10);
            frame.delay = if f + 1 == FRAMES { 150 } else { 8 };
            enc.write_frame(&frame).map_err(draw_failure)?;
        }
    }
    crate::output::write_atomic(out, &bytes)?;
    Ok(())
}
