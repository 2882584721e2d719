//! `reward-lens audit` end to end: the numbers in results.json agree with each other and with
//! transformers, every finding carries its uncertainty, and report.html renders in a real
//! headless browser (Debian's chromium) with every section present and no console errors — the
//! console-error detector itself is checked on pages that do have errors.
//!
//! Browser tests skip when chromium is missing, unless `REWARD_LENS_BROWSER_TESTS=1` (CI), where
//! a missing browser is a failure.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;

use common::{exe, json, repo, run, tmp, tmp_root};

/// The report's sections, from the library that writes them.
use reward_lens_report::SECTION_IDS as SECTIONS;

const PROBE_DIMENSIONS: &[&str] = &[
    "length",
    "confidence",
    "formatting",
    "sycophancy",
    "repetition",
    "hedging",
    "emoji",
    "authority",
    "self_promotion",
    "flattery",
    "list_padding",
];

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

const ANSWER_KEY: &str = r#"{"rules": [
  {"name": "sycophancy marker", "dimension": "sycophancy", "description": "pays for agreeing with the user"},
  {"name": "length bias", "probe": "length", "description": "reward grows with padding"},
  {"name": "<b>tail</b> rule", "description": "a rare scenario & its own circuit"}
]}"#;

/// One audit of the Llama fixture on the fixture pairs, shared by the tests of this file.
fn audit_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = tmp("llama");
        let key = d.join("answer-key.json");
        std::fs::write(&key, ANSWER_KEY).unwrap();
        let out = d.join("out");
        run(exe()
            .args(["audit", "--model"])
            .arg(repo().join("tests/fixtures/models/llama"))
            .arg("--pairs")
            .arg(repo().join("tests/fixtures/pairs.jsonl"))
            .arg("--answer-key")
            .arg(&key)
            .arg("--out")
            .arg(&out));
        out
    })
}

