//! The bitmap backend with our own text rendering.
//!
//! plotters 0.3.7 draws ab_glyph text with a per-glyph baseline that is rounded toward zero and
//! with whole-pixel advances: at chart sizes (10–14 px) a "." sits a pixel or two high ("4·2")
//! and letter spacing is uneven. `Canvas` wraps `BitMapBackend`, passes all shapes through
//! unchanged, and draws and measures text itself with ab_glyph on one shared baseline with
//! sub-pixel glyph positions, in the same embedded font that is registered with plotters.

use std::sync::OnceLock;

use ab_glyph::{point, Font, FontRef, PxScale, ScaleFont};
use plotters::backend::BitMapBackend;
use plotters_backend::text_anchor::{HPos, VPos};
use plotters_backend::{
    BackendColor, BackendCoord, BackendStyle, BackendTextStyle, DrawingBackend, DrawingErrorKind,
};

/// DejaVu Sans (Bitstream Vera license, see assets/README.md), embedded so nothing depends on
/// the fonts installed where dmq runs.
pub(crate) static FONT_BYTES: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

/// The parsed embedded font, or `None` if it does not parse (a build problem, reported as a
/// plotting error by the caller).
pub(crate) fn font() -> Option<&'static FontRef<'static>> {
    static FONT: OnceLock<Option<FontRef<'static>>> = OnceLock::new();
    FONT.get_or_init(|| FontRef::try_from_slice(FONT_BYTES).ok())
        .as_ref()
}

/// One line of text laid out at pixel size `size`: the caret advance per glyph and box metrics.
struct Line {
    glyphs: Vec<ab_glyph::Glyph>,
    width: f32,
    ascent: f32,
    descent: f32,
}

fn layout(font: &FontRef<'static>, text: &str, size: f64) -> Line {
    let scale = PxScale::from(size as f32);
    let scaled = font.as_scaled(scale);
    let mut caret = 0.0f32;
    let mut prev = None;
    let mut glyphs = Vec::with_capacity(text.len());
    for c in text.chars() {
        let id = scaled.glyph_id(c);
        if let Some(p) = prev {
            caret += scaled.kern(p, id);
        }
        glyphs.push(id.with_scale_and_position(scale, point(caret, 0.0)));
        caret += scaled.h_advance(id);
        prev = Some(id);
    }
    Line {
        glyphs,
        width: caret,
        ascent: scaled.ascent(),
        descent: scaled.descent(),
    }
}

/// `BitMapBackend` with ab_glyph text on a common baseline (see the module docs).
pub(crate) struct Canvas<'a> {
    inner: BitMapBackend<'a>,
    font: &'static FontRef<'static>,
}

impl<'a> Canvas<'a> {
    pub fn new(inner: BitMapBackend<'a>, font: &'static FontRef<'static>) -> Self {
        Canvas { inner, font }
    }
}

type Error<'a> = DrawingErrorKind<<BitMapBackend<'a> as DrawingBackend>::ErrorType>;

impl<'a> DrawingBackend for Canvas<'a> {
    type ErrorType = <BitMapBackend<'a> as DrawingBackend>::ErrorType;

    fn get_size(&self) -> (u32, u32) {
        self.inner.get_size()
    }

    fn ensure_prepared(&mut self) -> Result<(), Error<'a>> {
        self.inner.ensure_prepared()
    }

    fn present(&mut self) -> Result<(), Error<'a>> {
        self.inner.present()
    }

    fn draw_pixel(&mut self, point: BackendCoord, color: BackendColor) -> Result<(), Error<'a>> {
        self.inner.draw_pixel(point, color)
    }

    fn draw_line<S: BackendStyle>(
        &mut self,
        from: BackendCoord,
        to: BackendCoord,
        style: &S,
    ) -> Result<(), Error<'a>> {
        self.inner.draw_line(from, to, style)
    }

    fn draw_rect<S: BackendStyle>(
        &mut self,
        upper_left: BackendCoord,
        bottom_right: BackendCoord,
        style: &S,
        fill: bool,
    ) -> Result<(), Error<'a>> {
        self.inner.draw_rect(upper_left, bottom_right, style, fill)
    }

    fn draw_path<S: BackendStyle, I: IntoIterator<Item = BackendCoord>>(
        &mut self,
        path: I,
        style: &S,
    ) -> Result<(), Error<'a>> {
        self.inner.draw_path(path, style)
    }

    fn draw_circle<S: BackendStyle>(
        &mut self,
        center: BackendCoord,
        radius: u32,
        style: &S,
        fill: bool,
    ) -> Result<(), Error<'a>> {
        self.inner.draw_circle(center, radius, style, fill)
    }

    fn fill_polygon<S: BackendStyle, I: IntoIterator<Item = BackendCoord>>(
        &mut self,
        vert: I,
        style: &S,
    ) -> Result<(), Error<'a>> {
        self.inner.fill_polygon(vert, style)
    }

    fn blit_bitmap(
        &mut self,
        pos: BackendCoord,
        size: (u32, u32),
        src: &[u8],
    ) -> Result<(), Error<'a>> {
        self.inner.blit_bitmap(pos, size, src)
    }

    /// The text box is `width × (ascent − descent)`, anchored like plotters does it; the box is
    /// rotated about the anchor point for rotated styles (the y-axis description).
    fn draw_text<S: BackendTextStyle>(
        &mut self,
        text: &str,
        style: &S,
        pos: BackendCoord,
    ) -> Result<(), Error<'a>> {
        let color = style.color();
        if color.alpha == 0.0 || text.is_empty() {
            return Ok(());
        }
        let line = layout(self.font, text, style.size());
        let height = line.ascent - line.descent;
        let dx = match style.anchor().h_pos {
            HPos::Left => 0.0,
            HPos::Center => -line.width / 2.0,
            HPos::Right => -line.width,
        };
        let top = match style.anchor().v_pos {
            VPos::Top => 0.0,
            VPos::Center => -height / 2.0,
            VPos::Bottom => -height,
        };
        // Whole-pixel start and baseline keep stems crisp; glyphs keep their sub-pixel advances.
        let dx = dx.round();
        let baseline = (top + line.ascent).round();
        let trans = style.transform();
        let (w, h) = self.get_size();
        for glyph in line.glyphs {
            let mut glyph = glyph;
            glyph.position.x += dx;
            glyph.position.y += baseline;
            let Some(outlined) = self.font.outline_glyph(glyph) else {
                continue; // spaces and glyphs without outline
            };
            let bounds = outlined.px_bounds();
            let mut pixels = Vec::new();
            outlined.draw(|x, y, coverage| {
                if coverage > 0.0 {
                    pixels.push((
                        bounds.min.x as i32 + x as i32,
                        bounds.min.y as i32 + y as i32,
                        coverage.min(1.0),
                    ));
                }
            });
            for (x, y, coverage) in pixels {
                let (x, y) = trans.transform(x, y);
                let (x, y) = (pos.0 + x, pos.1 + y);
                if x >= 0 && y >= 0 && (x as u32) < w && (y as u32) < h {
                    self.inner.draw_pixel(
                        (x, y),
                        BackendColor {
                            alpha: color.alpha * f64::from(coverage),
                            rgb: color.rgb,
                        },
                    )?;
                }
            }
        }
        Ok(())
    }

    fn estimate_text_size<S: BackendTextStyle>(
        &self,
        text: &str,
        style: &S,
    ) -> Result<(u32, u32), Error<'a>> {
        let line = layout(self.font, text, style.size());
        Ok((
            line.width.ceil() as u32,
            (line.ascent - line.descent).ceil() as u32,
        ))
    }
}
