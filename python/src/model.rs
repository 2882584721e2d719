//! `Model` (a loaded reward model) and `ActivationCache` (what `run_with_cache` captured).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};
use reward_lens_engine::{
    Action, ActivationCache, Batch, Device, Encoded, Hooks, Intervention, PaddingSide, RewardHead, RewardModel,
    ScoreOptions, Site, SiteFilter, Tensor, Truncation,
};
use reward_lens_report::scoring::ScoreLine;

use crate::convert::{self, choice, numpy_to_tensor, tensor_to_numpy, OneOrMany};
use crate::errors::{input, raise, Kind, OrRaise};
use crate::progress::{detached, Bar};

/// A reward model loaded from a HuggingFace directory (config.json, safetensors, tokenizer):
/// the network, its reward head and its tokenizer with the chat template.
///
/// Made by `reward_lens_rs.load(path)`; read-only and safe to share between threads.
#[pyclass(frozen, name = "Model", module = "reward_lens_rs")]
pub struct Model {
    pub inner: Arc<RewardModel>,
    pub dir: PathBuf,
    pub name: String,
    pub dtype: String,
    pub device: String,
    /// The embedded example model (fingerprinted by name and version, as the command does).
    pub embedded: bool,
}

/// Loads a reward model.
///
/// path: a HuggingFace model directory; None loads the embedded example model (a 3-layer
///     Llama reward model from the test fixtures), as the command does without --model.
/// dtype: "f32" (exact enough for analysis), "bf16" or "f16" (half the memory).
/// device: "cpu", or "cuda" / "cuda:N" in CUDA builds.
///
/// Errors name the file, field or tensor at fault (ModelError, FileError).
#[pyfunction]
#[pyo3(signature = (path=None, dtype="f32", device="cpu"))]
pub fn load(py: Python<'_>, path: Option<PathBuf>, dtype: &str, device: &str) -> PyResult<Model> {
    let embedded = path.is_none();
    let (dir, name) = match path {
        Some(p) => (p.clone(), p.display().to_string()),
        None => (reward_lens_report::example_model::dir().or_raise()?, "(embedded example model)".to_string()),
    };
    let opts = reward_lens_engine::LoadOptions {
        dtype: reward_lens_engine::runtime::parse_dtype(dtype).or_raise()?,
        device: reward_lens_engine::runtime::parse_device(device).or_raise()?,
    };
    let model = detached(py, || RewardModel::load(&dir, &opts).or_raise())?;
    // What loading accepted but noticed (an unused lm_head, …) reaches the user as a Python warning.
    for w in &model.warnings {
        warn(py, w)?;
    }
    Ok(Model { inner: Arc::new(model), dir, name, dtype: dtype.into(), device: device.into(), embedded })
}

/// A UserWarning: what a call noticed but accepted.
pub fn warn(py: Python<'_>, text: &str) -> PyResult<()> {
    let category = py.get_type::<pyo3::exceptions::PyUserWarning>();
    PyErr::warn(py, &category, &std::ffi::CString::new(text).unwrap_or_default(), 1)
}

fn truncation(truncate_prompt: bool) -> Truncation {
    if truncate_prompt {
        Truncation::DropPromptLeft
    } else {
        Truncation::Error
    }
}

/// One intervention as the user gave it, before it becomes an engine `Intervention` (which is
/// built inside the GIL-free section, where Python callables are called back).
enum HookAction {
    Replace(Tensor),
    Add(Tensor),
    Zero,
    Scale(f64),
    Call(Py<PyAny>),
}

struct HookSpec {
    site: Site,
    action: HookAction,
    positions: Option<Vec<usize>>,
    heads: Option<Vec<usize>>,
}

/// Parses `hooks`: each a dict {"site", "action", "value", "positions", "heads"} or a tuple
/// (site, action[, value]) where action is "replace" | "add" | "zero" | "scale" | "mean" or a
/// Python callable f(activation) -> new activation (or None: the array, edited in place).
/// The keys a hook dict may have.
const HOOK_KEYS: [&str; 5] = ["site", "action", "value", "positions", "heads"];