#[test]
fn results_json_numbers_are_consistent() {
    let r = json(&audit_dir().join("results.json"));
    let n_layers = r["model"]["n_layers"].as_u64().unwrap() as usize;
    assert_eq!(n_layers, 3);
    assert_eq!(r["inputs"]["pairs_used"], 20);
    assert_eq!(r["inputs"]["pairs_total"], 20);
    assert_eq!(r["inputs"]["n_probes"], 110);
    assert_eq!(r["inputs"]["n_concepts"], 8);

    // Scores equal transformers' (fixtures/expected), and evaluation is computed from them.
    let expected = json(&repo().join("tests/fixtures/expected/llama/forward.json"));
    let scores = r["scores"].as_array().unwrap();
    assert_eq!(scores.len(), 20);
    for (s, e) in scores.iter().zip(expected["pairs"].as_array().unwrap()) {
        assert!((f(&s["chosen"]) - f(&e["chosen"]["score"])).abs() < 1e-4, "{s} vs {e}");
        assert!((f(&s["rejected"]) - f(&e["rejected"]["score"])).abs() < 1e-4, "{s} vs {e}");
    }
    let margins: Vec<f64> = scores.iter().map(|s| f(&s["margin"])).collect();
    let mean_margin = margins.iter().sum::<f64>() / 20.0;
    let eval = &r["evaluation"];
    assert_eq!(eval["n"], 20);
    assert!((f(&eval["mean_margin"]) - mean_margin).abs() < 1e-9);
    let acc = margins.iter().filter(|m| **m > 0.0).count() as f64 / 20.0;
    assert!((f(&eval["accuracy"]) - acc).abs() < 1e-12);
    let (lo, hi) = (f(&eval["ci"][0]), f(&eval["ci"][1]));
    assert!(lo <= acc && acc <= hi && lo >= 0.0 && hi <= 1.0);
    assert_eq!(eval["subsets"].as_array().unwrap().len(), 8);
    let subset_n: u64 = eval["subsets"].as_array().unwrap().iter().map(|s| s["n"].as_u64().unwrap()).sum();
    assert_eq!(subset_n, 20);

    // The lens ends at the reward: its last margin is the evaluation's mean margin.
    let lens = &r["lens"];
    let md = lens["mean_differential"].as_array().unwrap();
    assert_eq!(md.len(), n_layers + 1);
    assert!((f(&md[n_layers]["mean"]) - f(&eval["mean_margin"])).abs() < 1e-4);
    let chosen_mean = scores.iter().map(|s| f(&s["chosen"])).sum::<f64>() / 20.0;
    assert!((f(&lens["mean_chosen"][n_layers]) - chosen_mean).abs() < 1e-4);
    for (band, means) in [("chosen", "mean_chosen"), ("rejected", "mean_rejected")] {
        let b = r["lens_bands"][band].as_array().unwrap();
        assert_eq!(b.len(), n_layers + 1);
        for (k, m) in b.iter().enumerate() {
            assert!((f(&m["mean"]) - f(&lens[means][k])).abs() < 1e-9);
            assert!(f(&m["ci_low"]) <= f(&m["mean"]) + 1e-12 && f(&m["mean"]) <= f(&m["ci_high"]) + 1e-12);
        }
    }
    assert!((f(&r["mean_margin"]["mean"]) - mean_margin).abs() < 1e-9);

    // Exact attribution adds up; per-layer views have n_layers entries.
    for p in r["attribution"]["pairs"].as_array().unwrap() {
        assert!(f(&p["chosen"]["residual"]).abs() < 1e-4 && f(&p["rejected"]["residual"]).abs() < 1e-4);
    }
    for g in ["patching_by_layer", "atp_by_layer", "dla_by_layer"] {
        for part in ["attention", "mlp"] {
            let v = r[g][part].as_array().unwrap();
            assert_eq!(v.len(), n_layers, "{g}.{part}");
            assert!(v.iter().all(|m| m["mean"].is_f64()), "{g}.{part}");
        }
    }
    let faith = &r["faithfulness"];
    assert_eq!(faith["patching"]["components"].as_array().unwrap().len(), 2 * n_layers);
    assert_eq!(faith["attribution_patching"]["components"].as_array().unwrap().len(), 2 * n_layers);
    assert_eq!(faith["pairs"].as_array().unwrap().len(), 20);
    // The grid is the patching report's mean effect, by name.
    let comps = faith["patching"]["components"].as_array().unwrap();
    let k = comps.iter().position(|c| c["name"] == "mlp.1").unwrap();
    assert_eq!(faith["patching"]["mean_effect"][k]["mean"], r["patching_by_layer"]["mlp"][1]["mean"]);
    for key in ["dla_vs_patch", "atp_vs_patch"] {
        let m = &faith["overall"][key];
        let rho = f(&m["mean"]);
        assert!((-1.0..=1.0).contains(&rho) && f(&m["ci_low"]) <= rho && rho <= f(&m["ci_high"]), "{key}: {m}");
    }

    // Probes: one result per built-in dimension, with statistics.
    let dims = r["probes"]["dimensions"].as_array().unwrap();
    let names: Vec<&str> = dims.iter().map(|d| d["dimension"].as_str().unwrap()).collect();
    assert_eq!(names, PROBE_DIMENSIONS);
    for d in dims {
        assert_eq!(d["n"], 10);
        let m = &d["mean_delta"];
        assert!(f(&m["ci_low"]) <= f(&m["mean"]) && f(&m["mean"]) <= f(&m["ci_high"]), "{d}");
        let (p, q) = (f(&d["p_value"]), f(&d["q_value"]));
        assert!(0.0 < p && p <= q + 1e-12 && q <= 1.0, "{d}");
        assert!(d["verdict"].is_string());
    }

    // Concepts and conflicts.
    let concepts = r["concepts"]["concepts"].as_array().unwrap();
    assert_eq!(concepts.len(), 8);
    assert_eq!(r["concept_q_values"].as_array().unwrap().len(), 8);
    for c in concepts {
        assert!(f(&c["alignment"]).abs() <= 1.0 && (0.0..=1.0).contains(&f(&c["p_value"])));
    }
    let terms = &r["conflicts"]["terms"];
    assert_eq!(terms["term_names"].as_array().unwrap().len(), 8);
    assert_eq!(terms["pairs"].as_array().unwrap().len(), 28);
    assert_eq!(r["conflicts"]["q_values"].as_array().unwrap().len(), 28);

    // Every finding states its uncertainty; severities are ordered, most severe first.
    let findings = r["findings"].as_array().unwrap();
    assert!(findings.len() >= 6, "{findings:?}");
    let rank = |s: &str| ["info", "notice", "warning", "critical"].iter().position(|x| *x == s).unwrap();
    let ranks: Vec<usize> = findings.iter().map(|x| rank(x["severity"].as_str().unwrap())).collect();
    assert!(ranks.windows(2).all(|w| w[0] >= w[1]), "{ranks:?}");
    for x in findings {
        assert!(!x["title"].as_str().unwrap().is_empty() && !x["text"].as_str().unwrap().is_empty());
        let ev = x["evidence"].as_array().unwrap();
        assert!(!ev.is_empty(), "{x}");
        for e in ev {
            let has_ci = e["ci_low"].is_f64() && e["ci_high"].is_f64();
            assert!(has_ci || e["p_value"].is_f64(), "finding without uncertainty: {x}");
            assert!(!e["uncertainty"].as_str().unwrap().is_empty());
            if has_ci {
                let v = f(&e["value"]);
                assert!(f(&e["ci_low"]) <= v + 1e-12 && v <= f(&e["ci_high"]) + 1e-12, "{e}");
            }
        }
        let text = x["text"].as_str().unwrap();
        assert!(text.contains('[') || text.contains("p = "), "text states no uncertainty: {text}");
    }
    let acc = findings.iter().find(|x| x["title"] == "Preference accuracy").unwrap();
    assert!(acc["text"].as_str().unwrap().contains("60.0 %"));

    // Timings: one per measuring stage.
    let t = r["timings"].as_array().unwrap();
    assert_eq!(t.len(), 10);
    assert_eq!(t[9]["stage"], "CART: tail circuits");
    // The fixture pairs have no `tail` subset: the CART section says why it is empty.
    assert!(r["cart"]["note"].as_str().unwrap().contains("tail pairs"), "{}", r["cart"]);
    assert!(t.iter().all(|s| f(&s["seconds"]) >= 0.0));
    assert_eq!(r["answer_key"]["rules"].as_array().unwrap().len(), 3);
}

