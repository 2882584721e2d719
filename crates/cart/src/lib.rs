//! Circuit-aware reward training (CART): head/tail splits, circuit discovery, vulnerability, the
//! bound's ingredients, the training-time interventions, and the CART table on model organisms.
//! The Bradley–Terry trainer itself lives in `reward-lens-train` (re-exported as [`trainer`]).

pub mod analysis;
pub mod bound;
pub mod discover;
mod error;
pub mod headtail;
pub mod interventions;
pub mod light;
pub mod oracle;
pub mod organism_runs;
pub mod progress;
pub mod table;
pub mod text;
pub mod training;
pub mod vulnerability;

pub use error::{AnalysisError, Result};
pub use reward_lens_train as trainer;