fn parse_hooks(py: Python<'_>, hooks: Option<&Bound<'_, PyAny>>, device: &Device) -> PyResult<Vec<HookSpec>> {
    let Some(hooks) = hooks else { return Ok(Vec::new()) };
    // One hook given bare would be iterated as its keys or fields: hooks[0] would be "site".
    let bare = hooks.cast::<PyDict>().is_ok()
        || hooks.is_instance_of::<pyo3::types::PyString>()
        || hooks
            .cast::<PyTuple>()
            .is_ok_and(|t| t.get_item(0).is_ok_and(|x| x.is_instance_of::<pyo3::types::PyString>()));
    if bare {
        return Err(input("hooks: expected a list of hooks; wrap a single hook in [...]"));
    }
    let mut out = Vec::new();
    for (i, h) in hooks.try_iter().map_err(|_| input("hooks: expected a list"))?.enumerate() {
        let h = h?;
        let what = format!("hooks[{i}]");
        let (site, action, value, positions, heads) = if let Ok(d) = h.cast::<PyDict>() {
            // A misspelt key ("position") would otherwise drop its restriction silently: the
            // intervention then applies everywhere.
            for k in d.keys() {
                let k = k.str()?.to_string();
                if !HOOK_KEYS.contains(&k.as_str()) {
                    return Err(input(format!("{what}: unknown key `{k}` (expected {})", HOOK_KEYS.join(", "))));
                }
            }
            let get = |k: &str| d.get_item(k);
            (
                get("site")?.ok_or_else(|| input(format!("{what}: missing \"site\"")))?,
                get("action")?.ok_or_else(|| input(format!("{what}: missing \"action\"")))?,
                get("value")?,
                get("positions")?,
                get("heads")?,
            )
        } else if let Ok(t) = h.cast::<PyTuple>() {
            if t.len() < 2 || t.len() > 3 {
                return Err(input(format!("{what}: expected (site, action) or (site, action, value)")));
            }
            (t.get_item(0)?, t.get_item(1)?, if t.len() == 3 { Some(t.get_item(2)?) } else { None }, None, None)
        } else {
            return Err(input(format!("{what}: expected a dict or a (site, action[, value]) tuple")));
        };
        let site_name: String = site.extract().map_err(|_| input(format!("{what}: site must be a string")))?;
        let site =
            Site::parse(&site_name).ok_or_else(|| raise(Kind::Site, format!("{what}: unknown site `{site_name}`")))?;
        // None is no value (numpy would read it as NaN).
        let value = value.filter(|v| !v.is_none());
        let value_of = |name: &str| -> PyResult<Tensor> {
            let v = value.as_ref().ok_or_else(|| input(format!("{what}: action \"{name}\" needs a value")))?;
            numpy_to_tensor(py, v, device, &format!("{what} value"))
        };
        let action = if action.is_callable() && !action.is_instance_of::<pyo3::types::PyString>() {
            if value.is_some() {
                return Err(input(format!("{what}: a callable action takes no value (it returns the activation)")));
            }
            HookAction::Call(action.unbind())
        } else {
            let name: String =
                action.extract().map_err(|_| input(format!("{what}: action must be a name or a callable")))?;
            match name.as_str() {
                "replace" | "mean" => HookAction::Replace(value_of(&name)?),
                "add" => HookAction::Add(value_of(&name)?),
                "zero" if value.is_some() => return Err(input(format!("{what}: action \"zero\" takes no value"))),
                "zero" => HookAction::Zero,
                "scale" => HookAction::Scale(
                    value
                        .as_ref()
                        .ok_or_else(|| input(format!("{what}: action \"scale\" needs a value")))?
                        .extract::<f64>()
                        .ok()
                        // Activations are f32: a factor past f32's range would make every one infinite.
                        .filter(|s| (*s as f32).is_finite())
                        .ok_or_else(|| {
                            input(format!("{what}: scale value must be a finite number within f32's range"))
                        })?,
                ),
                other => {
                    return Err(input(format!(
                        "{what}: unknown action `{other}` (expected replace, add, zero, scale, mean or a callable)"
                    )))
                }
            }
        };
        let idx = |o: Option<Bound<'_, PyAny>>, k: &str| -> PyResult<Option<Vec<usize>>> {
            o.filter(|x| !x.is_none())
                .map(|x| x.extract::<Vec<usize>>().map_err(|_| input(format!("{what}: {k} must be a list of indices"))))
                .transpose()
        };
        out.push(HookSpec { site, action, positions: idx(positions, "positions")?, heads: idx(heads, "heads")? });
    }
    Ok(out)
}

