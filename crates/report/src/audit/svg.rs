//! Small, dependency-free SVG plotting for the audit report: linear scales with "nice" ticks,
//! axes, horizontal bar charts with interval whiskers, line charts with interval bands, diverging
//! heatmaps with a colour legend, and labelled scatter plots. Every piece of text goes through
//! [`esc`]; non-finite numbers are skipped, never written (an SVG with "NaN" in a coordinate
//! does not render).

use std::fmt::Write;

/// Escapes text for HTML and SVG (element content and attribute values).
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// A linear map from a data domain onto a pixel range (either may be reversed).
#[derive(Debug, Clone, Copy)]
pub struct Scale {
    pub d0: f64,
    pub d1: f64,
    pub r0: f64,
    pub r1: f64,
}

impl Scale {
    pub fn new(domain: (f64, f64), range: (f64, f64)) -> Self {
        Self { d0: domain.0, d1: domain.1, r0: range.0, r1: range.1 }
    }

    pub fn map(&self, x: f64) -> f64 {
        let span = self.d1 - self.d0;
        if span.abs() < f64::MIN_POSITIVE {
            return (self.r0 + self.r1) / 2.0;
        }
        self.r0 + (x - self.d0) / span * (self.r1 - self.r0)
    }

    /// About `n` round tick values inside the domain.
    pub fn ticks(&self, n: usize) -> Vec<f64> {
        nice_ticks(self.d0.min(self.d1), self.d0.max(self.d1), n)
    }
}

/// A round step (1, 2 or 5 × 10^k) giving about `n` intervals over `span`.
pub fn nice_step(span: f64, n: usize) -> f64 {
    if !(span.is_finite() && span > 0.0) {
        return 1.0;
    }
    let raw = span / n.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let f = raw / mag;
    let nice = if f <= 1.0 {
        1.0
    } else if f <= 2.0 {
        2.0
    } else if f <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * mag
}

/// Multiples of a nice step inside [lo, hi].
pub fn nice_ticks(lo: f64, hi: f64, n: usize) -> Vec<f64> {
    if !(lo.is_finite() && hi.is_finite()) || hi < lo {
        return Vec::new();
    }
    if hi == lo {
        return vec![lo];
    }
    let step = nice_step(hi - lo, n);
    let first = (lo / step - 1e-9).ceil();
    let mut out = Vec::new();
    let mut k = first;
    while k * step <= hi + step * 1e-9 {
        let v = k * step;
        out.push(if v.abs() < step * 1e-9 { 0.0 } else { v });
        k += 1.0;
    }
    out
}

/// A domain covering `values` (finite ones), widened to nice bounds; `with_zero` keeps 0 inside
/// (bars grow from 0). An empty or degenerate set gives a small symmetric domain.
pub fn nice_domain(values: impl IntoIterator<Item = f64>, with_zero: bool) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in values.into_iter().filter(|v| v.is_finite()) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if with_zero {
        lo = lo.min(0.0);
        hi = hi.max(0.0);
    }
    if !lo.is_finite() || !hi.is_finite() {
        return (-1.0, 1.0);
    }
    if hi - lo < 1e-12 {
        let pad = if lo.abs() > 1e-12 { lo.abs() * 0.5 } else { 1.0 };
        return (lo - pad, hi + pad);
    }
    let step = nice_step(hi - lo, 5);
    ((lo / step).floor() * step, (hi / step).ceil() * step)
}

/// A tick label with as many decimals as the step needs.
pub fn fmt_tick(v: f64, step: f64) -> String {
    let decimals = if step > 0.0 && step.is_finite() { (-step.log10().floor()).clamp(0.0, 6.0) as usize } else { 2 };
    let s = format!("{v:.decimals$}");
    if s.starts_with('-') && s[1..].chars().all(|c| c == '0' || c == '.') {
        s[1..].to_string()
    } else {
        s.replace('-', "−")
    }
}

/// Diverging colour (blue for negative, red for positive) with 0 a neutral light grey.
/// `max_abs` is the value of full saturation.
pub fn diverging_color(v: f64, max_abs: f64) -> String {
    const STOPS: [(f64, [u8; 3]); 7] = [
        (-1.0, [0x21, 0x66, 0xac]),
        (-0.5, [0x67, 0xa9, 0xcf]),
        (-0.2, [0xd1, 0xe5, 0xf0]),
        (0.0, [0xf7, 0xf7, 0xf7]),
        (0.2, [0xfd, 0xdb, 0xc7]),
        (0.5, [0xef, 0x8a, 0x62]),
        (1.0, [0xb2, 0x18, 0x2b]),
    ];
    if !v.is_finite() {
        return "#e0e0e0".into();
    }
    let t = if max_abs > 0.0 && max_abs.is_finite() { (v / max_abs).clamp(-1.0, 1.0) } else { 0.0 };
    let k = STOPS.windows(2).position(|w| t <= w[1].0).unwrap_or(STOPS.len() - 2);
    let ((a, ca), (b, cb)) = (STOPS[k], STOPS[k + 1]);
    let f = if b > a { (t - a) / (b - a) } else { 0.0 };
    let mix = |i: usize| (ca[i] as f64 + f * (cb[i] as f64 - ca[i] as f64)).round() as u8;
    format!("#{:02x}{:02x}{:02x}", mix(0), mix(1), mix(2))
}

