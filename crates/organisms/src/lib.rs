//! Model organisms: tiny reward models whose preference rules we planted, with answer keys, so
//! every instrument can be checked against a known answer.
//!
//! This crate is the data side: a controlled toy language ([`language`]), preference pairs
//! labelled by a stated rule with optional planted biases and an answer key ([`dataset`]), and
//! the files an organism ships — a word-level tokenizer with its chat template, pairs, probes and
//! concept sets ([`files`]).
//!
//! ```no_run
//! use reward_lens_organisms::{generate, write_files, OrganismSpec};
//! let spec = OrganismSpec::preset("length").unwrap();
//! let ds = generate(&spec);
//! write_files("organisms/length".as_ref(), &ds)?;
//! # Ok::<(), reward_lens_organisms::OrganismError>(())
//! ```

pub mod build;
pub mod dataset;
mod error;
pub mod files;
pub mod language;
pub mod perturb;

pub use build::{
    build, cache_dir, cache_root, ensure, load_or_build, BuildOptions, BuildProgress, CachedOrganism, OrganismReport,
    OrganismShape,
};
pub use dataset::{
    concepts, generate, label_stats, probes, sample_pairs, try_generate, AnswerKey, ConceptPair, ConceptSet, Counts,
    Dataset, FeatureRates, LabelStats, OrganismSpec, PlantedRules, ProbeRecord, QualityKey, RuleKey, TailKey, TailRule,
    DEFAULT_TAIL_FRACTION, MAX_TAIL_FRACTION, MIN_MARGIN, QUALITY_WEIGHT, TIE_EPSILON,
};
pub use error::{OrganismError, Result};
// Organism pairs are the engine's one pair type.
pub use files::{
    tokenizer_config_json, tokenizer_json, write_data_files, write_files, write_tokenizer_files, CHAT_TEMPLATE,
    MODEL_MAX_LENGTH,
};
pub use language::{
    prompt_features, response_features, vocab_size, vocabulary, Features, PromptFeatures, Response, Sampling, BOS_ID,
    EOS_ID, PAD_ID, SPECIAL_TOKENS, UNK_ID,
};
pub use perturb::perturb_record;
use reward_lens_engine::PairText;