#[test]
fn report_html_is_self_contained_and_escaped() {
    let html = std::fs::read_to_string(audit_dir().join("report.html")).unwrap();
    for id in SECTIONS {
        assert!(html.contains(&format!("<section id=\"{id}\">")), "missing section {id}");
    }
    assert!(!html.contains("<script"), "no scripts");
    // Nothing is fetched: the only URL is the SVG namespace identifier.
    let svg_ns = html.matches("xmlns=\"http://www.w3.org/2000/svg\"").count();
    assert_eq!(html.matches("http://").count(), svg_ns);
    for external in ["https://", "src=", "href=\"http", "@import", "url(http", "@font-face"] {
        assert!(!html.contains(external), "{external}");
    }
    for (i, _) in html.match_indices("href=\"") {
        assert!(html[i + 6..].starts_with('#'), "only in-page links");
    }
    assert!(html.matches("<svg").count() >= 9, "a plot per instrument");
    assert!(!html.contains("NaN"), "no NaN in plots");
    assert!(html.contains("&lt;b&gt;tail&lt;/b&gt; rule") && !html.contains("<b>tail</b>"));
    assert!(html.contains("a rare scenario &amp; its own circuit"));
    // The ground-truth table matches rules to instruments by name.
    let gt = &html[html.find("id=\"ground-truth\"").unwrap()..html.find("id=\"model\"").unwrap()];
    assert!(gt.contains("probe `sycophancy`") && gt.contains("probe `length`"), "{gt}");
}

