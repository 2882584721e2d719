//! Reward-term conflicts against reward-lens 1.0 on the fixture pairs grouped by subset, and
//! ArmoRM's objectives as terms.

mod common;
use common::*;

use reward_lens_engine::{PairText, RewardModel, Truncation};
use reward_lens_instruments::conflict::{analyze, learn_term_directions, objective_terms, Thresholds};
use serde_json::Value;

type Groups = Vec<reward_lens_instruments::Group>;

/// The fixture pairs grouped by `subset`, groups in order of first appearance.
fn groups(model: &RewardModel) -> Groups {
    let mut g: Groups = Vec::new();
    for line in std::fs::read_to_string(fixtures().join("pairs.jsonl")).unwrap().lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        let text: PairText = serde_json::from_value(v.clone()).unwrap();
        let s = v["subset"].as_str().unwrap().to_string();
        let pair = model.encode_pair(&text, Truncation::Error).unwrap();
        match g.iter_mut().find(|x| x.0 == s) {
            Some(x) => x.1.push(pair),
            None => g.push((s, vec![pair])),
        }
    }
    g
}

#[test]
fn v1_conflicts_match_the_peer() {
    for name in ["llama", "mistral"] {
        let model = load(name);
        let peer = serde_json::from_str::<Value>(
            &std::fs::read_to_string(fixtures().join(format!("expected/{name}/peer/conflict.json"))).unwrap(),
        )
        .unwrap()["result"]
            .clone();
        let terms = learn_term_directions(&model, &groups(&model), None, 16).unwrap();
        for (t, v) in &terms {
            let want: Vec<f64> =
                peer["learned_directions"][t].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
            let d = v.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
            assert!(d < 1e-4, "{name} {t}: direction differs by {d}");
        }
        let r = analyze(&terms, &Thresholds::default());
        let p = &peer["report"];
        let names: Vec<&str> = p["term_names"].as_array().unwrap().iter().map(|x| x.as_str().unwrap()).collect();
        assert_eq!(r.term_names, names);
        for (i, row) in p["similarity_matrix"].as_array().unwrap().iter().enumerate() {
            for (j, x) in row.as_array().unwrap().iter().enumerate() {
                assert!((r.similarity[i][j] - x.as_f64().unwrap()).abs() < 1e-4, "{name} similarity[{i}][{j}]");
                assert_eq!(
                    r.relationship_matrix[i][j] as u64,
                    p["relationship_matrix"][i][j].as_u64().unwrap(),
                    "{name} [{i}][{j}]"
                );
            }
        }
        let conflicts: Vec<(String, String)> = p["in_conflict_pairs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| (x[0].as_str().unwrap().to_string(), x[1].as_str().unwrap().to_string()))
            .collect();
        assert_eq!(r.in_conflict_pairs, conflicts);
        assert!((r.overall_conflict_score - p["overall_conflict_score"].as_f64().unwrap()).abs() < 1e-9);
        assert!((r.monitorability_risk - p["monitorability_risk"].as_f64().unwrap()).abs() < 1e-4);
        for tp in &r.pairs {
            let pv = tp.p_value.unwrap();
            assert!((0.0..=1.0).contains(&pv));
        }
    }
}

#[test]
fn armorm_objectives_as_terms() {
    let model = load("armorm");
    let g = groups(&model);
    let inputs: Vec<Vec<u32>> = g.iter().flat_map(|x| x.1.iter().map(|p| p.chosen.clone())).collect();
    let o = objective_terms(&model, &inputs, 8).unwrap().expect("armorm has objectives");
    // T's verbosity column is all zeros (its own penalty is 1), so that objective reads nothing:
    // it is left out rather than given cosines of rounding noise.
    assert_eq!(o.inert, ["helpsteer-verbosity"]);
    assert_eq!(o.terms.len(), 4);
    let eff = o.effective_direction_cosines.as_ref().unwrap();
    assert_eq!(eff.len(), 4);
    assert!(eff.iter().all(|c| c.abs() <= 1.0 + 1e-9));
    let r = o.clone().analyze(&Thresholds::default());
    assert_eq!(r.pairs.len(), 6);
    assert_eq!(r.inert_terms, ["helpsteer-verbosity"]);
    assert!(r.pairs.iter().all(|p| p.cosine.abs() <= 1.0 + 1e-9));
    // A linear-head model has no objectives.
    assert!(objective_terms(&load("llama"), &[], 8).unwrap().is_none());
}