/// The engine's interventions for `specs`. A callable sees the activation without its batch
/// axis (as the cache shows it) when the batch is one text, and with it (chosen, rejected: the
/// layout `gradients` returns) when it is two; a Python error inside it is kept in `failed` and
/// re-raised.
fn interventions<'a>(specs: &'a [HookSpec], failed: &'a Mutex<Option<PyErr>>) -> Vec<Intervention<'a>> {
    specs
        .iter()
        .map(|s| {
            let action = match &s.action {
                HookAction::Replace(t) => Action::Replace(t.clone()),
                HookAction::Add(t) => Action::Add(t.clone()),
                HookAction::Zero => Action::Zero,
                HookAction::Scale(f) => Action::Scale(*f),
                HookAction::Call(f) => {
                    let name = s.site.name();
                    Action::Apply(Box::new(move |x: &Tensor| {
                        Python::attach(|py| -> PyResult<Tensor> {
                            let single = x.dims().first() == Some(&1);
                            let shown = if single { x.squeeze(0).map_err(crate::errors::py_err)? } else { x.clone() };
                            let arr = tensor_to_numpy(py, &shown)?;
                            let out = f.call1(py, (arr.clone(), name.as_str()))?;
                            let out = if out.is_none(py) { arr } else { out.into_bound(py) };
                            let t = numpy_to_tensor(py, &out, x.device(), &format!("hook at {name}"))?;
                            let t = if single { t.unsqueeze(0).map_err(crate::errors::py_err)? } else { t };
                            t.to_dtype(x.dtype()).map_err(crate::errors::py_err)
                        })
                        .map_err(|e| {
                            let msg = e.to_string();
                            *failed.lock().expect("not poisoned") = Some(e);
                            candle_core::Error::Msg(format!("Python hook failed: {msg}"))
                        })
                    }))
                }
            };
            let mut iv = Intervention::new(s.site, action);
            iv.positions = s.positions.clone();
            iv.heads = s.heads.clone();
            iv
        })
        .collect()
}

/// What a forward pass on one text returns to Python.
struct Run {
    score: f32,
    cache: ActivationCache,
}

impl Model {
    /// The model folder's fingerprint, as the command computes it (what an SAE's provenance and
    /// a resumed collection compare).
    pub fn fingerprint(&self) -> PyResult<String> {
        reward_lens_report::fingerprint::model((!self.embedded).then_some(self.dir.as_path())).or_raise()
    }

    fn encode_one(&self, prompt: &str, response: &str, truncate_prompt: bool) -> PyResult<Encoded> {
        self.inner.encode(prompt, response, truncation(truncate_prompt)).or_raise()
    }

    fn batch_of(&self, seqs: &[Vec<u32>]) -> PyResult<Batch> {
        self.inner.batch(seqs, PaddingSide::Right).or_raise()
    }

    fn run(
        &self,
        py: Python<'_>,
        prompt: &str,
        response: &str,
        names: Option<Vec<String>>,
        hooks: Option<&Bound<'_, PyAny>>,
        truncate_prompt: bool,
    ) -> PyResult<Run> {
        let specs = parse_hooks(py, hooks, &self.inner.device)?;
        let enc = self.encode_one(prompt, response, truncate_prompt)?;
        let batch = self.batch_of(std::slice::from_ref(&enc.ids))?;
        let filter = names.map(|n| SiteFilter::new(&n)).unwrap_or_default();
        if !filter.is_empty() && self.inner.resolve_sites(&filter).or_raise()?.is_empty() {
            return Err(raise(Kind::Site, format!("names {:?}: match no site of this model", filter.patterns())));
        }
        let model = &self.inner;
        let failed = Mutex::new(None);
        let res = detached(py, || {
            let hooks = Hooks { cache: filter, interventions: interventions(&specs, &failed) };
            let f = model.forward(&batch, &hooks).or_raise()?;
            Ok(Run { score: f.output.scores[0], cache: f.cache })
        });
        // A Python hook's own exception, not the engine's wrapper of it.
        if let Some(e) = failed.lock().expect("not poisoned").take() {
            return Err(e);
        }
        res
    }
}

