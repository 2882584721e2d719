//! `crate::pairs::read`, kept for the commands that still call it by that name.

pub use crate::args::read_pairs as read;