/// Black or white text, whichever reads better on a `#rrggbb` background.
fn text_on(bg: &str) -> &'static str {
    let h = |i: usize| u8::from_str_radix(bg.get(i..i + 2).unwrap_or("ff"), 16).unwrap_or(255) as f64;
    let lum = 0.299 * h(1) + 0.587 * h(3) + 0.114 * h(5);
    if lum < 140.0 {
        "#fff"
    } else {
        "#222"
    }
}

/// Compact value label: 3 significant digits, a real minus sign.
pub fn fmt_value(v: f64) -> String {
    if !v.is_finite() {
        return "—".into();
    }
    let a = v.abs();
    let s = if a != 0.0 && !(1e-3..1e4).contains(&a) {
        format!("{v:.2e}")
    } else {
        let d = if a == 0.0 { 2 } else { (2.0 - a.log10().floor()).clamp(0.0, 6.0) as usize };
        format!("{v:.d$}")
    };
    s.replace('-', "−")
}

/// Approximate width in px of `s` in a 12 px sans-serif font (for layout only).
fn text_width(s: &str, font_px: f64) -> f64 {
    s.chars().count() as f64 * font_px * 0.58
}

fn finite(x: f64) -> bool {
    x.is_finite()
}

/// The opening tag of a chart: scales to its container, never wider than its natural size.
fn open(w: f64, h: f64, title: &str) -> String {
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {w:.0} {h:.0}\" width=\"{w:.0}\" height=\"{h:.0}\" \
role=\"img\" aria-label=\"{t}\" class=\"chart\" font-family=\"system-ui, -apple-system, 'Segoe UI', Roboto, \
'Helvetica Neue', Arial, sans-serif\" font-size=\"12\"><title>{t}</title>\
<rect width=\"100%\" height=\"100%\" fill=\"#fff\"/>",
        t = esc(title)
    )
}

fn title_text(s: &mut String, x: f64, title: &str) {
    let _ = write!(
        s,
        "<text x=\"{x:.1}\" y=\"20\" font-size=\"14\" font-weight=\"600\" fill=\"#222\">{}</text>",
        esc(title)
    );
}

/// A legend entry: a swatch (filled box, line or whisker) and its text.
#[derive(Debug, Clone)]
pub enum Swatch {
    Box(String),
    Line(String),
    Band(String),
    Whisker,
    Dot(String),
}

/// Legend entries laid out left to right from (x, y); returns the svg.
fn legend(entries: &[(Swatch, String)], x: f64, y: f64) -> String {
    let mut s = String::new();
    let mut cx = x;
    for (sw, label) in entries {
        match sw {
            Swatch::Box(c) => {
                let _ = write!(s, "<rect x=\"{cx:.1}\" y=\"{:.1}\" width=\"14\" height=\"10\" fill=\"{c}\"/>", y - 9.0);
            }
            Swatch::Line(c) => {
                let _ = write!(
                    s,
                    "<line x1=\"{cx:.1}\" x2=\"{:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"{c}\" stroke-width=\"2.5\"/>",
                    cx + 14.0,
                    y - 4.0,
                    y - 4.0
                );
            }
            Swatch::Band(c) => {
                let _ = write!(
                    s,
                    "<rect x=\"{cx:.1}\" y=\"{:.1}\" width=\"14\" height=\"10\" fill=\"{c}\" fill-opacity=\"0.2\"/>",
                    y - 9.0
                );
            }
            Swatch::Whisker => {
                let _ = write!(
                    s,
                    "<path d=\"M{a:.1} {m:.1}H{b:.1}M{a:.1} {t:.1}V{u:.1}M{b:.1} {t:.1}V{u:.1}\" stroke=\"#333\" \
stroke-width=\"1.3\" fill=\"none\"/>",
                    a = cx,
                    b = cx + 14.0,
                    m = y - 4.0,
                    t = y - 8.0,
                    u = y
                );
            }
            Swatch::Dot(c) => {
                let _ = write!(
                    s,
                    "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"4\" fill=\"{c}\" stroke=\"#fff\"/>",
                    cx + 7.0,
                    y - 4.0
                );
            }
        }
        let _ = write!(s, "<text x=\"{:.1}\" y=\"{y:.1}\" fill=\"#333\">{}</text>", cx + 19.0, esc(label));
        cx += 19.0 + text_width(label, 12.0) + 18.0;
    }
    s
}