#[pymethods]
impl Model {
    fn __repr__(&self) -> String {
        let c = &self.inner.config;
        format!(
            "Model({}: {:?}, {} layers, d_model {}, {}, {})",
            self.name, c.architecture, c.n_layers, c.d_model, self.dtype, self.device
        )
    }

    /// The directory the model was loaded from.
    #[getter]
    fn path(&self) -> PathBuf {
        self.dir.clone()
    }

    /// Architecture, sizes, dtype and head: the fields of `reward-lens info --json`.
    fn info<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        convert::plain(py, &self.inner.info())
    }

    /// Every activation site this model fires, in TransformerLens names and firing order
    /// (e.g. "blocks.0.hook_resid_post"); patterns with `*` select from these.
    #[getter]
    fn sites(&self) -> Vec<String> {
        self.inner.sites().iter().map(|s| s.name()).collect()
    }

    /// The reward direction w_r (numpy float32, [d_model]) of a linear head: reward =
    /// w_r · FinalNorm(h) + b at the pooled token. ArmoRM's direction depends on the input: use
    /// reward_direction(prompt, response).
    #[getter]
    fn w_r<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let (w, _) = self.linear()?;
        tensor_to_numpy(py, &w)
    }

    /// The reward head's bias b (0.0 when the head has none).
    #[getter]
    fn b(&self) -> PyResult<f32> {
        Ok(self.linear()?.1)
    }

    /// (w_r, b) for this input. Linear heads: the same for every input (prompt and response may
    /// be omitted). ArmoRM: the effective direction Rᵀ(T g) under this input's gate g, b = 0.
    #[pyo3(signature = (prompt=None, response=None, truncate_prompt=false))]
    fn reward_direction<'py>(
        &self,
        py: Python<'py>,
        prompt: Option<&str>,
        response: Option<&str>,
        truncate_prompt: bool,
    ) -> PyResult<(Bound<'py, PyAny>, f32)> {
        if let Some((w, b)) = self.inner.head.linear_direction().or_raise()? {
            return Ok((tensor_to_numpy(py, &w)?, b));
        }
        let (Some(p), Some(r), RewardHead::Gated(g)) = (prompt, response, &self.inner.head) else {
            return Err(input("this head's direction depends on the input: pass prompt and response"));
        };
        let enc = self.encode_one(p, r, truncate_prompt)?;
        let batch = self.batch_of(std::slice::from_ref(&enc.ids))?;
        let model = &self.inner;
        let w = detached(py, || {
            let out = model.score(&batch).or_raise()?;
            let gating = out.objectives.as_ref().map(|o| o.gating[0].clone()).unwrap_or_default();
            g.effective_direction(&gating).or_raise()
        })?;
        Ok((tensor_to_numpy(py, &w)?, 0.0))
    }

    /// Tokenises (prompt, response) through the chat template as every instrument does.
    /// Returns {"ids": int64 array, "tokens": [str], "response_start": int, "pooled_index": int}.
    #[pyo3(signature = (prompt, response, truncate_prompt=false))]
    fn encode<'py>(
        &self,
        py: Python<'py>,
        prompt: &str,
        response: &str,
        truncate_prompt: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let enc = self.encode_one(prompt, response, truncate_prompt)?;
        let tok = self.inner.tokenizer().or_raise()?;
        let tokens: Vec<String> =
            enc.ids.iter().map(|&i| tok.tokenizer.id_to_token(i).unwrap_or_else(|| format!("<{i}>"))).collect();
        let pooled = self.inner.pooled_alone(&enc.ids).or_raise()?;
        let d = PyDict::new(py);
        d.set_item("ids", numpy::PyArray1::from_vec(py, enc.ids.iter().map(|&i| i as i64).collect()))?;
        d.set_item("tokens", tokens)?;
        d.set_item("response_start", enc.response_start)?;
        d.set_item("pooled_index", pooled)?;
        Ok(d.into_any())
    }

    /// The reward of one (prompt, response).
    #[pyo3(signature = (prompt, response, truncate_prompt=false))]
    fn score(&self, py: Python<'_>, prompt: &str, response: &str, truncate_prompt: bool) -> PyResult<f32> {
        let enc = self.encode_one(prompt, response, truncate_prompt)?;
        let batch = self.batch_of(std::slice::from_ref(&enc.ids))?;
        let model = &self.inner;
        detached(py, || Ok(model.score(&batch).or_raise()?.scores[0]))
    }

    /// Chosen and rejected rewards of every pair, batch_size sequences per forward pass, pairs
    /// batched by length within blocks of 8 batches (as `reward-lens score`; results in input order).
    ///
    /// pairs: a JSONL path, a list of dicts (prompt, chosen, rejected; optional id, subset) or
    ///     a pandas DataFrame with those columns.
    /// Returns one dict per pair with the fields of `reward-lens score` lines: id, subset,
    /// chosen_score, rejected_score, margin, correct, chosen_tokens, rejected_tokens (ArmoRM:
    /// chosen_objectives, rejected_objectives).
    #[pyo3(signature = (pairs, batch_size=16, padding="right", truncate_prompt=false, progress=None))]
    fn score_pairs<'py>(
        &self,
        py: Python<'py>,
        pairs: &Bound<'py, PyAny>,
        batch_size: usize,
        padding: &str,
        truncate_prompt: bool,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let pairs = convert::pairs(pairs)?;
        let padding: PaddingSide = choice(padding, "padding")?;
        if batch_size == 0 {
            return Err(input("batch_size must be at least 1"));
        }
        let bar = Bar::new(py, "scoring", progress.as_ref())?;
        let model = &self.inner;
        let n = pairs.len();
        let (encoded, scores) = detached(py, || {
            let encoded = model.encode_pairs(&pairs, truncation(truncate_prompt)).or_raise()?;
            let scores = model
                .score_pair_texts(&pairs, &encoded, &ScoreOptions { batch_size, padding }, &mut |done| {
                    bar.update(done, n, None)
                })
                .or_raise()?;
            Ok((encoded, scores))
        })?;
        let lines: Vec<ScoreLine> =
            pairs.iter().zip(&encoded).zip(&scores).map(|((p, e), s)| ScoreLine::new(p, e, s)).collect();
        convert::plain(py, &lines)
    }

    /// Runs (prompt, response) once and caches activations, TransformerLens-style.
    ///
    /// names: site names or patterns ("blocks.*.hook_resid_post"); None caches every site.
    /// hooks: interventions applied during the same pass (see run_with_hooks).
    /// Returns (reward, cache); cache[name] is a float32 numpy array without the batch axis,
    /// e.g. [T, d_model] for residual sites, [T, n_heads, head_dim] for per-head sites.
    #[pyo3(signature = (prompt, response, names=None, hooks=None, truncate_prompt=false))]
    fn run_with_cache(
        &self,
        py: Python<'_>,
        prompt: &str,
        response: &str,
        names: Option<OneOrMany<String>>,
        hooks: Option<&Bound<'_, PyAny>>,
        truncate_prompt: bool,
    ) -> PyResult<(f32, Cache)> {
        let names = names.map_or_else(|| vec!["*".into()], |n| n.0);
        if names.is_empty() {
            return Err(raise(Kind::Site, "names: an empty list caches nothing (None caches every site)"));
        }
        let r = self.run(py, prompt, response, Some(names), hooks, truncate_prompt)?;
        Ok((r.score, Cache::new(r.cache)?))
    }

    /// Runs (prompt, response) with interventions and returns the reward.
    ///
    /// hooks: a list of dicts {"site", "action", "value", "positions", "heads"} or tuples
    /// (site, action[, value]). action: "replace" or "mean" (value broadcast to the
    /// activation), "add" (value added), "zero", "scale" (value a number), or a Python callable
    /// f(activation, site) returning the new activation (or None after editing it in place).
    /// Activations are shown without the batch axis, as in the cache. Give a list even for one
    /// hook.
    #[pyo3(signature = (prompt, response, hooks, truncate_prompt=false))]
    fn run_with_hooks(
        &self,
        py: Python<'_>,
        prompt: &str,
        response: &str,
        hooks: &Bound<'_, PyAny>,
        truncate_prompt: bool,
    ) -> PyResult<f32> {
        Ok(self.run(py, prompt, response, None, Some(hooks), truncate_prompt)?.score)
    }

    /// Gradients of the reward (or, with `rejected`, of the margin chosen − rejected) with
    /// respect to the activations at `names`.
    ///
    /// Returns {"score": reward(s), "objective": the differentiated value, "values": {site:
    /// activation}, "grads": {site: gradient}}; arrays have no batch axis for one response, and
    /// a leading axis of 2 (chosen, rejected; right-padded) with `rejected`.
    #[pyo3(signature = (prompt, response, names, rejected=None, hooks=None, truncate_prompt=false))]
    #[allow(clippy::too_many_arguments)]
    fn gradients<'py>(
        &self,
        py: Python<'py>,
        prompt: &str,
        response: &str,
        names: OneOrMany<String>,
        rejected: Option<&str>,
        hooks: Option<&Bound<'py, PyAny>>,
        truncate_prompt: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let specs = parse_hooks(py, hooks, &self.inner.device)?;
        let mut seqs = vec![self.encode_one(prompt, response, truncate_prompt)?.ids];
        if let Some(r) = rejected {
            seqs.push(self.encode_one(prompt, r, truncate_prompt)?.ids);
        }
        let weights: Vec<f32> = if seqs.len() == 2 { vec![1.0, -1.0] } else { vec![1.0] };
        let batch = self.batch_of(&seqs)?;
        let filter = SiteFilter::new(&names.0);
        if filter.is_empty() || self.inner.resolve_sites(&filter).or_raise()?.is_empty() {
            return Err(raise(Kind::Site, format!("names {:?}: match no site of this model", filter.patterns())));
        }
        let model = &self.inner;
        let failed = Mutex::new(None);
        let g = detached(py, || {
            let hooks = Hooks { cache: SiteFilter::default(), interventions: interventions(&specs, &failed) };
            model.gradients(&batch, &filter, &weights, &hooks).or_raise()
        });
        if let Some(e) = failed.lock().expect("not poisoned").take() {
            return Err(e);
        }
        let g = g?;
        let one = seqs.len() == 1;
        let arrays = |c: &ActivationCache| -> PyResult<Bound<'py, PyDict>> {
            let d = PyDict::new(py);
            for (name, t) in c.iter() {
                let t = if one { t.squeeze(0).or_raise()? } else { t.clone() };
                d.set_item(name, tensor_to_numpy(py, &t)?)?;
            }
            Ok(d)
        };
        let d = PyDict::new(py);
        if one {
            d.set_item("score", g.output.scores[0])?;
        } else {
            d.set_item("score", PyList::new(py, &g.output.scores)?)?;
        }
        d.set_item("objective", g.objective)?;
        d.set_item("values", arrays(&g.values)?)?;
        d.set_item("grads", arrays(&g.grads)?)?;
        Ok(d.into_any())
    }
}

