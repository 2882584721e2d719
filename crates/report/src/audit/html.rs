//! The audit's `report.html`: one self-contained page (inline CSS and SVG, no scripts, no
//! network, no external fonts or images). Every section is an element with a stable id:
//! summary, ground-truth (with an answer key), model, evaluation, lens, attribution, patching,
//! faithfulness, probes, concepts, conflicts.

use std::fmt::Write;

use serde_json::Value;

use reward_lens_instruments::attribution::RankBy;
use reward_lens_instruments::conflict::Relationship;
use reward_lens_instruments::probes::{Verdict, ALPHA, MIN_RELATIVE_EFFECT};
use reward_lens_instruments::stats::{mean, MeanCi};

use super::results::{fixed_ci, mean_ci, num, p_fmt, pct_ci, rho_ci, sig, signed3, AuditResults, Severity};
use super::svg::{self, esc, Bar, HBarChart, Heatmap, LineChart, Scatter, Series, Swatch};

/// The ids of the report's sections, in page order (ground-truth only with an answer key).
pub const SECTION_IDS: &[&str] = &[
    "summary",
    "ground-truth",
    "model",
    "evaluation",
    "lens",
    "attribution",
    "patching",
    "faithfulness",
    "probes",
    "concepts",
    "conflicts",
    "cart",
];

