//! No silent wrong answers: every instrument's report on every fixture model is free of NaN and
//! infinity (and of `null` where a number belongs), and a model whose arithmetic breaks down on
//! one pair is an error naming that pair's file and line — never a finding computed from NaN.

use std::path::{Path, PathBuf};

use serde_json::Value;

use reward_lens_engine::{LoadOptions, RewardModel, ScoreOptions, Truncation};
use reward_lens_instruments::finite::first_non_finite;
use reward_lens_instruments::lens::{lens, LensOptions};
use reward_lens_instruments::InstrumentError;
use reward_lens_report::audit::{AuditInputs, AuditOptions, PairSource};
use reward_lens_report::datasets::read_pairs;
use reward_lens_report::run_audit;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

fn audit_inputs(model_dir: PathBuf) -> AuditInputs {
    AuditInputs {
        model_name: model_dir.display().to_string(),
        model_dir,
        pairs: PairSource::File(repo().join("tests/fixtures/pairs.jsonl")),
        probes: Vec::new(),
        concepts: Vec::new(),
        options: AuditOptions::default(),
        answer_key: None,
        tail_subsets: vec!["tail".into()],
    }
}

/// Every `null` in `v` whose key names a quantity that is always defined.
fn nulls_where_numbers_belong(v: &Value, path: &str, out: &mut Vec<String>) {
    const ALWAYS: &[&str] = &["chosen", "rejected", "margin", "reward", "accuracy", "score", "effect"];
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                let p = format!("{path}.{k}");
                if x.is_null() && ALWAYS.contains(&k.as_str()) {
                    out.push(p.clone());
                }
                nulls_where_numbers_belong(x, &p, out);
            }
        }
        Value::Array(a) => {
            a.iter().enumerate().for_each(|(i, x)| nulls_where_numbers_belong(x, &format!("{path}[{i}]"), out))
        }
        _ => {}
    }
}

