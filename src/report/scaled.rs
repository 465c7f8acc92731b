//! A drawing backend that scales everything drawn on it: `--dpi` without touching the figure
//! code. The figures are laid out in logical pixels (100 dpi); this wrapper hands the inner
//! backend coordinates, stroke widths, radii and font sizes multiplied by `dpi / 100`, so a
//! 200-dpi PNG is the same picture at twice the resolution (not an enlarged bitmap).

use plotters::style::{FontDesc, FontFamily, TextStyle};
use plotters_backend::{
    BackendColor, BackendCoord, BackendStyle, BackendTextStyle, DrawingBackend, DrawingErrorKind,
};

/// `inner` seen at `1 / scale` of its size.
pub(crate) struct Scaled<B> {
    pub(crate) inner: B,
    pub(crate) scale: f64,
}

struct Stroke {
    color: BackendColor,
    width: u32,
}

impl BackendStyle for Stroke {
    fn color(&self) -> BackendColor {
        self.color
    }
    fn stroke_width(&self) -> u32 {
        self.width
    }
}

impl<B: DrawingBackend> Scaled<B> {
    fn pt(&self, p: BackendCoord) -> BackendCoord {
        (
            (p.0 as f64 * self.scale).round() as i32,
            (p.1 as f64 * self.scale).round() as i32,
        )
    }

    fn stroke<S: BackendStyle>(&self, s: &S) -> Stroke {
        Stroke {
            color: s.color(),
            width: ((s.stroke_width() as f64 * self.scale).round() as u32).max(1),
        }
    }

    fn text<'a, T: BackendTextStyle>(&self, s: &'a T) -> TextStyle<'a> {
        let family: FontFamily<'a> = s.family();
        TextStyle {
            font: FontDesc::new(family, s.size() * self.scale, s.style()).transform(s.transform()),
            color: s.color(),
            pos: s.anchor(),
        }
    }
}

impl<B: DrawingBackend> DrawingBackend for Scaled<B> {
    type ErrorType = B::ErrorType;

    fn get_size(&self) -> (u32, u32) {
        let (w, h) = self.inner.get_size();
        (
            (w as f64 / self.scale).round() as u32,
            (h as f64 / self.scale).round() as u32,
        )
    }

    fn ensure_prepared(&mut self) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.inner.ensure_prepared()
    }

    fn present(&mut self) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.inner.present()
    }

    fn draw_pixel(
        &mut self,
        point: BackendCoord,
        color: BackendColor,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        // A logical pixel is a scale × scale square.
        let a = self.pt(point);
        let b = self.pt((point.0 + 1, point.1 + 1));
        if b.0 - a.0 <= 1 && b.1 - a.1 <= 1 {
            return self.inner.draw_pixel(a, color);
        }
        let fill = Stroke { color, width: 1 };
        self.inner.draw_rect(a, (b.0 - 1, b.1 - 1), &fill, true)
    }

    fn draw_line<S: BackendStyle>(
        &mut self,
        from: BackendCoord,
        to: BackendCoord,
        style: &S,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        let s = self.stroke(style);
        let (a, b) = (self.pt(from), self.pt(to));
        if s.width <= 1 {
            self.inner.draw_line(a, b, &s)
        } else {
            self.inner.draw_path([a, b], &s)
        }
    }

    fn draw_rect<S: BackendStyle>(
        &mut self,
        upper_left: BackendCoord,
        bottom_right: BackendCoord,
        style: &S,
        fill: bool,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        let s = self.stroke(style);
        let (a, b) = (self.pt(upper_left), self.pt(bottom_right));
        self.inner.draw_rect(a, b, &s, fill)
    }

    fn draw_path<S: BackendStyle, I: IntoIterator<Item = BackendCoord>>(
        &mut self,
        path: I,
        style: &S,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        let s = self.stroke(style);
        let pts: Vec<BackendCoord> = path.into_iter().map(|p| self.pt(p)).collect();
        self.inner.draw_path(pts, &s)
    }

    fn draw_circle<S: BackendStyle>(
        &mut self,
        center: BackendCoord,
        radius: u32,
        style: &S,
        fill: bool,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        let s = self.stroke(style);
        let r = ((radius as f64 * self.scale).round() as u32).max(1);
        let c = self.pt(center);
        self.inner.draw_circle(c, r, &s, fill)
    }

    fn fill_polygon<S: BackendStyle, I: IntoIterator<Item = BackendCoord>>(
        &mut self,
        vert: I,
        style: &S,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        let s = self.stroke(style);
        let pts: Vec<BackendCoord> = vert.into_iter().map(|p| self.pt(p)).collect();
        self.inner.fill_polygon(pts, &s)
    }

    fn draw_text<T: BackendTextStyle>(
        &mut self,
        text: &str,
        style: &T,
        pos: BackendCoord,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        let t = self.text(style);
        let p = self.pt(pos);
        self.inner.draw_text(text, &t, p)
    }

    fn estimate_text_size<T: BackendTextStyle>(
        &self,
        text: &str,
        style: &T,
    ) -> Result<(u32, u32), DrawingErrorKind<Self::ErrorType>> {
        let t = self.text(style);
        let (w, h) = self.inner.estimate_text_size(text, &t)?;
        Ok((
            (w as f64 / self.scale).round() as u32,
            (h as f64 / self.scale).round() as u32,
        ))
    }
}
