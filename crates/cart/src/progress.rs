//! What long CART runs (training, the table) report as they go, for a progress display: the
//! library never draws or prints.

use std::path::Path;

use crate::interventions::CartStep;

#[derive(Debug)]
pub enum Event<'a> {
    /// A training run starts: `total_steps` over all its members.
    Training { label: &'a str, total_steps: usize },
    /// A step of the current training run (`steps_per_member` places it on one bar).
    Step { step: &'a CartStep, steps_per_member: usize },
    /// Work of unknown length starts.
    Working(&'a str),
    /// Work of known length: `done` of `total` items.
    Count { label: &'a str, done: usize, total: usize },
    /// The current training run or work is over.
    Done,
    /// Something the user should know (e.g. where a reference model was saved).
    Note(&'a str),
    /// A file was written.
    Wrote(&'a Path),
    /// A table run finished and was recorded: its label and a one-line summary.
    Finished { label: &'a str, summary: &'a str },
}