/// The audit runs every instrument (evaluation, lens, attribution, patching, AtP, faithfulness,
/// probes, concepts, conflict); on each fixture architecture all of it is finite.
#[test]
fn every_instrument_is_finite_on_every_fixture() {
    for name in ["llama", "gemma2", "gpt2", "armorm", "mistral", "qwen2", "qwen3"] {
        let res = run_audit(
            &audit_inputs(repo().join("tests/fixtures/models").join(name)),
            &mut |_: usize, _: usize, _: &str| {},
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(first_non_finite(&res), None, "{name}");
        let json: Value = serde_json::to_value(&res).unwrap();
        let mut nulls = Vec::new();
        nulls_where_numbers_belong(&json, name, &mut nulls);
        assert!(nulls.is_empty(), "{nulls:?}");
        assert_eq!(json["scores"].as_array().unwrap().len(), 20, "{name}");
    }
}

/// A copy of the Llama fixture that breaks down on `token` alone, with every weight finite (the
/// loader refuses non-finite weights): only `token`'s embedding has a component along dimension
/// 0, where block 0's input norm scales by 1e30 and q and k read it, so that token's attention
/// score to itself overflows to +inf and its softmax row is NaN, which later blocks spread to
/// every position after it. Sequences without the token are untouched by the change.
fn poisoned_llama(dir: &Path, token: usize) {
    let src = repo().join("tests/fixtures/models/llama");
    std::fs::create_dir_all(dir).unwrap();
    for f in ["config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    let mut bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let mut set = |name: &str, row: usize, col: usize, v: f32| {
        let t = &header[name];
        assert_eq!(t["dtype"], "F32");
        let cols = t["shape"].as_array().unwrap().get(1).map_or(1, |c| c.as_u64().unwrap() as usize);
        let at = 8 + n + t["data_offsets"][0].as_u64().unwrap() as usize + (row * cols + col) * 4;
        bytes[at..at + 4].copy_from_slice(&v.to_le_bytes());
    };
    for r in 0..1024 {
        set("model.embed_tokens.weight", r, 0, if r == token { 1.0 } else { 0.0 });
    }
    set("model.layers.0.input_layernorm.weight", 0, 0, 1e30);
    for r in 0..64 {
        set("model.layers.0.self_attn.q_proj.weight", r, 0, 1.0);
    }
    for r in 0..32 {
        set("model.layers.0.self_attn.k_proj.weight", r, 0, 1.0);
    }
    std::fs::write(dir.join("model.safetensors"), bytes).unwrap();
}

#[test]
fn a_nan_on_one_pair_is_an_error_naming_its_line() {
    let pairs_path = repo().join("tests/fixtures/pairs.jsonl");
    let pairs = read_pairs(&pairs_path).unwrap();
    let clean = RewardModel::load(&repo().join("tests/fixtures/models/llama"), &LoadOptions::default()).unwrap();
    let encoded = clean.encode_pairs(&pairs, Truncation::Error).unwrap();
    // A token only pair k's chosen response holds (the last such pair, so its line is not 1).
    let (k, token) = (0..pairs.len())
        .rev()
        .find_map(|k| {
            let elsewhere = |t: &u32| {
                encoded.iter().enumerate().any(|(j, e)| {
                    (j != k && (e.chosen.contains(t) || e.rejected.contains(t))) || (j == k && e.rejected.contains(t))
                })
            };
            encoded[k].chosen.iter().find(|t| !elsewhere(t)).map(|&t| (k, t as usize))
        })
        .expect("some pair has a token of its own");
    assert!(k > 0);
    let dir = std::env::temp_dir().join(format!("reward-lens-nan-{}", std::process::id()));
    poisoned_llama(&dir, token);
    let line = format!("pairs.jsonl:{}", pairs[k].line());
    assert_eq!(pairs[k].line(), k + 1);

    // The audit stops at the scores, before any finding is formed.
    let e = run_audit(&audit_inputs(dir.clone()), &mut |_: usize, _: usize, _: &str| {}).unwrap_err().to_string();
    assert!(e.contains(&line) && e.contains("chosen") && e.contains("NaN"), "{e}");

    let model = RewardModel::load(&dir, &LoadOptions::default()).unwrap();
    let scores = model.score_pair_texts(&pairs, &encoded, &ScoreOptions::default(), &mut |_| {});
    // Whichever layer notices first (the engine may refuse the score itself), the pair is named.
    let e = match scores {
        Err(e) => e.to_string(),
        Ok(s) => {
            for (p, s) in pairs.iter().zip(&s).take(k) {
                reward_lens_report::scoring::finite_rewards(p, s).unwrap();
            }
            reward_lens_report::scoring::finite_rewards(&pairs[k], &s[k]).unwrap_err().to_string()
        }
    };
    assert!(e.contains(&line), "{e}");

    // An instrument run directly names the pair's index, the side and the statistic.
    match lens(&model, &encoded, &LensOptions::default()) {
        Err(e @ InstrumentError::NonFinite { .. }) => {
            let text = e.to_string();
            let InstrumentError::NonFinite { path, pair, value, .. } = e else { unreachable!() };
            assert_eq!(pair, Some(k));
            assert!(path.starts_with(&format!("pairs[{k}].chosen.")), "{path}");
            assert!(!value.is_finite());
            assert!(text.contains(&format!("pair {} of the input", k + 1)), "{text}");
        }
        other => panic!("expected a non-finite error, got {other:?}"),
    }
    // The other pairs alone are measured as before.
    let rest: Vec<_> = encoded.iter().enumerate().filter(|(j, _)| *j != k).map(|(_, e)| e.clone()).collect();
    let rep = lens(&model, &rest, &LensOptions::default()).unwrap();
    assert_eq!(first_non_finite(&rep), None);
    std::fs::remove_dir_all(&dir).ok();
}

/// An undefined correlation (every pair's ranking constant) is reported as undefined, with the
/// reason — never as "agrees" with a number, and never silently dropped. Ties are not read as a
/// preference for the rejected answer, and a crystallization depth of nothing is undefined.
#[test]
fn undefined_statistics_make_no_findings() {
    let mut res =
        run_audit(&audit_inputs(repo().join("tests/fixtures/models/llama")), &mut |_: usize, _: usize, _: &str| {})
            .unwrap();
    let undefined = reward_lens_instruments::stats::MeanCi { n: 0, mean: None, ci_low: None, ci_high: None };
    res.faithfulness.overall.dla_vs_patch = undefined.clone();
    res.faithfulness.overall.atp_vs_patch = undefined;
    let findings = reward_lens_report::audit::results::findings(&res);
    for short in ["DLA", "AtP"] {
        let f: Vec<_> =
            findings.iter().filter(|f| f.title.starts_with(&format!("{short} vs activation patching"))).collect();
        assert_eq!(f.len(), 1, "{short}");
        assert!(f[0].title.ends_with("undefined"), "{}", f[0].title);
        assert!(
            f[0].text.contains("undefined") && !f[0].text.contains("agrees") && !f[0].text.contains("ρ ="),
            "{}",
            f[0].text
        );
        assert_eq!(f[0].evidence[0].value, None);
    }
    assert_eq!(first_non_finite(&findings), None);

    // Ties are not a preference for the rejected answer. All ties: a constant reward.
    let accuracy = |res: &reward_lens_report::audit::results::AuditResults| {
        let f = reward_lens_report::audit::results::findings(res);
        f.into_iter().find(|f| f.title == "Preference accuracy").unwrap()
    };
    let n = res.evaluation.n;
    res.evaluation.accuracy = 0.0;
    res.evaluation.ci = Some((0.0, 0.0));
    res.evaluation.ties = n;
    let f = accuracy(&res);
    assert!(
        f.text.contains("exactly the same reward on every pair") && !f.text.contains("prefers the rejected"),
        "{}",
        f.text
    );
    // A few wins, the rest ties: worse than chance because of the ties, not a preference.
    res.evaluation.accuracy = 2.0 / n as f64;
    res.evaluation.ci = Some((0.0, 0.1));
    res.evaluation.ties = n - 2;
    let f = accuracy(&res);
    assert!(
        f.text.contains(&format!("because {} of them are ties", n - 2)) && !f.text.contains("prefers the rejected"),
        "{}",
        f.text
    );
    // More strict losses than wins: that is a preference for the rejected answer.
    res.evaluation.ties = 1;
    let f = accuracy(&res);
    assert!(
        f.text.contains("it prefers the rejected answer") && f.text.contains("1 of the pairs are ties"),
        "{}",
        f.text
    );

    // No pair whose differential leaves 0: where the preference forms is undefined, not depth 1.
    res.lens.crystallization_fraction =
        reward_lens_instruments::stats::MeanCi { n: 0, mean: None, ci_low: None, ci_high: None };
    let f = reward_lens_report::audit::results::findings(&res);
    let lens = f.iter().find(|f| f.title == "Where the preference forms").unwrap();
    assert!(
        lens.text.contains("is 0 at every depth of every pair") && lens.text.contains("undefined"),
        "{}",
        lens.text
    );
    assert_eq!(lens.evidence[0].value, None);
}
