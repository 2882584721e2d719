//! Bradley–Terry reward-model training.
