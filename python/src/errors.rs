//! Rust errors → the Python `RewardLensError` hierarchy (defined in `reward_lens_rs/_errors.py`,
//! where multiple inheritance lets `InputError` also be a `ValueError`). The message is the
//! whole chain of causes, so the file, field, tensor or line the library named reaches the user.

use std::error::Error as StdError;

use pyo3::prelude::*;
use reward_lens_engine::EngineError;

/// Which Python class an error becomes.
#[derive(Clone, Copy)]
pub enum Kind {
    /// Base class only.
    Other,
    /// The model directory: config, weights, tokenizer, template.
    Model,
    /// The user's data or arguments.
    Input,
    /// An activation site name or an intervention at it.
    Site,
    /// A file that cannot be read or written.
    File,
}

impl Kind {
    fn class(self) -> &'static str {
        match self {
            Kind::Other => "RewardLensError",
            Kind::Model => "ModelError",
            Kind::Input => "InputError",
            Kind::Site => "SiteError",
            Kind::File => "FileError",
        }
    }
}

fn engine_kind(e: &EngineError) -> Kind {
    use EngineError::*;
    match e {
        Io { .. } | BadPath { .. } => Kind::File,
        Json { .. }
        | ConfigField { .. }
        | UnsupportedArchitecture { .. }
        | NoWeights { .. }
        | Safetensors { .. }
        | MissingTensor { .. }
        | ShapeMismatch { .. }
        | UnsupportedDtype { .. }
        | NonFinite { .. }
        | NonFiniteReward { .. }
        | NonFiniteGradient { .. }
        | UnexpectedTensor { .. }
        | DuplicateTensor { .. }
        | Tokenizer { .. }
        | Template { .. } => Kind::Model,
        UnknownSite(_) | SiteNotInModel { .. } | SiteLayer { .. } | Intervention { .. } => Kind::Site,
        Pair { source, .. } => match engine_kind(source) {
            Kind::Other => Kind::Input,
            k => k,
        },
        EmptyText { .. } | TooLong { .. } | ResponseTooLong { .. } | TokenOutOfRange { .. } | Invalid(_) => Kind::Input,
        GatingPatternMissing { .. } => Kind::Input,
        Candle(_) => Kind::Other,
    }
}

/// The class of the instruments', training's, organisms', CART's and the report's errors. Their wrappers of
/// other library errors are `#[error(transparent)]`, which hides the wrapped error from
/// `source()`, so they are opened here. `Invalid` is a refusal of the caller's data or arguments.
fn layer_kind(x: &(dyn StdError + 'static)) -> Option<Kind> {
    use reward_lens_cart::AnalysisError;
    use reward_lens_instruments::InstrumentError;
    use reward_lens_organisms::OrganismError;
    use reward_lens_train::TrainError;
    fn instrument(e: &InstrumentError) -> Kind {
        use InstrumentError as I;
        match e {
            I::Engine(ee) => engine_kind(ee),
            I::Invalid(_) => Kind::Input,
            I::Candle(_) | I::NonFinite { .. } => Kind::Other,
        }
    }
    fn train(e: &TrainError) -> Kind {
        use TrainError as T;
        match e {
            T::Engine(ee) => engine_kind(ee),
            T::Invalid(_) | T::Checkpoint { .. } => Kind::Input,
            T::Io { .. } => Kind::File,
            T::Candle(_) => Kind::Other,
        }
    }
    fn organism(e: &OrganismError) -> Kind {
        use OrganismError as O;
        match e {
            O::Engine(ee) => engine_kind(ee),
            O::Train(te) => train(te),
            O::InvalidSpec { .. } | O::UnknownPreset { .. } => Kind::Input,
            O::Io { .. } => Kind::File,
            O::Build { source, .. } => organism(source),
            O::Json { .. } => Kind::Other,
        }
    }
    fn analysis(e: &AnalysisError) -> Kind {
        use AnalysisError as A;
        match e {
            A::Engine(ee) => engine_kind(ee),
            A::Instrument(ie) => instrument(ie),
            A::Train(te) => train(te),
            A::Organism(oe) => organism(oe),
            A::Invalid(_) => Kind::Input,
            A::At { source, .. } => analysis(source),
            A::Candle(_) => Kind::Other,
        }
    }
    fn report(e: &reward_lens_report::ReportError) -> Kind {
        use reward_lens_report::ReportError as R;
        match e {
            R::Engine(ee) | R::Model { source: ee, .. } | R::Encode { source: ee, .. } => engine_kind(ee),
            R::Instrument(ie) => instrument(ie),
            R::Analysis(ae) => analysis(ae),
            R::Dataset(reward_lens_report::DatasetError::Io { .. }) => Kind::File,
            R::Dataset(_) | R::Invalid(_) => Kind::Input,
            R::Io { .. } => Kind::File,
            R::Json(_) => Kind::Other,
        }
    }
    (x.downcast_ref().map(instrument))
        .or_else(|| x.downcast_ref().map(train))
        .or_else(|| x.downcast_ref().map(organism))
        .or_else(|| x.downcast_ref().map(analysis))
        .or_else(|| x.downcast_ref().map(report))
}

/// The first classifiable cause in the chain decides the class.
fn kind_of(e: &(dyn StdError + 'static)) -> Kind {
    let mut cur: Option<&(dyn StdError + 'static)> = Some(e);
    while let Some(x) = cur {
        if let Some(ee) = x.downcast_ref::<EngineError>() {
            return engine_kind(ee);
        }
        if let Some(k) = layer_kind(x) {
            return k;
        }
        if x.downcast_ref::<reward_lens_report::DatasetError>().is_some() {
            return Kind::Input;
        }
        // The report's own refusals (shards that do not belong together, options out of range).
        if let Some(reward_lens_report::ReportError::Invalid(_)) = x.downcast_ref() {
            return Kind::Input;
        }
        if x.downcast_ref::<std::io::Error>().is_some() {
            return Kind::File;
        }
        cur = x.source();
    }
    Kind::Other
}

/// `outer: inner: innermost`, skipping causes whose text the outer message already holds
/// (`#[error(transparent)]` and `{source}` in a format string).
pub fn chain(e: &(dyn StdError + 'static)) -> String {
    let mut msg = e.to_string();
    let mut cur = e.source();
    while let Some(x) = cur {
        let s = x.to_string();
        if !msg.contains(&s) {
            msg.push_str(": ");
            msg.push_str(&s);
        }
        cur = x.source();
    }
    msg
}

/// A Python exception of class `kind` with `message`.
pub fn raise(kind: Kind, message: impl Into<String>) -> PyErr {
    let message = message.into();
    Python::attach(|py| {
        let made = py
            .import("reward_lens_rs._errors")
            .and_then(|m| m.getattr(kind.class()))
            .and_then(|c| c.call1((message.clone(),)));
        match made {
            Ok(obj) => PyErr::from_value(obj),
            Err(e) => e,
        }
    })
}

/// Any library error as a Python exception.
pub fn py_err<E: StdError + 'static>(e: E) -> PyErr {
    raise(kind_of(&e), chain(&e))
}

/// A bad argument value (an unknown mode name, an empty list).
pub fn input(message: impl Into<String>) -> PyErr {
    raise(Kind::Input, message)
}

/// `?` on library results inside bindings.
pub trait OrRaise<T> {
    fn or_raise(self) -> PyResult<T>;
}

impl<T, E: StdError + 'static> OrRaise<T> for Result<T, E> {
    fn or_raise(self) -> PyResult<T> {
        self.map_err(py_err)
    }
}