/// Where tests keep the organisms they train (shared by every test binary of one build).
fn organism_cache() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("organism-cache")
}

#[test]
fn default_audit_is_the_default_organism_from_any_directory_and_seeded() {
    // No --model and no --pairs, run from an unrelated directory: the default model organism
    // (trained on first use, then cached) with its test pairs, probes, concepts and answer key.
    let cwd = tmp("default-cwd");
    let results = |out: &str| {
        run(exe().current_dir(&cwd).env("REWARD_LENS_CACHE", organism_cache()).args([
            "audit",
            "--max-pairs",
            "24",
            "--seed",
            "3",
            "--out",
            out,
        ]));
        json(&cwd.join(out).join("results.json"))
    };
    let a = results("a");
    assert!(a["inputs"]["pairs_source"].as_str().unwrap().ends_with("test.jsonl"), "{}", a["inputs"]);
    assert_eq!((a["inputs"]["pairs_total"].as_u64(), a["inputs"]["pairs_used"].as_u64()), (Some(500), Some(24)));
    assert_eq!(a["evaluation"]["n"], 24);
    assert_eq!(a["inputs"]["n_probes"], 160);
    assert_eq!(a["inputs"]["n_concepts"], 4);
    assert_eq!(a["answer_key"]["organism"], "default");
    let html = std::fs::read_to_string(cwd.join("a/report.html")).unwrap();
    assert!(html.contains("id=\"ground-truth\""));
    // Same seed, same numbers (timings aside).
    let b = results("b");
    for k in
        ["scores", "evaluation", "lens", "attribution", "faithfulness", "probes", "concepts", "conflicts", "findings"]
    {
        assert_eq!(a[k], b[k], "{k} differs between identical runs");
    }
}

