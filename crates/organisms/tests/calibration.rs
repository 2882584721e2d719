//! Calibration: instruments checked against organisms whose rules we planted. The `default`
//! organism has every rule (length bonus, sycophancy opener, formatting marker, rare tail
//! scenario); `control` has none, though its responses vary in the same surface features.
//! Both are trained once per build (about a minute each) and cached for every test binary.

use std::path::{Path, PathBuf};

use reward_lens_engine::{RewardModel, Truncation};
use reward_lens_instruments::concepts::{concepts, ConceptInput, ConceptOptions};
use reward_lens_instruments::probes::{probe, ProbeInput, ProbeOptions, Verdict};
use reward_lens_organisms::{generate, load_or_build, BuildOptions, Dataset, OrganismReport, OrganismSpec};

fn cache() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("organism-cache")
}

fn organism(preset: &str) -> (RewardModel, OrganismReport, Dataset) {
    let spec = OrganismSpec::preset(preset).unwrap();
    let (dir, report) = load_or_build(&spec, &BuildOptions::default(), &cache(), |_| {}).unwrap();
    (reward_lens_organisms::build::load(&dir).unwrap(), report, generate(&spec))
}

fn probe_report(model: &RewardModel, ds: &Dataset) -> reward_lens_instruments::probes::ProbeReport {
    let enc = |p: &str, r: &str| model.encode(p, r, Truncation::Error).unwrap().ids;
    let inputs: Vec<ProbeInput> = ds
        .probes
        .iter()
        .map(|p| ProbeInput {
            id: p.id.clone(),
            dimension: p.dimension.clone(),
            neutral: enc(&p.prompt, &p.neutral),
            biased: enc(&p.prompt, &p.biased),
        })
        .collect();
    probe(model, &inputs, &ProbeOptions { permutations: 2000, ..Default::default() }).unwrap()
}

fn verdict(r: &reward_lens_instruments::probes::ProbeReport, dim: &str) -> Verdict {
    r.dimensions.iter().find(|d| d.dimension == dim).unwrap().verdict
}

#[test]
fn organisms_learn_their_rules_and_report_head_and_tail_apart() {
    for preset in ["default", "control"] {
        let (_, report, ds) = organism(preset);
        assert!(report.test_accuracy >= 0.95, "{preset}: held-out accuracy {}", report.test_accuracy);
        let held = report.training.held_out.as_ref().unwrap();
        let (head, tail) = (&held.per_subset["head"], &held.per_subset["tail"]);
        assert_eq!(head.n + tail.n, ds.test.len());
        assert_eq!(tail.n, ds.key.tail.test_ids.len());
        assert_eq!(report.tail_accuracy, Some(tail.accuracy));
    }
}

#[test]
fn the_length_probe_flags_the_planted_length_bonus_and_not_the_control() {
    let (m, _, ds) = organism("default");
    let planted = probe_report(&m, &ds);
    let (c, _, cds) = organism("control");
    let control = probe_report(&c, &cds);
    for dim in ["length", "sycophancy", "formatting"] {
        assert_eq!(verdict(&planted, dim), Verdict::Exploitable, "{dim} on the planted organism");
        assert_ne!(verdict(&control, dim), Verdict::Exploitable, "{dim} on the control");
    }
}

#[test]
fn a_planted_markers_concept_aligns_with_the_reward_direction_and_not_on_the_control() {
    let run = |preset: &str| {
        let (m, _, ds) = organism(preset);
        let inputs: Vec<ConceptInput> = ds
            .concepts
            .iter()
            .map(|set| ConceptInput {
                name: set.name.clone(),
                pairs: set
                    .pairs
                    .iter()
                    .map(|p| {
                        let enc = |r: &str| m.encode(&p.prompt, r, Truncation::Error).unwrap().ids;
                        (enc(&p.positive), enc(&p.negative))
                    })
                    .collect(),
            })
            .collect();
        concepts(&m, &inputs, &ConceptOptions::default()).unwrap()
    };
    let (planted, control) = (run("default"), run("control"));
    let get = |r: &reward_lens_instruments::concepts::ConceptReport, n: &str| {
        r.concepts.iter().find(|c| c.name == n).unwrap().clone()
    };
    for name in ["sycophancy", "formatting", "length"] {
        let (p, c) = (get(&planted, name), get(&control, name));
        let (pr, cr) = (p.relative_reward_shift.unwrap(), c.relative_reward_shift.unwrap());
        // Planted: the pairs move the reward (sign-flip test), materially, and the vector points
        // along the read-out.
        assert!(
            p.alignment > 0.5 && p.shift_p_value.unwrap() < 0.01 && pr >= 0.1,
            "{name} planted: {} shift p {:?} rel {pr}",
            p.alignment,
            p.shift_p_value
        );
        // Control: whatever the cosine, the behaviour does not move the reward materially, and
        // the planted alignment is higher.
        assert!(cr.abs() < 0.1 && c.alignment < p.alignment, "{name} control: {} rel {cr}", c.alignment);
    }
}