const CSS: &str = r#"
:root { color-scheme: light; }
* { box-sizing: border-box; }
body { margin: 0; background: #f4f5f7; color: #1f2328;
  font: 15px/1.55 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
.wrap { max-width: 1100px; margin: 0 auto; padding: 0 24px; }
header { background: #fff; border-bottom: 1px solid #d8dee4; padding: 22px 0 14px; }
h1 { font-size: 25px; margin: 0 0 4px; }
.sub { color: #57606a; margin: 0 0 10px; }
nav a { display: inline-block; margin: 0 14px 4px 0; color: #0969da; text-decoration: none; font-size: 14px; }
nav a:hover { text-decoration: underline; }
section { background: #fff; border: 1px solid #d8dee4; border-radius: 8px; padding: 18px 26px 20px;
  margin: 20px 0; }
h2 { font-size: 20px; margin: 0 0 10px; padding-bottom: 6px; border-bottom: 1px solid #eaeef2; }
h3 { font-size: 16px; margin: 18px 0 6px; }
p { margin: 8px 0; }
.explain { color: #3d444d; max-width: 88ch; }
.muted { color: #6e7781; font-size: 13px; }
table { border-collapse: collapse; font-size: 13.5px; margin: 10px 0 4px; }
th, td { padding: 5px 12px 5px 0; border-bottom: 1px solid #eaeef2; text-align: left; vertical-align: top; }
th { font-weight: 600; color: #3d444d; border-bottom: 2px solid #d8dee4; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; padding-left: 12px; }
tr.flag-exploitable td { background: #fdecea; font-weight: 600; }
tr.flag-penalized td { background: #e8f1fa; font-weight: 600; }
svg.chart { max-width: 100%; height: auto; display: block; margin: 10px 0 4px; }
.panels { display: grid; grid-template-columns: repeat(auto-fit, minmax(440px, 1fr)); gap: 8px 20px; }
ul.findings { list-style: none; padding: 0; margin: 6px 0 0; }
li.finding { border-left: 5px solid #8c959f; background: #f8f9fa; border-radius: 4px; padding: 9px 14px;
  margin: 10px 0; }
li.finding .title { font-weight: 650; }
li.sev-critical { border-color: #b2182b; background: #fdf1f0; }
li.sev-warning { border-color: #e08214; background: #fff7ec; }
li.sev-notice { border-color: #2166ac; background: #f1f6fc; }
.badge { display: inline-block; font-size: 11px; font-weight: 700; letter-spacing: .04em; text-transform: uppercase;
  border-radius: 10px; padding: 1px 8px; margin-right: 8px; color: #fff; background: #6e7781; vertical-align: 1px; }
.badge.critical { background: #b2182b; } .badge.warning { background: #c26a00; }
.badge.notice { background: #2166ac; } .badge.info { background: #6e7781; }
.kv td:first-child { color: #57606a; padding-right: 24px; }
code { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 13px;
  background: #f2f4f6; padding: 0 4px; border-radius: 3px; }
footer { color: #6e7781; font-size: 13px; padding: 6px 0 30px; }
"#;

/// Renders the report.
pub fn render(r: &AuditResults) -> String {
    let mut h = String::with_capacity(200_000);
    let title = format!("reward-lens audit — {}", r.inputs.model);
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<title>{}</title>\n<style>{CSS}</style>\n\
</head>\n<body>\n",
        esc(&title)
    );
    let _ = write!(
        h,
        "<header><div class=\"wrap\"><h1>Reward-model audit</h1><p class=\"sub\"><b>{}</b> · {} ({} layers, \
d_model {}) · {} of {} pairs from <code>{}</code> · {} probes · {} concepts · seed {} · {:.1} s</p><nav>",
        esc(&r.inputs.model),
        esc(&r.model.class_name),
        r.model.n_layers,
        r.model.d_model,
        r.inputs.pairs_used,
        r.inputs.pairs_total,
        esc(&r.inputs.pairs_source),
        r.inputs.n_probes,
        r.inputs.n_concepts,
        r.inputs.seed,
        r.total_seconds
    );
    for id in SECTION_IDS {
        if *id == "ground-truth" && r.answer_key.is_none() {
            continue;
        }
        let _ = write!(h, "<a href=\"#{id}\">{}</a>", esc(&section_title(id)));
    }
    h.push_str("</nav></div></header>\n<main class=\"wrap\">\n");
    summary(&mut h, r);
    if r.answer_key.is_some() {
        ground_truth(&mut h, r);
    }
    model(&mut h, r);
    evaluation(&mut h, r);
    lens(&mut h, r);
    attribution(&mut h, r);
    patching(&mut h, r);
    faithfulness(&mut h, r);
    probes(&mut h, r);
    concepts(&mut h, r);
    conflicts(&mut h, r);
    cart(&mut h, r);
    let _ = write!(
        h,
        "</main>\n<footer class=\"wrap\">Generated by reward-lens {} · every number is in <code>results.json</code> \
beside this page · intervals are 95 % percentile bootstraps ({} resamples, seed {}) unless a finding names another \
(accuracies: exact binomial).</footer>\n</body>\n</html>\n",
        esc(&r.reward_lens_version),
        r.inputs.bootstrap_resamples,
        r.inputs.seed
    );
    h
}

fn section_title(id: &str) -> String {
    match id {
        "summary" => "Summary",
        "ground-truth" => "Ground truth",
        "model" => "Model",
        "evaluation" => "Evaluation",
        "lens" => "Reward lens",
        "attribution" => "Attribution",
        "patching" => "Patching",
        "faithfulness" => "Faithfulness",
        "probes" => "Probes",
        "concepts" => "Concepts",
        "conflicts" => "Conflicts",
        "cart" => "CART: tail circuits",
        other => other,
    }
    .to_string()
}

fn open(h: &mut String, id: &str, explain: &str) {
    let _ = write!(h, "<section id=\"{id}\">\n<h2>{}</h2>\n", esc(&section_title(id)));
    if !explain.is_empty() {
        let _ = writeln!(h, "<p class=\"explain\">{explain}</p>");
    }
}

fn close(h: &mut String) {
    h.push_str("</section>\n");
}

/// A table from a header and rows of cells (already escaped HTML); `num[i]` right-aligns column i.
fn table(h: &mut String, head: &[&str], num: &[bool], rows: &[Vec<String>], row_class: &[String]) {
    h.push_str("<table><thead><tr>");
    for (i, c) in head.iter().enumerate() {
        let cls = if num.get(i).copied().unwrap_or(false) { " class=\"num\"" } else { "" };
        let _ = write!(h, "<th{cls}>{}</th>", esc(c));
    }
    h.push_str("</tr></thead><tbody>");
    for (k, row) in rows.iter().enumerate() {
        match row_class.get(k).filter(|c| !c.is_empty()) {
            Some(c) => {
                let _ = write!(h, "<tr class=\"{c}\">");
            }
            None => h.push_str("<tr>"),
        }
        for (i, c) in row.iter().enumerate() {
            let cls = if num.get(i).copied().unwrap_or(false) { " class=\"num\"" } else { "" };
            let _ = write!(h, "<td{cls}>{c}</td>");
        }
        h.push_str("</tr>");
    }
    h.push_str("</tbody></table>\n");
}

fn ci_pair(m: &MeanCi) -> Option<(f64, f64)> {
    m.ci_low.zip(m.ci_high)
}

fn summary(h: &mut String, r: &AuditResults) {
    open(
        h,
        "summary",
        "What the audit found, most important first. Every number comes with its uncertainty: 95 % intervals in \
brackets (each finding names its kind), p-values with the null they test, and q-values adjusted for testing many things at once \
(Benjamini–Hochberg).",
    );
    h.push_str("<ul class=\"findings\">");
    for f in &r.findings {
        let sev = match f.severity {
            Severity::Critical => "critical",
            Severity::Warning => "warning",
            Severity::Notice => "notice",
            Severity::Info => "info",
        };
        let _ = write!(
            h,
            "<li class=\"finding sev-{sev}\"><span class=\"badge {sev}\">{sev}</span><span class=\"title\">{}</span>\
<div>{}</div></li>",
            esc(&f.title),
            esc(&f.text)
        );
    }
    h.push_str("</ul>\n");
    close(h);
}

fn model(h: &mut String, r: &AuditResults) {
    open(h, "model", "");
    let i = &r.model;
    let mut rows: Vec<(&str, String)> = vec![("model", r.inputs.model.clone())];
    rows.extend(crate::model_info::rows(i));
    if r.inputs.model_dir != r.inputs.model {
        rows.insert(1, ("directory", r.inputs.model_dir.clone()));
    }
    h.push_str("<div class=\"panels\"><div><h3>Model</h3><table class=\"kv\"><tbody>");
    for (k, v) in rows {
        let _ = write!(h, "<tr><td>{}</td><td>{}</td></tr>", esc(k), esc(&v));
    }
    h.push_str("</tbody></table></div><div><h3>Audit inputs</h3><table class=\"kv\"><tbody>");
    let s = &r.inputs;
    let rows: Vec<(&str, String)> = vec![
        ("pairs", format!("{} ({} of {} used{})", s.pairs_source, s.pairs_used, s.pairs_total, sample_note(s))),
        ("probes", format!("{} ({} probes)", s.probes_source, s.n_probes)),
        ("concepts", format!("{} ({} concepts)", s.concepts_source, s.n_concepts)),
        ("seed", s.seed.to_string()),
        ("batch size", s.batch_size.to_string()),
        ("compute", format!("{} on {}", s.dtype, s.device)),
        ("patching", s.patching.clone()),
        ("permutations", s.permutations.to_string()),
    ];
    let mut rows = rows;
    if !s.skipped.is_empty() {
        rows.push((
            "left out (longer than the context)",
            format!("{} items: {}", s.skipped.len(), first_few(&s.skipped)),
        ));
    }
    if !s.identical_pairs.is_empty() {
        let text =
            format!("{} pairs (margin 0, counted wrong): {}", s.identical_pairs.len(), first_few(&s.identical_pairs));
        rows.push(("same chosen and rejected text", text));
    }
    for (k, v) in rows {
        let _ = write!(h, "<tr><td>{}</td><td>{}</td></tr>", esc(k), esc(&v));
    }
    h.push_str("</tbody></table><h3>Time per stage</h3><table><tbody>");
    for t in &r.timings {
        let _ = write!(h, "<tr><td>{}</td><td class=\"num\">{:.2} s</td></tr>", esc(&t.stage), t.seconds);
    }
    let _ = write!(h, "<tr><th>total</th><th class=\"num\">{:.2} s</th></tr>", r.total_seconds);
    h.push_str("</tbody></table></div></div>\n");
    close(h);
}

/// The first four items, then how many more results.json lists.
fn first_few(items: &[String]) -> String {
    let mut list: Vec<String> = items.iter().take(4).cloned().collect();
    if items.len() > 4 {
        list.push(format!("… {} more in results.json", items.len() - 4));
    }
    list.join("; ")
}

fn sample_note(s: &super::results::AuditSetup) -> String {
    if s.pairs_used < s.pairs_total {
        format!("; a seeded sample, --max-pairs {}", s.max_pairs)
    } else {
        String::new()
    }
}

fn evaluation(h: &mut String, r: &AuditResults) {
    let e = &r.evaluation;
    open(
        h,
        "evaluation",
        &format!(
            "How often the model scores the chosen answer above the rejected one (ties count as wrong, as in \
RewardBench), overall and per subset. Overall: <b>{}</b> of {} pairs; mean margin {} reward.",
            esc(&pct_ci(e.accuracy, e.ci)),
            e.n,
            esc(&mean_ci(&r.mean_margin))
        ),
    );
    let mut bars = vec![Bar {
        label: "overall".into(),
        value: e.accuracy,
        ci: e.ci,
        note: format!("n = {}", e.n),
        color: Some("#2166ac".into()),
        highlight: true,
    }];
    for s in &e.subsets {
        bars.push(Bar {
            label: s.subset.clone(),
            value: s.accuracy,
            ci: s.ci,
            note: format!("n = {}", s.n),
            color: Some(svg::NEUTRAL.into()),
            highlight: false,
        });
    }
    h.push_str(&svg::hbar_chart(&HBarChart {
        title: "Accuracy by subset".into(),
        x_label: "accuracy (share of pairs with chosen > rejected)".into(),
        bars,
        reference: Some((0.5, "chance".into())),
        domain: Some((0.0, 1.0)),
        width: 900.0,
        legend: vec![],
    }));
    let mut rows = vec![vec![
        "<b>overall</b>".to_string(),
        e.n.to_string(),
        esc(&pct_ci(e.accuracy, e.ci)),
        esc(&num(e.mean_margin)),
    ]];
    for s in &e.subsets {
        rows.push(vec![esc(&s.subset), s.n.to_string(), esc(&pct_ci(s.accuracy, s.ci)), esc(&num(s.mean_margin))]);
    }
    table(h, &["subset", "pairs", "accuracy [95 % CI]", "mean margin"], &[false, true, true, true], &rows, &[]);
    if let Some(rb) = &e.rewardbench {
        let secs: Vec<String> = rb.sections.iter().map(|s| format!("{} {:.1} %", s.section, 100.0 * s.score)).collect();
        let _ = write!(
            h,
            "<p>RewardBench sections: {} · score {:.1} %{}</p>",
            esc(&secs.join(", ")),
            100.0 * rb.score,
            if rb.complete { "" } else { " (incomplete: some subsets missing)" }
        );
    }
    if !r.worst_pairs.is_empty() {
        h.push_str(
            "<h3>Lowest margins</h3><p class=\"muted\">The pairs where the model most prefers the rejected \
answer (or least prefers the chosen one).</p>",
        );
        let rows: Vec<Vec<String>> = r
            .worst_pairs
            .iter()
            .map(|p| {
                vec![
                    esc(&p.id.to_string()),
                    esc(p.subset.as_deref().unwrap_or("")),
                    esc(&p.prompt),
                    esc(&p.chosen),
                    esc(&p.rejected),
                    esc(&num(p.margin)),
                ]
            })
            .collect();
        table(
            h,
            &["id", "subset", "prompt", "chosen", "rejected", "margin"],
            &[false, false, false, false, false, true],
            &rows,
            &[],
        );
    }
    close(h);
}

fn layer_ticks(layers: &[i64]) -> Vec<String> {
    layers.iter().map(|l| if *l < 0 { "embed".to_string() } else { l.to_string() }).collect()
}

fn band(ms: &[MeanCi]) -> Vec<(f64, f64)> {
    ms.iter().map(|m| (m.ci_low.unwrap_or(f64::NAN), m.ci_high.unwrap_or(f64::NAN))).collect()
}

fn means(ms: &[MeanCi]) -> Vec<f64> {
    ms.iter().map(|m| m.mean.unwrap_or(f64::NAN)).collect()
}

fn lens(h: &mut String, r: &AuditResults) {
    let l = &r.lens;
    open(
        h,
        "lens",
        &format!(
            "The reward read at every depth of the residual stream (the embedding output, then each block's output), \
at the token the reward is pooled from: <code>w_r · FinalNorm(h_l) + b</code>, the reward the model would give if \
it stopped at layer l. The last point is the model's reward. The preference crystallizes (chosen − rejected first \
reaches half its final value) at depth fraction <b>{}</b>.",
            esc(&{
                let c = &l.crystallization_fraction;
                fixed_ci(c.mean, c.ci_low, c.ci_high, 2, false)
            })
        ),
    );
    let ticks = layer_ticks(&l.layers);
    h.push_str("<div class=\"panels\">");
    h.push_str(&svg::line_chart(&LineChart {
        title: "Reward read at each layer (mean over pairs)".into(),
        x_label: "layer".into(),
        y_label: "lens reward".into(),
        x_ticks: ticks.clone(),
        series: vec![
            Series {
                name: "chosen".into(),
                color: "#2166ac".into(),
                ys: means(&r.lens_bands.chosen),
                band: Some(band(&r.lens_bands.chosen)),
                dashed: false,
            },
            Series {
                name: "rejected".into(),
                color: "#e08214".into(),
                ys: means(&r.lens_bands.rejected),
                band: Some(band(&r.lens_bands.rejected)),
                dashed: false,
            },
        ],
        width: 530.0,
        height: 360.0,
    }));
    h.push_str(&svg::line_chart(&LineChart {
        title: "Margin (chosen − rejected) by layer".into(),
        x_label: "layer".into(),
        y_label: "lens margin".into(),
        x_ticks: ticks.clone(),
        series: vec![Series {
            name: "margin".into(),
            color: "#1b7837".into(),
            ys: means(&l.mean_differential),
            band: Some(band(&l.mean_differential)),
            dashed: false,
        }],
        width: 530.0,
        height: 360.0,
    }));
    h.push_str("</div>");
    let rows: Vec<Vec<String>> = ticks
        .iter()
        .enumerate()
        .map(|(k, t)| {
            vec![
                esc(t),
                esc(&mean_ci(&r.lens_bands.chosen[k])),
                esc(&mean_ci(&r.lens_bands.rejected[k])),
                esc(&mean_ci(&l.mean_differential[k])),
            ]
        })
        .collect();
    table(
        h,
        &["layer", "chosen [95 % CI]", "rejected [95 % CI]", "margin [95 % CI]"],
        &[false, true, true, true],
        &rows,
        &[],
    );
    close(h);
}

fn attribution(h: &mut String, r: &AuditResults) {
    let a = &r.attribution;
    let worst =
        a.pairs.iter().flat_map(|p| [p.chosen.residual, p.rejected.residual]).fold(0.0f64, |m, x| m.max(x.abs()));
    open(
        h,
        "attribution",
        &format!(
            "Each reward split exactly over the components that write into the residual stream (embeddings, each \
layer's attention and MLP), with the final norm's scale frozen from the run, so the contributions plus the head's \
bias add up to the reward (largest |sum − reward| here: {worst:.1e}). Bars: each component's mean share of the \
chosen − rejected margin, largest first."
        ),
    );
    let top = a.top_k(None, 12, RankBy::Differential);
    let bars: Vec<Bar> = top
        .iter()
        .map(|(name, v)| {
            let i = a.components.iter().position(|c| &c.name == name).expect("listed component");
            let m = &a.mean_differential[i];
            Bar { label: name.clone(), value: *v, ci: ci_pair(m), note: mean_ci(m), ..Default::default() }
        })
        .collect();
    h.push_str(&svg::hbar_chart(&HBarChart {
        title: format!("Top {} components by |mean contribution to the margin|", bars.len()),
        x_label: "mean contribution to chosen − rejected (reward)".into(),
        bars,
        width: 900.0,
        legend: vec![
            (Swatch::Box(svg::POSITIVE.into()), "favours chosen".into()),
            (Swatch::Box(svg::NEGATIVE.into()), "favours rejected".into()),
        ],
        ..Default::default()
    }));
    close(h);
}

fn patching(h: &mut String, r: &AuditResults) {
    let p = &r.faithfulness.patching;
    open(
        h,
        "patching",
        &format!(
            "Activation patching ({}): each component's output in the chosen run is replaced by its value in the \
rejected run, the model re-scored, and the effect is the margin lost (positive: the component carries the \
preference). Mean over {} pairs; {:.1} forward-equivalents per pair.",
            esc(&r.inputs.patching),
            p.pairs.len(),
            p.forward_equivalents_per_pair
        ),
    );
    let g = &r.patching_by_layer;
    let values =
        vec![g.attention.iter().map(|m| m.mean).collect::<Vec<_>>(), g.mlp.iter().map(|m| m.mean).collect::<Vec<_>>()];
    h.push_str(&svg::heatmap(&Heatmap {
        title: "Activation patching: mean effect on the margin".into(),
        x_label: "layer".into(),
        y_label: String::new(),
        col_labels: g.layers.iter().map(|l| l.to_string()).collect(),
        row_labels: vec!["attention".into(), "MLP".into()],
        values,
        max_abs: None,
        legend_label: "margin lost when patched".into(),
        width: 900.0,
    }));
    // Top components with all three measures side by side.
    let mut idx: Vec<usize> = (0..p.components.len()).collect();
    idx.sort_by(|&a, &b| {
        p.mean_effect[b].mean.unwrap_or(0.0).abs().total_cmp(&p.mean_effect[a].mean.unwrap_or(0.0).abs())
    });
    let atp = &r.faithfulness.attribution_patching;
    let rows: Vec<Vec<String>> = idx
        .iter()
        .take(12)
        .map(|&k| {
            let name = &p.components[k].name;
            let dla = r
                .attribution
                .components
                .iter()
                .position(|c| &c.name == name)
                .map_or("—".to_string(), |i| mean_ci(&r.attribution.mean_differential[i]));
            let a = atp
                .components
                .iter()
                .position(|c| &c.name == name)
                .map_or("—".to_string(), |i| mean_ci(&atp.mean_effect[i]));
            vec![format!("<code>{}</code>", esc(name)), esc(&mean_ci(&p.mean_effect[k])), esc(&a), esc(&dla)]
        })
        .collect();
    table(
        h,
        &["component", "patching effect [95 % CI]", "AtP estimate [95 % CI]", "direct attribution [95 % CI]"],
        &[false, true, true, true],
        &rows,
        &[],
    );
    close(h);
}

fn faithfulness(h: &mut String, r: &AuditResults) {
    let f = &r.faithfulness;
    open(
        h,
        "faithfulness",
        "Does a cheap linear estimate predict what patching does? For every pair the components are ranked three \
ways — exact direct attribution (DLA), attribution patching (AtP, a first-order estimate from one gradient pass) \
and activation patching — and Spearman ρ of each estimate against patching is computed; titles give the mean ρ over \
pairs with a 95 % bootstrap interval. Each point is one component's mean over pairs.",
    );
    let dla_mean: Vec<f64> = (0..f.components.len())
        .map(|k| mean(&f.dla.iter().map(|d| d[k]).collect::<Vec<_>>()).unwrap_or(f64::NAN))
        .collect();
    let patch_mean = means(&f.patching.mean_effect);
    let atp_mean = means(&f.attribution_patching.mean_effect);
    let pts = |xs: &[f64]| -> Vec<(f64, f64, String)> {
        xs.iter().zip(&patch_mean).zip(&f.components).map(|((x, y), n)| (*x, *y, n.clone())).collect()
    };
    h.push_str("<div class=\"panels\">");
    h.push_str(&svg::scatter(&Scatter {
        title: format!("DLA vs patching: ρ = {}", rho_ci(&f.overall.dla_vs_patch)),
        x_label: "direct attribution (mean, reward)".into(),
        y_label: "patching effect (mean, reward)".into(),
        points: pts(&dla_mean),
        diagonal: true,
        color: "#2166ac".into(),
        width: 530.0,
        height: 420.0,
    }));
    h.push_str(&svg::scatter(&Scatter {
        title: format!("AtP vs patching: ρ = {}", rho_ci(&f.overall.atp_vs_patch)),
        x_label: "attribution patching estimate (mean, reward)".into(),
        y_label: "patching effect (mean, reward)".into(),
        points: pts(&atp_mean),
        diagonal: true,
        color: "#b35806".into(),
        width: 530.0,
        height: 420.0,
    }));
    h.push_str("</div>");
    let mut rows = vec![vec![
        "<b>overall</b>".to_string(),
        f.overall.dla_vs_patch.n.to_string(),
        esc(&rho_ci(&f.overall.dla_vs_patch)),
        esc(&rho_ci(&f.overall.dla_vs_patch_abs)),
        esc(&rho_ci(&f.overall.atp_vs_patch)),
        esc(&rho_ci(&f.overall.atp_vs_patch_abs)),
    ]];
    for (s, a) in &f.subsets {
        rows.push(vec![
            esc(s),
            a.dla_vs_patch.n.to_string(),
            esc(&rho_ci(&a.dla_vs_patch)),
            esc(&rho_ci(&a.dla_vs_patch_abs)),
            esc(&rho_ci(&a.atp_vs_patch)),
            esc(&rho_ci(&a.atp_vs_patch_abs)),
        ]);
    }
    table(
        h,
        &["pairs", "n", "DLA vs patching ρ", "on |values|", "AtP vs patching ρ", "on |values|"],
        &[false, true, true, true, true, true],
        &rows,
        &[],
    );
    close(h);
}

fn verdict_text(v: Verdict) -> &'static str {
    match v {
        Verdict::Exploitable => "EXPLOITABLE",
        Verdict::Penalized => "penalized",
        Verdict::NoEvidence => "no evidence",
        Verdict::Undefined => "undefined",
    }
}

fn probes(h: &mut String, r: &AuditResults) {
    let p = &r.probes;
    open(
        h,
        "probes",
        &format!(
            "Single-edit probes: a neutral answer and the same answer with one biased edit (padding, certainty, \
markdown, agreement, …), so <code>r(biased) − r(neutral)</code> is what the model pays for the bias alone. A \
dimension is flagged <b>exploitable</b> when the Benjamini–Hochberg q of its sign-flip permutation test is below \
{} and Cohen's d ≥ {} (penalized: d ≤ −{}).",
            p.alpha, p.min_effect, p.min_effect
        ),
    );
    let bars: Vec<Bar> = p
        .dimensions
        .iter()
        .map(|d| {
            let color = match d.verdict {
                Verdict::Exploitable => svg::HIGHLIGHT,
                Verdict::Penalized => "#2166ac",
                _ => svg::MUTED,
            };
            Bar {
                label: d.dimension.clone(),
                value: d.mean_delta.mean.unwrap_or(f64::NAN),
                ci: ci_pair(&d.mean_delta),
                highlight: matches!(d.verdict, Verdict::Exploitable | Verdict::Penalized),
                note: format!(
                    "d {} · q {}{}",
                    d.cohens_d.map_or("—".into(), |x| sig(x, 2, false)),
                    p_fmt(d.q_value),
                    if d.verdict == Verdict::Exploitable { " · flagged" } else { "" }
                ),
                color: Some(color.into()),
            }
        })
        .collect();
    h.push_str(&svg::hbar_chart(&HBarChart {
        title: "What the model pays for each bias (mean reward delta, biased − neutral)".into(),
        x_label: "mean reward delta".into(),
        bars,
        width: 900.0,
        legend: vec![
            (Swatch::Box(svg::HIGHLIGHT.into()), "flagged exploitable".into()),
            (Swatch::Box("#2166ac".into()), "flagged penalized".into()),
            (Swatch::Box(svg::MUTED.into()), "no evidence".into()),
        ],
        ..Default::default()
    }));
    let mut classes = Vec::new();
    let rows: Vec<Vec<String>> = p
        .dimensions
        .iter()
        .map(|d| {
            classes.push(match d.verdict {
                Verdict::Exploitable => "flag-exploitable".to_string(),
                Verdict::Penalized => "flag-penalized".to_string(),
                _ => String::new(),
            });
            let dci = match (d.cohens_d, d.cohens_d_ci) {
                (Some(x), Some((a, b))) => fixed_ci(Some(x), Some(a), Some(b), 2, false),
                (Some(x), None) => sig(x, 2, false),
                _ => "undefined".into(),
            };
            let mut verdict = verdict_text(d.verdict).to_string();
            if let Some(s) = d.slope_per_100_tokens {
                verdict.push_str(&format!(" ({} per 100 tokens)", num(s)));
            }
            vec![
                esc(&d.dimension),
                d.n.to_string(),
                esc(&mean_ci(&d.mean_delta)),
                esc(&dci),
                format!("{:.0} %", 100.0 * d.share_rewarded),
                esc(&p_fmt(d.p_value)),
                esc(&p_fmt(d.q_value)),
                esc(&verdict),
            ]
        })
        .collect();
    table(
        h,
        &["dimension", "n", "mean Δreward [95 % CI]", "Cohen's d [95 % CI]", "rewarded", "p", "q (BH)", "verdict"],
        &[false, true, true, true, true, true, true, false],
        &rows,
        &classes,
    );
    close(h);
}

fn concepts(h: &mut String, r: &AuditResults) {
    let c = &r.concepts;
    open(
        h,
        "concepts",
        &format!(
            "A concept vector is the normalised mean of <code>h(positive) − h(negative)</code> at block {}'s output \
(pooled token), from pairs where the positive answer shows the behaviour. Whether the model pays for the behaviour is \
tested on those pairs' rewards: the shift reward(positive) − reward(negative), its two-sided sign-flip p and the \
Benjamini–Hochberg q across the concepts; a concept is marked when q < {ALPHA} and the shift is at least \
{MIN_RELATIVE_EFFECT} × the SD of the negative answers' rewards (the probes' bar). The bars show where the vector points: \
its cosine with the direction the reward reads the residual stream along. The cosine's p against a uniformly random \
direction in {} dimensions is for reference only: activation differences are not isotropic, so even concepts made of \
unrelated texts often reach tiny values there.",
            c.layer, c.d_model
        ),
    );
    let marked = |k: usize| {
        let x = &c.concepts[k];
        r.concept_q_values.get(k).copied().flatten().is_some_and(|q| q < ALPHA)
            && x.relative_reward_shift.is_none_or(|v| v.abs() >= MIN_RELATIVE_EFFECT)
    };
    let bars: Vec<Bar> = c
        .concepts
        .iter()
        .enumerate()
        .map(|(k, x)| {
            let q = r.concept_q_values.get(k).copied().flatten();
            let color = match (marked(k), x.mean_reward_shift >= 0.0) {
                (true, true) => svg::HIGHLIGHT,
                (true, false) => "#2166ac",
                (false, _) if x.alignment >= 0.0 => svg::POSITIVE,
                (false, _) => svg::NEGATIVE,
            };
            Bar {
                label: x.name.clone(),
                value: x.alignment,
                ci: None,
                highlight: marked(k),
                note: format!("shift {} · q {}", num(x.mean_reward_shift), p_fmt(q)),
                color: Some(color.into()),
            }
        })
        .collect();
    h.push_str(&svg::hbar_chart(&HBarChart {
        title: "Alignment of each concept with the reward direction (cosine)".into(),
        x_label: "cosine with the reward read-out direction".into(),
        bars,
        width: 900.0,
        legend: vec![
            (Swatch::Box(svg::POSITIVE.into()), "points along the read-out".into()),
            (Swatch::Box(svg::NEGATIVE.into()), "points against it".into()),
            (Swatch::Box(svg::HIGHLIGHT.into()), "rewarded (shift q < 0.05, material)".into()),
            (Swatch::Box("#2166ac".into()), "penalized (shift q < 0.05, material)".into()),
        ],
        ..Default::default()
    }));
    let rows: Vec<Vec<String>> = c
        .concepts
        .iter()
        .enumerate()
        .map(|(k, x)| {
            vec![
                esc(&x.name),
                x.n_pairs.to_string(),
                esc(&num(x.mean_reward_shift)),
                x.relative_reward_shift.map_or("—".into(), |v| format!("{v:+.2}")),
                esc(&p_fmt(x.shift_p_value)),
                esc(&p_fmt(r.concept_q_values.get(k).copied().flatten())),
                signed3(x.alignment),
                esc(&p_fmt(x.p_value)),
                format!("{:.0} %", 100.0 * x.consistency),
            ]
        })
        .collect();
    table(
        h,
        &["concept", "pairs", "reward shift", "÷ reward SD", "shift p", "q (BH)", "cosine", "cosine p", "consistency"],
        &[false, true, true, true, true, true, true, true, true],
        &rows,
        &[],
    );
    let _ = write!(
        h,
        "<p class=\"muted\">Reward shift: mean reward(positive) − reward(negative) on the concept's pairs; ÷ reward SD: \
the same over the SD of the negative answers' rewards. Cosine p: the random-direction reference above. Consistency: \
share of pairs whose own difference points along the vector.</p>"
    );
    close(h);
}

fn relationship(r: Relationship) -> &'static str {
    match r {
        Relationship::Aligned => "aligned",
        Relationship::Orthogonal => "orthogonal",
        Relationship::InConflict => "in conflict",
    }
}

fn conflicts(h: &mut String, r: &AuditResults) {
    let c = &r.conflicts;
    open(
        h,
        "conflicts",
        "One preference direction per subset of pairs (the mean of <code>h(chosen) − h(rejected)</code> at the last \
block's output); every two are compared by cosine (> 0.5 aligned, < −0.3 in conflict, |cos| < 0.2 orthogonal). \
A conflict is tested by permutation: p is the share of random splits of the two subsets' pooled pairs (same sizes) \
whose directions' cosine is as low, q its Benjamini–Hochberg adjustment across the subset pairs. Subsets that \
conflict pull the reward in opposite directions.",
    );
    match &c.terms {
        None => {
            let _ = write!(h, "<p>Not computed: {}.</p>", esc(c.note.as_deref().unwrap_or("no terms")));
        }
        Some(t) => {
            let _ = write!(
                h,
                "<p>{} terms; overall conflict score <b>{:.3}</b>, monitorability risk <b>{:.3}</b>.</p>",
                t.term_names.len(),
                t.overall_conflict_score,
                t.monitorability_risk
            );
            let values: Vec<Vec<Option<f64>>> =
                t.similarity.iter().map(|row| row.iter().map(|v| Some(*v)).collect()).collect();
            h.push_str(&svg::heatmap(&Heatmap {
                title: "Cosine between subsets' preference directions".into(),
                x_label: "subset".into(),
                y_label: String::new(),
                col_labels: t.term_names.clone(),
                row_labels: t.term_names.clone(),
                values,
                max_abs: Some(1.0),
                legend_label: "cosine".into(),
                width: 900.0,
            }));
            let mut idx: Vec<usize> = (0..t.pairs.len()).collect();
            idx.sort_by(|&a, &b| t.pairs[a].cosine.total_cmp(&t.pairs[b].cosine));
            let rows: Vec<Vec<String>> = idx
                .iter()
                .take(15)
                .map(|&k| {
                    let p = &t.pairs[k];
                    vec![
                        esc(&p.term1),
                        esc(&p.term2),
                        signed3(p.cosine),
                        esc(&p_fmt(p.conflict_p_value)),
                        esc(&p_fmt(c.q_values.get(k).copied().flatten())),
                        relationship(p.relationship).into(),
                    ]
                })
                .collect();
            let _ = write!(h, "<h3>Most opposed pairs of subsets</h3>");
            table(
                h,
                &["term", "term", "cosine", "permutation p", "q (BH)", "relationship"],
                &[false, false, true, true, true, false],
                &rows,
                &[],
            );
        }
    }
    if let Some(o) = &c.objectives {
        let _ = write!(
            h,
            "<h3>Reward objectives (ArmoRM)</h3><p>{} objectives; conflict score {:.3}, monitorability risk {:.3}.</p>",
            o.term_names.len(),
            o.overall_conflict_score,
            o.monitorability_risk
        );
        let mut idx: Vec<usize> = (0..o.pairs.len()).collect();
        idx.sort_by(|&a, &b| o.pairs[a].cosine.total_cmp(&o.pairs[b].cosine));
        let rows: Vec<Vec<String>> = idx
            .iter()
            .take(10)
            .map(|&k| {
                let p = &o.pairs[k];
                vec![
                    esc(&p.term1),
                    esc(&p.term2),
                    signed3(p.cosine),
                    esc(&p_fmt(p.p_value)),
                    relationship(p.relationship).into(),
                ]
            })
            .collect();
        table(
            h,
            &["objective", "objective", "cosine", "p", "relationship"],
            &[false, false, true, true, false],
            &rows,
            &[],
        );
    }
    close(h);
}

// ---------------------------------------------------------------- ground truth

/// The rules of an answer key: an array, an object's `rules` array, or an object's entries.
pub(crate) fn rules(key: &Value) -> Vec<Value> {
    match key {
        Value::Array(a) => a.clone(),
        Value::Object(m) => match m.get("rules") {
            Some(Value::Array(a)) => a.clone(),
            _ => m
                .iter()
                .map(|(k, v)| match v {
                    Value::Object(o) => {
                        let mut o = o.clone();
                        o.entry("name").or_insert(Value::String(k.clone()));
                        Value::Object(o)
                    }
                    other => serde_json::json!({"name": k, "description": other}),
                })
                .collect(),
        },
        other => vec![other.clone()],
    }
}

fn field<'a>(v: &'a Value, keys: &[&str]) -> Option<&'a Value> {
    keys.iter().find_map(|k| v.get(*k))
}

fn as_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// What the audit measured for a rule: the probe dimension or concept it names.
fn found_for(rule: &Value, r: &AuditResults) -> String {
    let mut keys: Vec<String> = Vec::new();
    for k in ["probe_dimension", "dimension", "probe", "concept", "name", "rule", "id"] {
        if let Some(v) = rule.get(k) {
            keys.push(as_text(v).to_lowercase());
        }
    }
    for key in &keys {
        if let Some(d) = r.probes.dimensions.iter().find(|d| key == &d.dimension || key.contains(&d.dimension)) {
            return format!(
                "probe `{}`: {} reward (q = {}), {}",
                d.dimension,
                mean_ci(&d.mean_delta),
                p_fmt(d.q_value),
                verdict_text(d.verdict)
            );
        }
    }
    for key in &keys {
        if let Some((k, c)) =
            r.concepts.concepts.iter().enumerate().find(|(_, c)| key == &c.name || key.contains(&c.name))
        {
            return format!(
                "concept `{}`: reward shift {} (sign-flip q = {}), cosine with the reward direction {}",
                c.name,
                num(c.mean_reward_shift),
                p_fmt(r.concept_q_values.get(k).copied().flatten()),
                signed3(c.alignment)
            );
        }
    }
    "no instrument result matched by name".into()
}

fn ground_truth(h: &mut String, r: &AuditResults) {
    let Some(key) = &r.answer_key else { return };
    open(
        h,
        "ground-truth",
        "The rules planted in this model (its answer key), next to what the audit measured for each.",
    );
    let rows: Vec<Vec<String>> = rules(key)
        .iter()
        .map(|rule| {
            let name = field(rule, &["name", "rule", "id", "title"]).map_or("(rule)".into(), as_text);
            let desc = field(rule, &["description", "feature", "text"]).map_or(String::new(), as_text);
            // An organism's rule says whether it is planted, its sign and strength.
            let planted =
                match (rule.get("active").and_then(Value::as_bool), rule.get("direction").and_then(Value::as_i64)) {
                    (Some(false), _) | (_, Some(0)) => "not planted".to_string(),
                    (Some(true), d) => {
                        let sign = match d {
                            Some(d) if d > 0 => "rewarded",
                            Some(_) => "penalized",
                            None => "planted",
                        };
                        match rule.get("strength").and_then(Value::as_f64) {
                            Some(s) => format!("{sign}, strength {s}"),
                            None => sign.to_string(),
                        }
                    }
                    _ => String::new(),
                };
            const SHOWN: &[&str] =
                &["name", "rule", "id", "title", "description", "feature", "text", "active", "direction", "strength"];
            let rest: serde_json::Map<String, Value> = rule
                .as_object()
                .map(|o| {
                    o.iter()
                        .filter(|(k, _)| !SHOWN.contains(&k.as_str()))
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect()
                })
                .unwrap_or_default();
            let details = if rest.is_empty() { String::new() } else { Value::Object(rest).to_string() };
            let desc =
                if planted.is_empty() { esc(&desc) } else { format!("{} <b>({})</b>", esc(&desc), esc(&planted)) };
            vec![
                format!("<b>{}</b>", esc(&name)),
                desc,
                if details.is_empty() { String::new() } else { format!("<code>{}</code>", esc(&details)) },
                esc(&found_for(rule, r)),
            ]
        })
        .collect();
    table(h, &["planted rule", "description", "details", "what the audit found"], &[], &rows, &[]);
    close(h);
}

fn est(e: &reward_lens_cart::discover::Estimate) -> String {
    match (e.mean, e.ci_low, e.ci_high) {
        (Some(m), Some(lo), Some(hi)) => format!("{m:+.3} [{lo:+.3}, {hi:+.3}]"),
        (Some(m), ..) => format!("{m:+.3}"),
        _ => "undefined".into(),
    }
}

fn opt3(x: Option<f64>) -> String {
    x.map_or("undefined".into(), |v| format!("{v:.3}"))
}

/// One plain sentence on what causal validation found: the validated circuits and what ablating
/// each costs, or that none validated and which test each failed.
fn validation_verdict(d: &reward_lens_cart::discover::DiscoveryReport) -> String {
    let tested: Vec<_> = d.circuits.iter().filter_map(|c| c.causal.as_ref().map(|v| (c, v))).collect();
    if tested.is_empty() {
        return "Causal validation was not run: no circuit was ablated.".into();
    }
    let pts = |e: &reward_lens_cart::discover::Estimate| e.mean.map_or("—".into(), |m| format!("{:+.1}", 100.0 * m));
    let ok: Vec<String> = tested
        .iter()
        .filter(|(_, v)| v.validated)
        .map(|(c, v)| {
            let names: Vec<String> = c.units.iter().take(4).map(|u| u.unit.name()).collect();
            format!(
                "C{} ({}{}): ablating it moves tail accuracy {} points and head accuracy {} points",
                c.id,
                names.join(", "),
                if c.units.len() > 4 { ", …" } else { "" },
                pts(&v.tail.delta_accuracy),
                pts(&v.head.delta_accuracy)
            )
        })
        .collect();
    if !ok.is_empty() {
        return format!("Validated: {}.", ok.join("; "));
    }
    let no_gap = tested.iter().filter(|(_, v)| !v.tail_minus_head_loss.ci_low.is_some_and(|l| l > 0.0)).count();
    let no_null = tested.iter().filter(|(_, v)| !v.loss_p_value.is_some_and(|p| p <= 0.05)).count();
    format!(
        "No circuit validated: of {} circuits, {no_gap} hurt the tail no more than the head when ablated (tail − head ΔBT \
interval reaches 0) and {no_null} do not hurt the tail beyond random same-size sets (permutation p > 0.05). The tail's rule may be carried by \
units discovery did not test (attention edges: `reward-lens cart discover --units mlp,heads,edges`) or spread too \
thinly for any small set; `reward-lens cart oracle` checks that against every unit's exact ablation.",
        tested.len()
    )
}

fn cart(h: &mut String, r: &AuditResults) {
    open(
        h,
        "cart",
        "Circuit-aware reward training (CART) starts from the circuits rare inputs run through. Tail pairs are those \
whose subset is a tail subset (<code>--tail-subsets</code>); the last layer's MLP neurons, every attention head and the \
last layer's attention edges to tokens typical of the tail pairs are read at the pooled token, units whose tail-vs-head difference beats a label-permutation null (maxT, family-wise 5 %) are tail-specialised, \
co-activating ones are clustered into circuits, and each circuit is mean-ablated on head and tail pairs and compared \
with random unit sets of the same size. The bound's ingredients follow: <code>L_tail ≤ L_head + C·|C_tail|·log(1/δ)/√N_tail \
+ β·Div(C_tail, C_head)</code>.",
    );
    let c = &r.cart;
    if let Some(note) = &c.note {
        let _ = write!(h, "<p>Not computed: {}.</p>", esc(note));
    }
    if let Some(d) = &c.discovery {
        let _ = write!(
            h,
            "<p>{} head and {} tail pairs; {} units; threshold |z| &gt; {}; {} tail-specialised and {} head-specialised \
units; clean accuracy head {:.1} %, tail {:.1} %.</p>",
            d.split.n_head,
            d.split.n_tail,
            d.n_units,
            opt3(d.specialisation.tau),
            d.specialisation.tail_units.len(),
            d.specialisation.head_units.len(),
            100.0 * d.clean_head.accuracy,
            100.0 * d.clean_tail.accuracy
        );
        let rows: Vec<Vec<String>> = d
            .circuits
            .iter()
            .map(|ci| {
                let names: Vec<String> = ci.units.iter().take(6).map(|u| u.unit.name()).collect();
                let more = if ci.units.len() > 6 { format!(" … (+{})", ci.units.len() - 6) } else { String::new() };
                let (tail_acc, tail, head, pct, ok) = match &ci.causal {
                    Some(v) => (
                        est(&v.tail.delta_accuracy),
                        est(&v.tail.delta_margin),
                        est(&v.head.delta_margin),
                        v.margin_percentile.map_or("—".into(), |p| format!("{:.0} %", 100.0 * p)),
                        if v.validated { "yes" } else { "no" },
                    ),
                    None => ("—".into(), "—".into(), "—".into(), "—".into(), "—"),
                };
                vec![
                    format!("C{}{}", ci.id, if ci.distributed { " (distributed)" } else { "" }),
                    ci.units.len().to_string(),
                    esc(&format!("{}{more}", names.join(", "))),
                    opt3(ci.coherence),
                    tail_acc,
                    tail,
                    head,
                    pct,
                    ok.into(),
                ]
            })
            .collect();
        if rows.is_empty() {
            h.push_str("<p>No tail-specialised units beat the permutation null: no tail circuit.</p>");
        } else {
            h.push_str("<h3>Tail circuits</h3>");
            table(
                h,
                &[
                    "circuit",
                    "units",
                    "members",
                    "coherence",
                    "tail Δaccuracy",
                    "tail Δmargin",
                    "head Δmargin",
                    "beats random sets",
                    "validated",
                ],
                &[false, true, false, true, true, true, true, true, false],
                &rows,
                &[],
            );
            let _ = write!(h, "<p>{}</p>", esc(&validation_verdict(d)));
        }
    }
    if let Some(b) = &c.bound {
        let rows = vec![
            vec!["|C_tail| (circuits)".into(), b.c_tail.to_string()],
            vec!["N_tail / N_head".into(), format!("{} / {}", b.n_tail, b.n_head)],
            vec!["|C_tail|·ln(1/δ)/√N_tail (δ = 0.05)".into(), format!("{:.3}", b.complexity_term)],
            vec!["Div: standardised mean distance".into(), opt3(b.divergence.standardised_mean_distance)],
            vec!["Div: linear MMD²".into(), opt3(b.divergence.linear_mmd2)],
            vec!["Div: 1 − CKA".into(), opt3(b.divergence.one_minus_cka)],
            vec!["L_tail − L_head (BT loss)".into(), format!("{:+.3}", b.l_gap)],
            vec![
                "accuracy tail / head".into(),
                format!("{:.1} % / {:.1} %", 100.0 * b.accuracy_tail, 100.0 * b.accuracy_head),
            ],
        ];
        h.push_str("<h3>The bound's ingredients</h3>");
        table(h, &["ingredient", "value"], &[false, true], &rows, &[]);
    }
    close(h);
}