impl Model {
    fn linear(&self) -> PyResult<(Tensor, f32)> {
        self.inner.head.linear_direction().or_raise()?.ok_or_else(|| {
            input("this model's reward head is gated (ArmoRM): its direction depends on the input; use reward_direction(prompt, response)")
        })
    }
}

/// Activations one forward pass cached, by site name, in firing order. Indexing returns a
/// float32 numpy array without the batch axis (made on first access: one copy, then kept). The
/// arrays are read-only: every access and `stack` show what the model computed (`.copy()` to edit).
#[pyclass(frozen, name = "ActivationCache", module = "reward_lens_rs")]
pub struct Cache {
    names: Vec<String>,
    tensors: HashMap<String, Tensor>,
    arrays: Mutex<HashMap<String, Py<PyAny>>>,
}

impl Cache {
    fn new(c: ActivationCache) -> PyResult<Self> {
        let mut tensors = HashMap::new();
        for (name, t) in c.iter() {
            tensors.insert(name.to_string(), t.squeeze(0).or_raise()?);
        }
        Ok(Self { names: c.names().to_vec(), tensors, arrays: Mutex::new(HashMap::new()) })
    }

    fn resolve(&self, name: &str) -> PyResult<&str> {
        if let Some((k, _)) = self.tensors.get_key_value(name) {
            return Ok(k);
        }
        // Aliases the engine accepts (e.g. "blocks.0.attn.hook_z") map to the canonical name.
        if let Some(s) = Site::parse(name) {
            if let Some((k, _)) = self.tensors.get_key_value(&s.name()) {
                return Ok(k);
            }
        }
        Err(pyo3::exceptions::PyKeyError::new_err(format!(
            "activation `{name}` was not cached (cached: {} sites; pass it in names=)",
            self.names.len()
        )))
    }
}

