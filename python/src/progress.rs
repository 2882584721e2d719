//! Progress and Ctrl-C while the GIL is released. Long calls run in [`detached`]; the library's
//! progress callbacks go through a [`Bar`], which takes the GIL back for a moment to update the
//! notebook's bar (`reward_lens_rs._progress`, tqdm when installed) and to look for a pending
//! KeyboardInterrupt. An interrupt unwinds out of the computation (`resume_unwind`, which skips
//! the panic hook, so nothing is printed) and [`detached`] turns it back into the Python error.
//! Only shared references to the model cross the unwind, so nothing is left half-changed.

use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};

use pyo3::prelude::*;

/// The payload of an interrupt unwinding through library code.
struct Interrupt(PyErr);

/// Runs `f` with the GIL released; an interrupt raised in a [`Bar`] comes back as its PyErr.
pub fn detached<T: Send>(py: Python<'_>, f: impl FnOnce() -> PyResult<T> + Send) -> PyResult<T> {
    match py.detach(|| catch_unwind(AssertUnwindSafe(f))) {
        Ok(r) => r,
        Err(payload) => match payload.downcast::<Interrupt>() {
            Ok(i) => Err(i.0),
            Err(other) => resume_unwind(other),
        },
    }
}

/// A progress sink for one call: a Python callable `(done, total, message)` or nothing, plus
/// the interrupt check. Send, so it can live inside [`detached`].
pub struct Bar {
    sink: Option<Py<PyAny>>,
}

impl Bar {
    /// `progress` is what the user passed: None or True (a tqdm bar if tqdm is installed),
    /// False (silent), or a callable `(done, total, message)`.
    pub fn new(py: Python<'_>, desc: &str, progress: Option<&Py<PyAny>>) -> PyResult<Self> {
        let sink = py.import("reward_lens_rs._progress")?.getattr("bar")?.call1((desc, progress))?;
        Ok(Self { sink: (!sink.is_none()).then(|| sink.unbind()) })
    }

    /// Reports progress and unwinds on a pending KeyboardInterrupt (or an error in the sink).
    pub fn update(&self, done: usize, total: usize, message: Option<&str>) {
        let result = Python::attach(|py| -> PyResult<()> {
            py.check_signals()?;
            if let Some(s) = &self.sink {
                s.call1(py, (done, total, message))?;
            }
            Ok(())
        });
        if let Err(e) = result {
            resume_unwind(Box::new(Interrupt(e)));
        }
    }

    /// Closes the notebook bar (tqdm leaves it otherwise).
    pub fn close(&self) {
        if let Some(s) = &self.sink {
            Python::attach(|py| {
                if let Ok(c) = s.bind(py).getattr("close") {
                    let _ = c.call0();
                }
            });
        }
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        self.close();
    }
}
