//! reward-lens's report layer: dataset readers, the audit (every instrument in one pass, with
//! findings in plain words), the HTML report with SVG plots, and the per-pair runners the
//! command and the Python package share. No terminal code: progress goes through callbacks.

pub mod audit;
pub mod datasets;
pub mod envelope;
pub mod error;
pub mod example_model;
pub mod fingerprint;
pub mod merge;
pub mod model_info;
pub mod perpair;
pub mod scoring;
pub mod shards;
pub mod text;

pub use audit::{
    run_audit, write_files, AuditInputs, AuditOptions, AuditResults, PairSource, Progress, SECTION_IDS, STAGES,
};
pub use datasets::{ConceptText, DatasetError, ProbeText};
pub use error::{ReportError, Result};
