//! reward-lens 1.0's coverage statistic against its own output on the fixtures.

mod common;
use common::*;

use reward_lens_instruments::diagnose::coverage_disparity;

#[test]
fn v1_coverage_matches_the_peer() {
    for name in ["llama", "mistral"] {
        let r = json(fixtures().join(format!("expected/{name}/peer/distortion.json")))["result"].clone();
        let dims: Vec<String> =
            r["dimensions"].as_array().unwrap().iter().map(|d| d.as_str().unwrap().to_string()).collect();
        let margins = r["probe_margins"].as_array().unwrap();
        let mut probes: Vec<(f64, Vec<usize>)> = margins
            .iter()
            .map(|m| {
                let j = dims.iter().position(|d| d == m["dimension"].as_str().unwrap()).unwrap();
                (m["margin"].as_f64().unwrap(), vec![j])
            })
            .collect();
        // The peer's two cross-dimension probes are recorded only through their scaled coverage
        // (rows after the per-dimension ones); recover their margins from the same min–max scale.
        let deltas: Vec<f64> = probes.iter().map(|p| p.0).collect();
        let (lo, hi) = deltas.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| (a.min(x), b.max(x)));
        let matrix = r["report"]["coverage_matrix"].as_array().unwrap();
        for row in &matrix[probes.len()..] {
            let row = f64s(row);
            let js: Vec<usize> = (0..row.len()).filter(|&j| row[j] > 0.0).collect();
            probes.push((lo + row[js[0]] * (hi - lo), js));
        }
        let rep = coverage_disparity(&dims, &probes, 0.5);
        for (j, d) in dims.iter().enumerate() {
            let want_d = r["report"]["per_dimension_distortion"][d].as_f64().unwrap();
            let want_c = r["report"]["effective_coverage"][d].as_f64().unwrap();
            assert!(
                (rep.coverage_disparity[j] - want_d).abs() < 1e-9,
                "{name} {d}: {} vs {want_d}",
                rep.coverage_disparity[j]
            );
            assert!((rep.effective_coverage[j] - want_c).abs() < 1e-9, "{name} {d}");
        }
        let under: Vec<&str> =
            r["report"]["under_covered_dimensions"].as_array().unwrap().iter().map(|x| x.as_str().unwrap()).collect();
        assert_eq!(rep.under_covered, under);
        assert!((rep.severity - r["report"]["predicted_hacking_severity"].as_f64().unwrap()).abs() < 1e-9);
    }
}