/// Vertical grid lines and tick labels of a horizontal value axis at `y` (bottom of the plot).
fn x_axis(s: &mut String, sc: &Scale, top: f64, y: f64, n: usize, label: &str) {
    let ticks = sc.ticks(n);
    let step = if ticks.len() > 1 { ticks[1] - ticks[0] } else { 1.0 };
    for t in &ticks {
        let x = sc.map(*t);
        let _ = write!(
            s,
            "<line x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{top:.1}\" y2=\"{y:.1}\" stroke=\"#e6e6e6\"/>\
<text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#555\">{}</text>",
            y + 15.0,
            fmt_tick(*t, step)
        );
    }
    let _ = write!(s, "<line x1=\"{:.1}\" x2=\"{:.1}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#888\"/>", sc.r0, sc.r1);
    let _ = write!(
        s,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#333\">{}</text>",
        (sc.r0 + sc.r1) / 2.0,
        y + 32.0,
        esc(label)
    );
}

/// Horizontal grid lines and tick labels of a vertical value axis at `x` (left of the plot).
fn y_axis(s: &mut String, sc: &Scale, x: f64, right: f64, n: usize, label: &str) {
    let ticks = sc.ticks(n);
    let step = if ticks.len() > 1 { ticks[1] - ticks[0] } else { 1.0 };
    for t in &ticks {
        let y = sc.map(*t);
        let _ = write!(
            s,
            "<line x1=\"{x:.1}\" x2=\"{right:.1}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#e6e6e6\"/>\
<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" fill=\"#555\">{}</text>",
            x - 6.0,
            y + 4.0,
            fmt_tick(*t, step)
        );
    }
    let _ = write!(s, "<line x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"#888\"/>", sc.r0, sc.r1);
    let cy = (sc.r0 + sc.r1) / 2.0;
    let _ = write!(
        s,
        "<text transform=\"translate({:.1} {cy:.1}) rotate(-90)\" text-anchor=\"middle\" fill=\"#333\">{}</text>",
        x - 46.0,
        esc(label)
    );
}

/// One bar of a [`HBarChart`].
#[derive(Debug, Clone, Default)]
pub struct Bar {
    pub label: String,
    pub value: f64,
    /// 95 % interval, drawn as a whisker.
    pub ci: Option<(f64, f64)>,
    /// Drawn in the highlight colour with a bold label (e.g. a flagged probe).
    pub highlight: bool,
    /// Text right of the plot area (e.g. "p = 0.002").
    pub note: String,
    /// Fill colour; default by sign.
    pub color: Option<String>,
}

/// Horizontal bars growing from 0 (or the domain's edge nearest 0), one row per bar.
#[derive(Debug, Clone, Default)]
pub struct HBarChart {
    pub title: String,
    pub x_label: String,
    pub bars: Vec<Bar>,
    /// A dashed vertical line with its label (e.g. chance at 0.5).
    pub reference: Option<(f64, String)>,
    /// Fixed value domain (default: the bars and whiskers, with 0).
    pub domain: Option<(f64, f64)>,
    pub width: f64,
    /// Extra legend entries after "mean" and "95 % CI".
    pub legend: Vec<(Swatch, String)>,
}

pub const POSITIVE: &str = "#d6604d";
pub const NEGATIVE: &str = "#4393c3";
pub const NEUTRAL: &str = "#7f9fbf";
pub const HIGHLIGHT: &str = "#b2182b";
pub const MUTED: &str = "#c9c9c9";

pub fn hbar_chart(c: &HBarChart) -> String {
    let width = if c.width > 0.0 { c.width } else { 820.0 };
    let label_w = c.bars.iter().map(|b| text_width(&b.label, 12.0)).fold(60.0, f64::max).min(260.0) + 12.0;
    let note_w = c.bars.iter().map(|b| text_width(&b.note, 12.0)).fold(0.0, f64::max).min(260.0);
    let (left, right) = (label_w + 8.0, width - note_w - 24.0);
    let row = 24.0;
    let top = 56.0;
    let bottom = top + row * c.bars.len().max(1) as f64;
    let height = bottom + 44.0;
    let domain = c.domain.unwrap_or_else(|| {
        let vals = c.bars.iter().flat_map(|b| {
            let (l, h) = b.ci.unwrap_or((b.value, b.value));
            [b.value, l, h]
        });
        let extra = c.reference.as_ref().map(|r| r.0);
        nice_domain(vals.chain(extra), true)
    });
    let sc = Scale::new(domain, (left, right));
    let mut s = open(width, height, &c.title);
    title_text(&mut s, 8.0, &c.title);
    let mut entries = Vec::new();
    if c.bars.iter().any(|b| b.ci.is_some()) {
        entries.push((Swatch::Whisker, "95 % interval".to_string()));
    }
    entries.extend(c.legend.iter().cloned());
    s.push_str(&legend(&entries, left, 42.0));
    x_axis(&mut s, &sc, top - 4.0, bottom, 6, &c.x_label);
    let base = sc.map(0.0f64.clamp(domain.0.min(domain.1), domain.0.max(domain.1)));
    for (i, b) in c.bars.iter().enumerate() {
        let y = top + row * i as f64;
        let cy = y + row / 2.0;
        let weight = if b.highlight { " font-weight=\"700\"" } else { "" };
        let _ = write!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" fill=\"#222\"{weight}>{}</text>",
            left - 8.0,
            cy + 4.0,
            esc(&b.label)
        );
        if finite(b.value) {
            let x = sc.map(b.value);
            let fill = b.color.clone().unwrap_or_else(|| {
                if b.highlight {
                    HIGHLIGHT.into()
                } else if b.value >= 0.0 {
                    POSITIVE.into()
                } else {
                    NEGATIVE.into()
                }
            });
            let _ = write!(
                s,
                "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{fill}\" fill-opacity=\"0.85\"><title>{}: {}</title></rect>",
                x.min(base),
                y + 5.0,
                (x - base).abs().max(0.5),
                row - 10.0,
                esc(&b.label),
                esc(&fmt_value(b.value))
            );
        }
        if let Some((lo, hi)) = b.ci.filter(|(l, h)| finite(*l) && finite(*h)) {
            let (a, z) = (sc.map(lo), sc.map(hi));
            let _ = write!(
                s,
                "<path d=\"M{a:.1} {cy:.1}H{z:.1}M{a:.1} {:.1}V{:.1}M{z:.1} {:.1}V{:.1}\" stroke=\"#333\" stroke-width=\"1.3\" fill=\"none\"/>",
                cy - 5.0,
                cy + 5.0,
                cy - 5.0,
                cy + 5.0
            );
        }
        if !b.note.is_empty() {
            let _ = write!(
                s,
                "<text x=\"{:.1}\" y=\"{:.1}\" fill=\"#444\"{weight}>{}</text>",
                right + 12.0,
                cy + 4.0,
                esc(&b.note)
            );
        }
    }
    if domain.0 < 0.0 && domain.1 > 0.0 {
        let _ = write!(
            s,
            "<line x1=\"{base:.1}\" x2=\"{base:.1}\" y1=\"{:.1}\" y2=\"{bottom:.1}\" stroke=\"#555\"/>",
            top - 4.0
        );
    }
    if let Some((v, label)) = &c.reference {
        let x = sc.map(*v);
        let _ = write!(
            s,
            "<line x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{:.1}\" y2=\"{bottom:.1}\" stroke=\"#444\" stroke-dasharray=\"5 4\"/>\
<text x=\"{:.1}\" y=\"{:.1}\" fill=\"#444\" font-size=\"11\">{}</text>",
            top - 4.0,
            x + 4.0,
            top - 7.0,
            esc(label)
        );
    }
    s.push_str("</svg>");
    s
}

