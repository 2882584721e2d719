//! Circuit-aware reward training. Today: the Bradley–Terry reward-model trainer.

pub mod trainer;