#[pymethods]
impl Cache {
    fn __getitem__<'py>(&self, py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyAny>> {
        let key = self.resolve(name)?;
        let mut arrays = self.arrays.lock().expect("not poisoned");
        if let Some(a) = arrays.get(key) {
            return Ok(a.bind(py).clone());
        }
        let a = tensor_to_numpy(py, &self.tensors[key])?;
        let flags = PyDict::new(py);
        flags.set_item("write", false)?;
        a.call_method("setflags", (), Some(&flags))?;
        arrays.insert(key.to_string(), a.clone().unbind());
        Ok(a)
    }

    fn __contains__(&self, name: &Bound<'_, PyAny>) -> bool {
        name.extract::<String>().is_ok_and(|n| self.resolve(&n).is_ok())
    }

    fn __len__(&self) -> usize {
        self.names.len()
    }

    fn __iter__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        PyList::new(py, &self.names)?.try_iter().map(|i| i.into_any())
    }

    fn __repr__(&self) -> String {
        format!("ActivationCache({} sites)", self.names.len())
    }

    /// Site names in firing order.
    fn keys(&self) -> Vec<String> {
        self.names.clone()
    }

    /// (name, array) pairs in firing order.
    fn items<'py>(&self, py: Python<'py>) -> PyResult<Vec<(String, Bound<'py, PyAny>)>> {
        self.names.iter().map(|n| Ok((n.clone(), self.__getitem__(py, n)?))).collect()
    }

    /// The arrays of every cached site matching `pattern` (e.g. "blocks.*.hook_resid_post"),
    /// stacked in firing order into one array with a leading site axis.
    fn stack<'py>(&self, py: Python<'py>, pattern: &str) -> PyResult<Bound<'py, PyAny>> {
        let filter = SiteFilter::new(&[pattern]);
        let names: Vec<&String> =
            self.names.iter().filter(|n| Site::parse(n).is_some_and(|s| filter.matches(&s))).collect();
        let Some(first) = names.first() else {
            return Err(raise(Kind::Site, format!("`{pattern}` matches no cached site")));
        };
        // Sites of different kinds (a residual stream and an attention pattern) cannot share one
        // array; name the first pair that differs rather than passing on the tensor library's text.
        let shape = self.tensors[*first].dims();
        if let Some(other) = names.iter().find(|n| self.tensors[**n].dims() != shape) {
            return Err(raise(
                Kind::Site,
                format!(
                    "`{pattern}` matches sites of different shapes ({first}: {shape:?}, {other}: {:?}); \
                     narrow the pattern to one kind of site",
                    self.tensors[*other].dims()
                ),
            ));
        }
        let picked: Vec<Tensor> = names.iter().map(|n| self.tensors[*n].clone()).collect();
        tensor_to_numpy(py, &Tensor::stack(&picked, 0).or_raise()?)
    }
}

/// Benchmark support (python/bench.py): seconds per `score` call measured inside Rust over
/// `iters` calls (encode, batch, forward), to set against the same call made from Python.
#[pyfunction]
pub fn _bench_score(py: Python<'_>, model: &Model, prompt: &str, response: &str, iters: usize) -> PyResult<f64> {
    let m = &model.inner;
    detached(py, || {
        let start = std::time::Instant::now();
        for _ in 0..iters.max(1) {
            let enc = m.encode(prompt, response, Truncation::Error).or_raise()?;
            let batch = m.batch(std::slice::from_ref(&enc.ids), PaddingSide::Right).or_raise()?;
            std::hint::black_box(m.score(&batch).or_raise()?.scores[0]);
        }
        Ok(start.elapsed().as_secs_f64() / iters.max(1) as f64)
    })
}
