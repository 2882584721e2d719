//! Circuit-aware reward training (CART): the Bradley–Terry trainer, head/tail splits, circuit
//! discovery, vulnerability, the bound's ingredients, and the training-time interventions.

pub mod bound;
pub mod discover;
pub mod headtail;
pub mod interventions;
pub mod trainer;
pub mod vulnerability;