/// One line of a [`LineChart`], with an optional interval band.
#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub color: String,
    pub ys: Vec<f64>,
    pub band: Option<Vec<(f64, f64)>>,
    pub dashed: bool,
}

/// Lines over categorical x positions (e.g. "embed", "0", "1", … for layers).
#[derive(Debug, Clone, Default)]
pub struct LineChart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub x_ticks: Vec<String>,
    pub series: Vec<Series>,
    pub width: f64,
    pub height: f64,
}

pub fn line_chart(c: &LineChart) -> String {
    let width = if c.width > 0.0 { c.width } else { 820.0 };
    let height = if c.height > 0.0 { c.height } else { 360.0 };
    let (left, right, top, bottom) = (72.0, width - 20.0, 56.0, height - 52.0);
    let n = c.x_ticks.len().max(c.series.iter().map(|s| s.ys.len()).max().unwrap_or(0)).max(1);
    let xs = Scale::new((0.0, (n - 1).max(1) as f64), (left + 12.0, right - 12.0));
    let vals = c
        .series
        .iter()
        .flat_map(|s| s.ys.iter().copied().chain(s.band.iter().flat_map(|b| b.iter().flat_map(|(l, h)| [*l, *h]))));
    let ys = Scale::new(nice_domain(vals, true), (bottom, top));
    let mut s = open(width, height, &c.title);
    title_text(&mut s, 8.0, &c.title);
    let mut entries: Vec<(Swatch, String)> =
        c.series.iter().map(|sr| (Swatch::Line(sr.color.clone()), sr.name.clone())).collect();
    if c.series.iter().any(|sr| sr.band.is_some()) {
        entries.push((Swatch::Band("#555".into()), "shaded: 95 % interval".into()));
    }
    s.push_str(&legend(&entries, left, 42.0));
    y_axis(&mut s, &ys, left, right, 6, &c.y_label);
    for (i, t) in c.x_ticks.iter().enumerate() {
        let x = xs.map(i as f64);
        let _ = write!(
            s,
            "<line x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{bottom:.1}\" y2=\"{:.1}\" stroke=\"#888\"/>\
<text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#555\">{}</text>",
            bottom + 4.0,
            bottom + 17.0,
            esc(t)
        );
    }
    let _ = write!(
        s,
        "<line x1=\"{left:.1}\" x2=\"{right:.1}\" y1=\"{bottom:.1}\" y2=\"{bottom:.1}\" stroke=\"#888\"/>\
<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#333\">{}</text>",
        (left + right) / 2.0,
        bottom + 36.0,
        esc(&c.x_label)
    );
    if ys.d0 < 0.0 && ys.d1 > 0.0 {
        let y0 = ys.map(0.0);
        let _ = write!(s, "<line x1=\"{left:.1}\" x2=\"{right:.1}\" y1=\"{y0:.1}\" y2=\"{y0:.1}\" stroke=\"#555\"/>");
    }
    for sr in &c.series {
        if let Some(band) = &sr.band {
            let pts: Vec<(f64, f64, f64)> = band
                .iter()
                .enumerate()
                .filter(|(_, (l, h))| finite(*l) && finite(*h))
                .map(|(i, (l, h))| (xs.map(i as f64), ys.map(*l), ys.map(*h)))
                .collect();
            if pts.len() >= 2 {
                let mut d = String::new();
                for (k, (x, _, h)) in pts.iter().enumerate() {
                    let _ = write!(d, "{}{x:.1} {h:.1}", if k == 0 { "M" } else { "L" });
                }
                for (x, l, _) in pts.iter().rev() {
                    let _ = write!(d, "L{x:.1} {l:.1}");
                }
                let _ = write!(s, "<path d=\"{d}Z\" fill=\"{}\" fill-opacity=\"0.2\" stroke=\"none\"/>", sr.color);
            }
        }
        let mut d = String::new();
        let mut pen = false;
        for (i, y) in sr.ys.iter().enumerate() {
            if !finite(*y) {
                pen = false;
                continue;
            }
            let _ = write!(d, "{}{:.1} {:.1}", if pen { "L" } else { "M" }, xs.map(i as f64), ys.map(*y));
            pen = true;
        }
        let dash = if sr.dashed { " stroke-dasharray=\"6 4\"" } else { "" };
        let _ = write!(s, "<path d=\"{d}\" fill=\"none\" stroke=\"{}\" stroke-width=\"2.5\"{dash}/>", sr.color);
        for (i, y) in sr.ys.iter().enumerate().filter(|(_, y)| finite(**y)) {
            let _ = write!(
                s,
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3.5\" fill=\"{}\"><title>{} at {}: {}</title></circle>",
                xs.map(i as f64),
                ys.map(*y),
                sr.color,
                esc(&sr.name),
                esc(c.x_ticks.get(i).map_or("", String::as_str)),
                esc(&fmt_value(*y))
            );
        }
    }
    s.push_str("</svg>");
    s
}