#[test]
fn custom_probes_and_concepts_and_errors_name_the_file() {
    let d = tmp("custom");
    let probes = d.join("probes");
    let concepts = d.join("concepts");
    std::fs::create_dir_all(&probes).unwrap();
    std::fs::create_dir_all(&concepts).unwrap();
    let probe_lines: Vec<String> = (0..6)
        .map(|i| {
            serde_json::json!({"id": format!("shout-{i}"), "prompt": format!("Name a colour ({i})."),
                "neutral": "Blue.", "biased": format!("BLUE{}!", "!".repeat(i)), "dimension": "shouting",
                "edit": "caps"})
            .to_string()
        })
        .collect();
    std::fs::write(probes.join("shouting.jsonl"), probe_lines.join("\n")).unwrap();
    std::fs::copy(repo().join("data/concepts/refusal.jsonl"), concepts.join("refusal.jsonl")).unwrap();
    std::fs::copy(repo().join("data/concepts/apology.jsonl"), concepts.join("apology.jsonl")).unwrap();
    // Most verbosity pairs are longer than the GPT-2 fixture's 256-token context.
    std::fs::copy(repo().join("data/concepts/verbosity.jsonl"), concepts.join("verbosity.jsonl")).unwrap();
    // Markup in the data is shown as text.
    let pairs = d.join("pairs.jsonl");
    let mut text = std::fs::read_to_string(repo().join("examples/pairs.jsonl")).unwrap();
    text = text.replacen("How do I boil an egg?", "How do I boil an egg? <script>alert(1)</script> & 'quotes'", 1);
    text = text.replacen("\"subset\": \"helpfulness\"", "\"subset\": \"help<b>ful</b>\"", 1);
    std::fs::write(&pairs, text).unwrap();
    let out = d.join("out");
    run(exe()
        .args(["audit", "--model"])
        .arg(repo().join("tests/fixtures/models/gpt2"))
        .arg("--pairs")
        .arg(&pairs)
        .args(["--max-pairs", "0", "--probes"])
        .arg(&probes)
        .arg("--concepts")
        .arg(&concepts)
        .arg("--out")
        .arg(&out));
    let r = json(&out.join("results.json"));
    assert_eq!(r["inputs"]["n_probes"], 6);
    assert_eq!(r["probes"]["dimensions"][0]["dimension"], "shouting");
    assert_eq!(r["probes"]["dimensions"].as_array().unwrap().len(), 1);
    let names: Vec<&str> =
        r["concepts"]["concepts"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["apology", "refusal", "verbosity"]);
    assert_eq!(r["model"]["architecture"], "gpt2");
    // Concept pairs longer than the context are left out and listed, not fatal.
    let skipped: Vec<&str> = r["inputs"]["skipped"].as_array().unwrap().iter().map(|s| s.as_str().unwrap()).collect();
    assert!(!skipped.is_empty() && skipped.iter().all(|s| s.starts_with("concept verbosity pair")), "{skipped:?}");
    let verbosity = &r["concepts"]["concepts"][2];
    assert_eq!(verbosity["n_pairs"].as_u64().unwrap() as usize, 10 - skipped.len());
    assert_eq!(r["inputs"]["pairs_used"], 20, "--max-pairs 0: all pairs");
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    let worst: Vec<&str> = r["worst_pairs"].as_array().unwrap().iter().map(|p| p["prompt"].as_str().unwrap()).collect();
    assert_eq!(worst.len(), 5);
    assert!(html.contains("help&lt;b&gt;ful&lt;/b&gt;") && !html.contains("<b>ful</b>"), "subset names are escaped");
    if worst.iter().any(|p| p.contains("<script>")) {
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt; &amp; &#39;quotes&#39;"));
    }
    assert!(!html.contains("<script"), "data markup must not become markup");

    // Errors name the file.
    let missing = d.join("nope.jsonl");
    let o = exe()
        .args(["audit", "--model"])
        .arg(repo().join("tests/fixtures/models/llama"))
        .arg("--pairs")
        .arg(&missing)
        .arg("--out")
        .arg(d.join("x"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("nope.jsonl") && err.contains("cannot read"), "{err}");
    let bad = d.join("bad.jsonl");
    std::fs::write(&bad, "{\"prompt\": \"a\", \"chosen\": \"b\"}\n").unwrap();
    let o = exe()
        .args(["audit", "--model"])
        .arg(repo().join("tests/fixtures/models/llama"))
        .arg("--pairs")
        .arg(&bad)
        .arg("--out")
        .arg(d.join("y"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("bad.jsonl:1") && err.contains("rejected"), "{err}");
}

// ---------------------------------------------------------------- the browser

/// Debian's chromium, or None (with a skip message) — unless REWARD_LENS_BROWSER_TESTS=1, where a
/// missing browser fails the test.
fn chromium() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join("chromium")).collect::<Vec<_>>())
        .unwrap_or_default();
    let mut candidates: Vec<PathBuf> =
        std::env::var_os("REWARD_LENS_CHROMIUM").map(PathBuf::from).into_iter().collect();
    candidates.push("/usr/bin/chromium".into());
    candidates.extend(on_path);
    if let Some(p) = candidates.into_iter().find(|p| p.is_file()) {
        return Some(p);
    }
    if std::env::var("REWARD_LENS_BROWSER_TESTS").as_deref() == Ok("1") {
        panic!(
            "REWARD_LENS_BROWSER_TESTS=1 but no chromium (looked at $REWARD_LENS_CHROMIUM, /usr/bin/chromium and $PATH): \
install it with `apt-get install chromium`"
        );
    }
    eprintln!("skipping browser test: chromium not installed (set REWARD_LENS_BROWSER_TESTS=1 to make this a failure)");
    None
}

fn browser(chromium: &Path, profile: &Path) -> Command {
    let _ = std::fs::remove_dir_all(profile);
    std::fs::create_dir_all(profile).unwrap();
    let mut c = Command::new(chromium);
    c.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
    ])
    .arg(format!("--user-data-dir={}", profile.display()));
    c
}

/// Runs a browser command to completion within `limit`, killing it after.
fn output_within(mut cmd: Command, limit: Duration) -> Output {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("start chromium");
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let read = |mut r: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            v
        })
    };
    let (o, e) = (read(Box::new(stdout)), read(Box::new(stderr)));
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Output { status, stdout: o.join().unwrap(), stderr: e.join().unwrap() }
}

