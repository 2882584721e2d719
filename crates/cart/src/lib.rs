//! Circuit-aware reward training. Today: the Bradley–Terry reward-model trainer.

pub mod trainer;
pub mod headtail;
pub mod discover;
pub mod vulnerability;
pub mod bound;
pub mod interventions;