/// A grid of values with a diverging colour scale centred on 0 and a colour-bar legend.
#[derive(Debug, Clone, Default)]
pub struct Heatmap {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub col_labels: Vec<String>,
    pub row_labels: Vec<String>,
    /// `values[row][col]`; None draws a grey cell.
    pub values: Vec<Vec<Option<f64>>>,
    /// Value of full colour saturation (default: the largest |value|).
    pub max_abs: Option<f64>,
    /// What the colour means, under the legend (e.g. "effect on the margin").
    pub legend_label: String,
    pub width: f64,
}

pub fn heatmap(c: &Heatmap) -> String {
    let width = if c.width > 0.0 { c.width } else { 820.0 };
    let ncol = c.col_labels.len().max(1);
    let nrow = c.row_labels.len().max(1);
    let label_w = c.row_labels.iter().map(|l| text_width(l, 12.0)).fold(40.0, f64::max).min(220.0) + 14.0;
    let mut left = label_w + 24.0;
    let legend_w = 150.0;
    let cell_w = ((width - left - legend_w - 30.0) / ncol as f64).min(110.0);
    // Column labels wider than their cells are drawn at 45°.
    let col_w = c.col_labels.iter().map(|l| text_width(l, 12.0)).fold(0.0, f64::max).min(200.0);
    let rotate = col_w > cell_w - 6.0 && col_w > text_width("000", 12.0);
    let label_h = if rotate { col_w * 0.71 + 14.0 } else { 20.0 };
    if rotate {
        left = left.max(col_w * 0.71 - cell_w / 2.0 + 8.0);
    }
    let cell_h = (cell_w * 0.6).clamp(22.0, 46.0);
    let top = 40.0;
    let grid_w = cell_w * ncol as f64;
    let bottom = top + cell_h * nrow as f64;
    let height = (bottom + label_h + 34.0).max(top + 190.0);
    let max_abs = c.max_abs.unwrap_or_else(|| {
        c.values.iter().flatten().flatten().filter(|v| v.is_finite()).fold(0.0f64, |m, v| m.max(v.abs()))
    });
    let mut s = open(width, height, &c.title);
    title_text(&mut s, 8.0, &c.title);
    let show_text = cell_w >= 44.0;
    for (r, row) in c.values.iter().enumerate() {
        let y = top + cell_h * r as f64;
        let rl = c.row_labels.get(r).map_or("", String::as_str);
        let _ = write!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" fill=\"#222\">{}</text>",
            left - 8.0,
            y + cell_h / 2.0 + 4.0,
            esc(rl)
        );
        for (k, v) in row.iter().enumerate() {
            let x = left + cell_w * k as f64;
            let fill = v.map_or("#e0e0e0".to_string(), |v| diverging_color(v, max_abs));
            let cl = c.col_labels.get(k).map_or("", String::as_str);
            let tip = format!("{rl}, {cl}: {}", v.map_or("—".to_string(), fmt_value));
            let _ = write!(
                s,
                "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{cell_w:.1}\" height=\"{cell_h:.1}\" fill=\"{fill}\" \
stroke=\"#fff\" stroke-width=\"1.5\"><title>{}</title></rect>",
                esc(&tip)
            );
            if show_text {
                let _ = write!(
                    s,
                    "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"11\" fill=\"{}\">{}</text>",
                    x + cell_w / 2.0,
                    y + cell_h / 2.0 + 4.0,
                    text_on(&fill),
                    esc(&v.map_or("—".to_string(), fmt_value))
                );
            }
        }
    }
    // Column labels: all when they fit (at 45° when wide), else every k-th.
    let every = if rotate {
        (14.0 / cell_w).ceil().max(1.0) as usize
    } else {
        ((text_width("000", 12.0) + 6.0) / cell_w).ceil().max(1.0) as usize
    };
    for (k, l) in c.col_labels.iter().enumerate() {
        if k % every != 0 {
            continue;
        }
        let x = left + cell_w * (k as f64 + 0.5);
        if rotate {
            let _ = write!(
                s,
                "<text transform=\"translate({x:.1} {:.1}) rotate(-45)\" text-anchor=\"end\" fill=\"#555\">{}</text>",
                bottom + 12.0,
                esc(l)
            );
        } else {
            let _ = write!(
                s,
                "<text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#555\">{}</text>",
                bottom + 16.0,
                esc(l)
            );
        }
    }
    let _ = write!(
        s,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#333\">{}</text>",
        left + grid_w / 2.0,
        bottom + label_h + 16.0,
        esc(&c.x_label)
    );
    if !c.y_label.is_empty() {
        let cy = (top + bottom) / 2.0;
        let _ = write!(
            s,
            "<text transform=\"translate(14 {cy:.1}) rotate(-90)\" text-anchor=\"middle\" fill=\"#333\">{}</text>",
            esc(&c.y_label)
        );
    }
    // Colour bar: −max … 0 … +max.
    let lx = left + grid_w + 36.0;
    let (lt, lh) = (top + 4.0, 130.0);
    let _ =
        write!(s, "<defs><linearGradient id=\"hm-grad-{id}\" x1=\"0\" y1=\"1\" x2=\"0\" y2=\"0\">", id = grad_id(c));
    for k in 0..=10 {
        let t = k as f64 / 10.0;
        let _ = write!(s, "<stop offset=\"{t:.2}\" stop-color=\"{}\"/>", diverging_color(2.0 * t - 1.0, 1.0));
    }
    let _ = write!(
        s,
        "</linearGradient></defs><rect x=\"{lx:.1}\" y=\"{lt:.1}\" width=\"16\" height=\"{lh:.1}\" \
fill=\"url(#hm-grad-{})\" stroke=\"#999\"/>",
        grad_id(c)
    );
    for (frac, v) in [(0.0, max_abs), (0.5, 0.0), (1.0, -max_abs)] {
        let y = lt + lh * frac;
        let _ = write!(
            s,
            "<line x1=\"{:.1}\" x2=\"{:.1}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#555\"/>\
<text x=\"{:.1}\" y=\"{:.1}\" fill=\"#444\">{}</text>",
            lx + 16.0,
            lx + 20.0,
            lx + 23.0,
            y + 4.0,
            esc(&fmt_value(v))
        );
    }
    let _ = write!(
        s,
        "<text x=\"{lx:.1}\" y=\"{:.1}\" fill=\"#333\" font-size=\"11\">{}</text>",
        lt + lh + 18.0,
        esc(&c.legend_label)
    );
    s.push_str("</svg>");
    s
}