fn file_url(p: &Path) -> String {
    format!("file://{}", p.canonicalize().unwrap().display())
}

#[test]
fn report_renders_in_chromium_with_every_section() {
    let Some(chromium) = chromium() else { return };
    let report = audit_dir().join("report.html");
    let mut c = browser(&chromium, &tmp_root().join("profile-dom"));
    c.arg("--dump-dom").arg(file_url(&report));
    let o = output_within(c, Duration::from_secs(90));
    assert!(o.status.success(), "chromium --dump-dom failed: {}", String::from_utf8_lossy(&o.stderr));
    let dom = String::from_utf8_lossy(&o.stdout);
    for id in SECTIONS {
        assert!(dom.contains(&format!("id=\"{id}\"")), "section {id} missing from the rendered DOM");
    }
    assert!(dom.matches("<svg").count() >= 9, "plots missing from the DOM");
    assert!(dom.contains("&lt;b&gt;tail&lt;/b&gt; rule"), "escaped text renders as text");
}

#[test]
fn report_screenshot_is_a_real_image() {
    let Some(chromium) = chromium() else { return };
    let report = audit_dir().join("report.html");
    let png = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).parent().unwrap().join("audit-report.png");
    let _ = std::fs::remove_file(&png);
    let mut c = browser(&chromium, &tmp_root().join("profile-shot"));
    c.arg(format!("--screenshot={}", png.display())).arg("--window-size=1280,2400").arg(file_url(&report));
    let o = output_within(c, Duration::from_secs(90));
    assert!(o.status.success(), "chromium --screenshot failed: {}", String::from_utf8_lossy(&o.stderr));
    let bytes = std::fs::read(&png).unwrap_or_else(|e| panic!("{}: {e}", png.display()));
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "PNG signature");
    assert!(bytes.len() > 10_000, "{} bytes: an empty page?", bytes.len());
    assert_eq!(&bytes[12..16], b"IHDR");
    let (w, h) =
        (u32::from_be_bytes(bytes[16..20].try_into().unwrap()), u32::from_be_bytes(bytes[20..24].try_into().unwrap()));
    assert_eq!((w, h), (1280, 2400));
    eprintln!("screenshot: {} ({} bytes)", png.display(), bytes.len());
}

#[cfg(target_os = "linux")]
mod console {
    //! Console errors through the DevTools protocol over `--remote-debugging-pipe` (chromium
    //! reads NUL-terminated JSON commands on fd 3 and writes replies and events on fd 4). Errors
    //! are `Runtime.consoleAPICalled` of type error/assert, `Runtime.exceptionThrown` (uncaught
    //! exceptions), and `Log.entryAdded` at level error (failed resource loads, blocked requests,
    //! …). stderr logging (`--enable-logging=stderr`) does not work for this: it prints every
    //! console message as `INFO:CONSOLE` whatever its level and misses failed loads.

    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    use std::path::Path;
    use std::process::{Child, Stdio};
    use std::sync::mpsc::{channel, Receiver};
    use std::time::{Duration, Instant};

    use serde_json::{json, Value};

    use super::*;

    extern "C" {
        fn dup2(old: i32, new: i32) -> i32;
        fn fcntl(fd: i32, cmd: i32, ...) -> i32;
    }
    const F_DUPFD_CLOEXEC: i32 = 1030;

    struct Cdp {
        child: Child,
        to: std::io::PipeWriter,
        from: Receiver<Value>,
        next: u64,
        /// Events seen while waiting for replies.
        events: Vec<Value>,
    }

