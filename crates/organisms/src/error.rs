//! Errors of the organisms crate: each names the file or the field at fault.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum OrganismError {
    #[error("{path}: cannot write: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: cannot serialise JSON: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("organism spec: field `{field}`: {message}")]
    InvalidSpec { field: &'static str, message: String },
    #[error(transparent)]
    Train(#[from] reward_lens_train::TrainError),
    #[error(transparent)]
    Engine(#[from] reward_lens_engine::EngineError),
    #[error("building the `{preset}` model organism in {}", root.display())]
    Build {
        preset: String,
        root: PathBuf,
        #[source]
        source: Box<OrganismError>,
    },
    #[error("unknown organism preset `{name}`; known: {}", crate::OrganismSpec::presets().join(", "))]
    UnknownPreset { name: String },
}

pub type Result<T> = std::result::Result<T, OrganismError>;

pub(crate) fn io_err(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> OrganismError + '_ {
    move |source| OrganismError::Io { path: path.to_path_buf(), source }
}