/// A stable id for a heatmap's gradient (several heatmaps share one page).
fn grad_id(c: &Heatmap) -> String {
    reward_lens_engine::hash::Fnv::of(c.title.as_bytes()).hex()
}

/// Labelled points with zero lines and an optional y = x diagonal.
#[derive(Debug, Clone, Default)]
pub struct Scatter {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    /// (x, y, label)
    pub points: Vec<(f64, f64, String)>,
    pub diagonal: bool,
    pub color: String,
    pub width: f64,
    pub height: f64,
}

pub fn scatter(c: &Scatter) -> String {
    let width = if c.width > 0.0 { c.width } else { 420.0 };
    let height = if c.height > 0.0 { c.height } else { 380.0 };
    let (left, right, top, bottom) = (72.0, width - 16.0, 52.0, height - 52.0);
    let pts: Vec<&(f64, f64, String)> = c.points.iter().filter(|p| finite(p.0) && finite(p.1)).collect();
    // Room around the points for their labels: widen the data range by 8 % each side.
    let padded = |v: Vec<f64>| -> (f64, f64) {
        let (lo, hi) = v.iter().filter(|x| finite(**x)).fold((0.0f64, 0.0f64), |(l, h), x| (l.min(*x), h.max(*x)));
        let pad = 0.08 * (hi - lo);
        nice_domain([lo - pad, hi + pad], true)
    };
    let (xd, yd) = if c.diagonal {
        // One shared domain so the diagonal is at 45°.
        let d = padded(pts.iter().flat_map(|p| [p.0, p.1]).collect());
        (d, d)
    } else {
        (padded(pts.iter().map(|p| p.0).collect()), padded(pts.iter().map(|p| p.1).collect()))
    };
    let xs = Scale::new(xd, (left, right));
    let ys = Scale::new(yd, (bottom, top));
    let color = if c.color.is_empty() { "#2166ac" } else { c.color.as_str() };
    let mut s = open(width, height, &c.title);
    title_text(&mut s, 8.0, &c.title);
    let mut entries = vec![(Swatch::Dot(color.to_string()), "component".to_string())];
    if c.diagonal {
        entries.push((Swatch::Line("#999".into()), "y = x".into()));
    }
    s.push_str(&legend(&entries, left, 40.0));
    y_axis(&mut s, &ys, left, right, 5, &c.y_label);
    x_axis(&mut s, &xs, top, bottom, 5, &c.x_label);
    if xd.0 < 0.0 && xd.1 > 0.0 {
        let x0 = xs.map(0.0);
        let _ = write!(s, "<line x1=\"{x0:.1}\" x2=\"{x0:.1}\" y1=\"{top:.1}\" y2=\"{bottom:.1}\" stroke=\"#555\"/>");
    }
    if yd.0 < 0.0 && yd.1 > 0.0 {
        let y0 = ys.map(0.0);
        let _ = write!(s, "<line x1=\"{left:.1}\" x2=\"{right:.1}\" y1=\"{y0:.1}\" y2=\"{y0:.1}\" stroke=\"#555\"/>");
    }
    if c.diagonal {
        let (a, b) = (xd.0.max(yd.0), xd.1.min(yd.1));
        let _ = write!(
            s,
            "<line x1=\"{:.1}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"#999\" stroke-dasharray=\"5 4\"/>",
            xs.map(a),
            ys.map(a),
            xs.map(b),
            ys.map(b)
        );
    }
    let label_points = pts.len() <= 24;
    // Labels go beside their point where they do not overlap one already placed.
    let mut placed: Vec<(f64, f64, f64, f64)> =
        pts.iter().map(|(x, y, _)| (xs.map(*x) - 5.0, ys.map(*y) - 5.0, xs.map(*x) + 5.0, ys.map(*y) + 5.0)).collect();
    for (x, y, l) in &pts {
        let (px, py) = (xs.map(*x), ys.map(*y));
        let _ = write!(
            s,
            "<circle cx=\"{px:.1}\" cy=\"{py:.1}\" r=\"4.5\" fill=\"{color}\" fill-opacity=\"0.8\" stroke=\"#fff\">\
<title>{}: ({}, {})</title></circle>",
            esc(l),
            esc(&fmt_value(*x)),
            esc(&fmt_value(*y))
        );
        if label_points {
            let w = text_width(l, 11.0);
            let prefer_left = px + 7.0 + w > right;
            let mut options = [(7.0, -6.0, false), (7.0, 14.0, false), (-7.0, -6.0, true), (-7.0, 14.0, true)];
            if prefer_left {
                options.sort_by_key(|o| !o.2);
            }
            let boxed = |(dx, dy, end): (f64, f64, bool)| {
                let x0 = if end { px + dx - w } else { px + dx };
                (x0, py + dy - 10.0, x0 + w, py + dy + 2.0)
            };
            let free =
                |b: (f64, f64, f64, f64)| placed.iter().all(|p| b.2 < p.0 || b.0 > p.2 || b.3 < p.1 || b.1 > p.3);
            let choice = options.iter().copied().find(|o| free(boxed(*o))).unwrap_or(options[0]);
            placed.push(boxed(choice));
            let (dx, dy, end) = choice;
            let _ = write!(
                s,
                "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" fill=\"#333\" text-anchor=\"{}\">{}</text>",
                px + dx,
                py + dy,
                if end { "end" } else { "start" },
                esc(l)
            );
        }
    }
    s.push_str("</svg>");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_maps_domain_ends_to_range_ends() {
        let s = Scale::new((-2.0, 3.0), (10.0, 110.0));
        assert!((s.map(-2.0) - 10.0).abs() < 1e-12);
        assert!((s.map(3.0) - 110.0).abs() < 1e-12);
        assert!((s.map(0.5) - 60.0).abs() < 1e-12);
        // Reversed range (y axes grow upwards).
        let y = Scale::new((0.0, 1.0), (300.0, 20.0));
        assert!((y.map(0.0) - 300.0).abs() < 1e-12 && (y.map(1.0) - 20.0).abs() < 1e-12);
        // A degenerate domain maps to the middle instead of dividing by zero.
        assert_eq!(Scale::new((1.0, 1.0), (0.0, 10.0)).map(1.0), 5.0);
    }

    #[test]
    fn ticks_are_round_and_inside_the_domain() {
        let t = nice_ticks(-0.37, 1.12, 8);
        let want = [-0.2, 0.0, 0.2, 0.4, 0.6, 0.8, 1.0];
        assert_eq!(t.len(), want.len(), "{t:?}");
        assert!(t.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-12), "{t:?}");
        assert_eq!(nice_ticks(-0.37, 1.12, 5), vec![0.0, 0.5, 1.0]);
        assert_eq!(nice_ticks(0.0, 1.0, 2), vec![0.0, 0.5, 1.0]);
        let t = nice_ticks(0.0, 1.0, 5);
        assert_eq!((t.len(), t[0], t[5]), (6, 0.0, 1.0));
        assert!(nice_ticks(f64::NAN, 1.0, 5).is_empty());
        let (lo, hi) = nice_domain([0.13, 0.92], true);
        assert_eq!((lo, hi), (0.0, 1.0));
        let (lo, hi) = nice_domain([-0.31, 0.07], false);
        assert!(lo <= -0.31 && hi >= 0.07);
        assert_eq!(nice_domain([f64::NAN], false), (-1.0, 1.0));
        assert_eq!(fmt_tick(-0.0000001, 0.1), "0.0");
        assert_eq!(fmt_tick(-0.2, 0.1), "−0.2");
        assert_eq!(fmt_tick(250.0, 50.0), "250");
    }

    #[test]
    fn escaping_covers_markup_and_quotes() {
        assert_eq!(esc("<b>\"a\" & 'b'</b>"), "&lt;b&gt;&quot;a&quot; &amp; &#39;b&#39;&lt;/b&gt;");
        let c = HBarChart {
            title: "t <script>".into(),
            bars: vec![Bar { label: "a&b".into(), value: 1.0, ..Default::default() }],
            ..Default::default()
        };
        let svg = hbar_chart(&c);
        assert!(svg.contains("a&amp;b") && svg.contains("t &lt;script&gt;"));
        assert!(!svg.contains("<script"));
    }

    #[test]
    fn heatmap_colour_of_zero_is_neutral_and_sign_sets_the_hue() {
        assert_eq!(diverging_color(0.0, 1.0), "#f7f7f7");
        assert_eq!(diverging_color(0.0, 0.0), "#f7f7f7");
        let pos = diverging_color(1.0, 1.0);
        let neg = diverging_color(-1.0, 1.0);
        let rgb =
            |c: &str| (1..7).step_by(2).map(|i| u8::from_str_radix(&c[i..i + 2], 16).unwrap()).collect::<Vec<_>>();
        let (p, n) = (rgb(&pos), rgb(&neg));
        assert!(p[0] > p[2], "positive is red: {pos}");
        assert!(n[2] > n[0], "negative is blue: {neg}");
        assert_eq!(diverging_color(5.0, 1.0), pos, "saturates");
        // Symmetric lightness: +v and −v are equally far from neutral.
        let lum = |c: &[u8]| c.iter().map(|&x| x as f64).sum::<f64>();
        let (lp, ln) = (lum(&rgb(&diverging_color(0.5, 1.0))), lum(&rgb(&diverging_color(-0.5, 1.0))));
        assert!((lp - ln).abs() < 120.0);
    }

    #[test]
    fn charts_skip_non_finite_values() {
        let c = LineChart {
            title: "lens".into(),
            x_ticks: vec!["embed".into(), "0".into(), "1".into()],
            series: vec![Series {
                name: "margin".into(),
                color: "#000".into(),
                ys: vec![0.0, f64::NAN, 1.0],
                band: Some(vec![(0.0, 0.0), (f64::NAN, 1.0), (0.5, 1.5)]),
                dashed: false,
            }],
            ..Default::default()
        };
        let svg = line_chart(&c);
        assert!(!svg.contains("NaN") && !svg.contains("inf"));
        let h = heatmap(&Heatmap {
            title: "h".into(),
            col_labels: vec!["0".into()],
            row_labels: vec!["attn".into(), "mlp".into()],
            values: vec![vec![Some(1.0)], vec![None]],
            ..Default::default()
        });
        assert!(!h.contains("NaN") && h.contains("#e0e0e0"));
        let sc = scatter(&Scatter {
            title: "s".into(),
            points: vec![(1.0, 2.0, "a".into()), (f64::NAN, 1.0, "b".into())],
            diagonal: true,
            ..Default::default()
        });
        assert_eq!(sc.matches("<circle").count(), 2, "one point plus the legend dot");
        for svg in [svg, h, sc] {
            assert_eq!(svg.matches("<svg").count(), 1);
            assert!(svg.ends_with("</svg>"));
        }
    }

    #[test]
    fn value_labels() {
        assert_eq!(fmt_value(0.0846), "0.0846");
        assert_eq!(fmt_value(-0.42), "−0.420");
        assert_eq!(fmt_value(123.4), "123");
        assert_eq!(fmt_value(f64::NAN), "—");
    }
}