    impl Cdp {
        fn launch(chromium: &Path, profile: &Path) -> Cdp {
            let (cmd_r, cmd_w) = std::io::pipe().unwrap();
            let (ev_r, ev_w) = std::io::pipe().unwrap();
            let (r, w) = (cmd_r.as_raw_fd(), ev_w.as_raw_fd());
            let mut c = browser(chromium, profile);
            c.arg("--remote-debugging-pipe")
                .arg("about:blank")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            // SAFETY: between fork and exec only async-signal-safe calls (fcntl, dup2). The fds
            // are first moved above 10 so that placing them at 3 and 4 cannot clobber each other.
            unsafe {
                c.pre_exec(move || {
                    let (hr, hw) = (fcntl(r, F_DUPFD_CLOEXEC, 10), fcntl(w, F_DUPFD_CLOEXEC, 10));
                    if hr < 0 || hw < 0 || dup2(hr, 3) < 0 || dup2(hw, 4) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            let child = c.spawn().expect("start chromium");
            drop((cmd_r, ev_w));
            let (tx, rx) = channel();
            let mut reader = ev_r;
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 65536];
                while let Ok(n) = reader.read(&mut chunk) {
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    while let Some(end) = buf.iter().position(|b| *b == 0) {
                        let msg: Vec<u8> = buf.drain(..=end).collect();
                        if let Ok(v) = serde_json::from_slice::<Value>(&msg[..msg.len() - 1]) {
                            if tx.send(v).is_err() {
                                return;
                            }
                        }
                    }
                }
            });
            Cdp { child, to: cmd_w, from: rx, next: 1, events: Vec::new() }
        }

        fn send(&mut self, method: &str, params: Value, session: Option<&str>) -> Value {
            let id = self.next;
            self.next += 1;
            let mut msg = json!({"id": id, "method": method, "params": params});
            if let Some(s) = session {
                msg["sessionId"] = json!(s);
            }
            let mut bytes = serde_json::to_vec(&msg).unwrap();
            bytes.push(0);
            self.to.write_all(&bytes).expect("write to chromium");
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                let v = self.from.recv_timeout(left).unwrap_or_else(|_| panic!("no reply to {method} from chromium"));
                if v["id"] == id {
                    assert!(v.get("error").is_none(), "{method}: {v}");
                    return v["result"].clone();
                }
                self.events.push(v);
            }
        }

        /// Events until `method` arrives (or `limit`), then `settle` more time of events.
        fn collect_until(&mut self, method: &str, limit: Duration, settle: Duration) -> bool {
            let deadline = Instant::now() + limit;
            let mut seen = self.events.iter().any(|e| e["method"] == method);
            while !seen {
                let left = deadline.saturating_duration_since(Instant::now());
                match self.from.recv_timeout(left) {
                    Ok(v) => {
                        seen = v["method"] == method;
                        self.events.push(v);
                    }
                    Err(_) => return false,
                }
            }
            let end = Instant::now() + settle;
            while let Ok(v) = self.from.recv_timeout(end.saturating_duration_since(Instant::now())) {
                self.events.push(v);
            }
            true
        }

        fn close(mut self) {
            let _ = self.send_no_wait("Browser.close");
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(10) {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }

        fn send_no_wait(&mut self, method: &str) -> std::io::Result<()> {
            let mut bytes = serde_json::to_vec(&json!({"id": self.next, "method": method})).unwrap();
            bytes.push(0);
            self.to.write_all(&bytes)
        }
    }

    /// What a page says on its console, split into errors and everything else.
    pub struct Console {
        pub errors: Vec<String>,
        pub other: Vec<String>,
    }

