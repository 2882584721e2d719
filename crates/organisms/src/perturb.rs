//! Label-preserving perturbations of organism pairs: the same features in other words, so the
//! planted rules give the same scores (CART's stability term and consistency read these).

use reward_lens_engine::Rng;

use crate::language::{prompt_features, Response, PROMPT_TEMPLATES, TAIL_MARKER};
use crate::{PairText, PlantedRules};

/// The prompt in another template and both responses re-rendered with the canonical phrase
/// variants (same features, so the same scores). None when the texts are not in the organism's
/// language or a score would move.
pub fn perturb_record(rec: &PairText, rules: &PlantedRules, seed: u64) -> Option<PairText> {
    let pf = prompt_features(&rec.prompt)?;
    let k = PROMPT_TEMPLATES.len();
    let mut rng = Rng::new(seed);
    let t = (pf.template + 1 + rng.below(k - 1)) % k;
    let body = PROMPT_TEMPLATES[t].replace("{item}", &pf.item);
    let prompt = if pf.tail { format!("{TAIL_MARKER} {body}") } else { body };
    let canon = |r: &str| Response::parse(r).and_then(|x| Response::from_features(&x.features())).map(|x| x.render());
    let (chosen, rejected) = (canon(&rec.chosen)?, canon(&rec.rejected)?);
    let kept = |old: &str, new: &str| {
        let (a, b) = (rules.score_texts(&rec.prompt, old), rules.score_texts(&prompt, new));
        a.is_some() && a == b
    };
    (kept(&rec.chosen, &chosen) && kept(&rec.rejected, &rejected)).then(|| PairText {
        prompt,
        chosen,
        rejected,
        ..rec.clone()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::OrganismSpec;

    #[test]
    fn organism_perturbations_keep_the_label() {
        let spec = OrganismSpec::preset("default").unwrap();
        let ds = crate::generate(&OrganismSpec { n_train: 200, n_test: 10, ..spec.clone() });
        let mut changed = 0;
        for (i, rec) in ds.train.iter().enumerate() {
            let p = perturb_record(rec, &spec.rules, i as u64).expect("every organism pair perturbs");
            assert_ne!(p.prompt, rec.prompt);
            let s = |pr: &str, r: &str| spec.rules.score_texts(pr, r).unwrap();
            assert_eq!(s(&p.prompt, &p.chosen), s(&rec.prompt, &rec.chosen));
            assert_eq!(s(&p.prompt, &p.rejected), s(&rec.prompt, &rec.rejected));
            assert_eq!(prompt_features(&p.prompt).unwrap().tail, prompt_features(&rec.prompt).unwrap().tail);
            changed += usize::from(p.chosen != rec.chosen || p.rejected != rec.rejected);
        }
        assert!(changed > 50, "responses re-rendered in {changed} of 200");
    }
}