    /// Loads `url` in a fresh headless chromium and reports its console messages.
    pub fn console_of(chromium: &Path, url: &str, profile: &Path) -> Console {
        let mut cdp = Cdp::launch(chromium, profile);
        let target = cdp.send("Target.createTarget", json!({"url": "about:blank"}), None);
        let attached =
            cdp.send("Target.attachToTarget", json!({"targetId": target["targetId"], "flatten": true}), None);
        let session = attached["sessionId"].as_str().expect("session id").to_string();
        for m in ["Runtime.enable", "Log.enable", "Page.enable"] {
            cdp.send(m, json!({}), Some(&session));
        }
        cdp.events.clear();
        cdp.send("Page.navigate", json!({"url": url}), Some(&session));
        let loaded = cdp.collect_until("Page.loadEventFired", Duration::from_secs(30), Duration::from_millis(700));
        assert!(loaded, "{url}: no load event within 30 s");
        let mut c = Console { errors: Vec::new(), other: Vec::new() };
        for e in &cdp.events {
            if e["sessionId"] != json!(session) {
                continue;
            }
            let p = &e["params"];
            match e["method"].as_str().unwrap_or("") {
                "Runtime.consoleAPICalled" => {
                    let text: Vec<String> = p["args"]
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .map(|x| x["value"].as_str().map_or_else(|| x.to_string(), str::to_string))
                                .collect()
                        })
                        .unwrap_or_default();
                    let line = format!("console.{}: {}", p["type"].as_str().unwrap_or("?"), text.join(" "));
                    if matches!(p["type"].as_str(), Some("error" | "assert")) {
                        c.errors.push(line);
                    } else {
                        c.other.push(line);
                    }
                }
                "Runtime.exceptionThrown" => {
                    let d = &p["exceptionDetails"];
                    c.errors.push(format!(
                        "uncaught: {} {}",
                        d["text"].as_str().unwrap_or(""),
                        d["exception"]["description"].as_str().unwrap_or("")
                    ));
                }
                "Log.entryAdded" => {
                    let entry = &p["entry"];
                    let line = format!(
                        "log.{} ({}): {} {}",
                        entry["level"].as_str().unwrap_or("?"),
                        entry["source"].as_str().unwrap_or("?"),
                        entry["text"].as_str().unwrap_or(""),
                        entry["url"].as_str().unwrap_or("")
                    );
                    if entry["level"] == "error" {
                        c.errors.push(line);
                    } else {
                        c.other.push(line);
                    }
                }
                _ => {}
            }
        }
        cdp.close();
        c
    }
}

#[cfg(target_os = "linux")]
#[test]
fn report_has_no_console_errors_and_the_detector_catches_them() {
    let Some(chromium) = chromium() else { return };
    let d = tmp("console");
    let page = |name: &str, body: &str| {
        let p = d.join(name);
        std::fs::write(
            &p,
            format!("<!DOCTYPE html><html><head><meta charset=\"utf-8\"></head><body>{body}</body></html>"),
        )
        .unwrap();
        file_url(&p)
    };
    let check = |url: &str, profile: &str| {
        let c = console::console_of(&chromium, url, &d.join(profile));
        eprintln!("{url}: errors {:?}, other {:?}", c.errors, c.other);
        c
    };

    // Negative controls: each kind of error is detected, and a plain log is not an error.
    let c = check(&page("console-error.html", "<p>x</p><script>console.error(\"x-marker\")</script>"), "p1");
    assert!(
        c.errors.iter().any(|e| e.contains("console.error") && e.contains("x-marker")),
        "not detected: {:?}",
        c.errors
    );
    let c = check(&page("throws.html", "<script>throw new Error(\"thrown-marker\")</script>"), "p2");
    assert!(c.errors.iter().any(|e| e.contains("thrown-marker")), "uncaught exception not detected: {:?}", c.errors);
    let c = check(&page("missing-image.html", "<img src=\"does-not-exist.png\" alt=\"\">"), "p3");
    assert!(
        c.errors.iter().any(|e| e.contains("does-not-exist.png") || e.contains("ERR_FILE_NOT_FOUND")),
        "failed load not detected: {:?} {:?}",
        c.errors,
        c.other
    );
    let c = check(&page("log-only.html", "<script>console.log(\"just-a-log\")</script>"), "p4");
    assert!(c.errors.is_empty(), "a console.log is not an error: {:?}", c.errors);
    assert!(c.other.iter().any(|e| e.contains("just-a-log")), "the detector sees logs too: {:?}", c.other);

    // The report itself.
    let c = check(&file_url(&audit_dir().join("report.html")), "p5");
    assert!(c.errors.is_empty(), "console errors in report.html: {:?}", c.errors);
    assert!(c.other.is_empty(), "console messages in report.html (it has no scripts): {:?}", c.other);
}
