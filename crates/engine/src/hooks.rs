//! Caching and interventions. A forward pass calls [`HookState::fire`] at every site; when
//! nothing is cached or changed that call returns its input untouched, so an empty [`Hooks`]
//! costs nothing beyond a branch per site.

use std::collections::HashMap;

use candle_core::{Tensor, Var};

use crate::error::{EngineError, Result};
use crate::site::{Site, SiteFilter};

/// A function of an activation that returns its replacement (same shape).
pub type ActivationFn<'a> = Box<dyn Fn(&Tensor) -> candle_core::Result<Tensor> + 'a>;

/// What an intervention does to the activation at its site.
pub enum Action<'a> {
    /// Replace with this tensor (broadcast to the activation's shape).
    Replace(Tensor),
    /// Add this tensor (steering vectors, finite-difference probes).
    Add(Tensor),
    /// Set to zero (zero ablation).
    Zero,
    /// Multiply by a factor.
    Scale(f64),
    /// Set to a mean activation (mean ablation); broadcast like `Replace`.
    Mean(Tensor),
    /// Any function of the activation; must return a tensor of the same shape.
    Apply(ActivationFn<'a>),
}

/// An action at one site, optionally restricted to batch rows, positions and heads.
pub struct Intervention<'a> {
    pub site: Site,
    pub action: Action<'a>,
    pub rows: Option<Vec<usize>>,
    pub positions: Option<Vec<usize>>,
    pub heads: Option<Vec<usize>>,
}

impl<'a> Intervention<'a> {
    pub fn new(site: Site, action: Action<'a>) -> Self {
        Self { site, action, rows: None, positions: None, heads: None }
    }
    pub fn rows(mut self, rows: impl Into<Vec<usize>>) -> Self {
        self.rows = Some(rows.into());
        self
    }
    pub fn positions(mut self, positions: impl Into<Vec<usize>>) -> Self {
        self.positions = Some(positions.into());
        self
    }
    pub fn heads(mut self, heads: impl Into<Vec<usize>>) -> Self {
        self.heads = Some(heads.into());
        self
    }

    fn err(&self, message: impl Into<String>) -> EngineError {
        EngineError::Intervention { site: self.site.name(), message: message.into() }
    }

    fn apply(&self, x: &Tensor) -> Result<Tensor> {
        let shape = x.shape().clone();
        let fit = |t: &Tensor| -> Result<Tensor> {
            t.to_dtype(x.dtype())?.broadcast_as(&shape).map_err(|_| {
                self.err(format!(
                    "value of shape {:?} does not broadcast to the activation {:?}",
                    t.dims(),
                    shape.dims()
                ))
            })
        };
        let new = match &self.action {
            Action::Replace(t) | Action::Mean(t) => fit(t)?,
            Action::Add(t) => (x + fit(t)?)?,
            Action::Zero => x.zeros_like()?,
            Action::Scale(f) => x.affine(*f, 0.0)?,
            Action::Apply(f) => {
                let y = f(x)?;
                if y.shape() != &shape {
                    return Err(self.err(format!(
                        "closure returned shape {:?}, expected {:?}",
                        y.dims(),
                        shape.dims()
                    )));
                }
                y
            }
        };
        if self.rows.is_none() && self.positions.is_none() && self.heads.is_none() {
            return Ok(new);
        }
        let mask = self.mask(shape.dims())?.to_device(x.device())?;
        Ok(mask.broadcast_as(&shape)?.where_cond(&new, x)?)
    }

    /// A 0/1 mask over the (batch, position, head) axes, broadcastable to the activation.
    fn mask(&self, dims: &[usize]) -> Result<Tensor> {
        let axes = self.site.axes();
        if self.heads.is_some() && axes.head.is_none() {
            return Err(self.err("this site has no head axis; drop the head restriction"));
        }
        let mut mshape = vec![1usize; dims.len()];
        let mut axis_sel: Vec<(usize, &Vec<usize>)> = Vec::new();
        if let Some(r) = &self.rows {
            axis_sel.push((0, r));
        }
        if let (Some(p), Some(ax)) = (&self.positions, axes.position) {
            axis_sel.push((ax, p));
        }
        if let (Some(h), Some(ax)) = (&self.heads, axes.head) {
            axis_sel.push((ax, h));
        }
        for (ax, sel) in &axis_sel {
            mshape[*ax] = dims[*ax];
            if let Some(bad) = sel.iter().find(|&&i| i >= dims[*ax]) {
                return Err(self.err(format!("index {bad} out of range for axis {ax} of size {}", dims[*ax])));
            }
        }
        let n: usize = mshape.iter().product();
        let strides: Vec<usize> = (0..mshape.len()).map(|i| mshape[i + 1..].iter().product()).collect();
        let mut data = vec![0u8; n];
        for (flat, slot) in data.iter_mut().enumerate() {
            let ok = axis_sel.iter().all(|(ax, sel)| sel.contains(&((flat / strides[*ax]) % mshape[*ax])));
            *slot = ok as u8;
        }
        Ok(Tensor::from_vec(data, mshape, &candle_core::Device::Cpu)?)
    }
}

/// Activations captured by a forward pass, keyed by site name, in the order they fired.
#[derive(Default, Clone)]
pub struct ActivationCache {
    order: Vec<String>,
    map: HashMap<String, Tensor>,
}

impl ActivationCache {
    pub fn insert(&mut self, name: String, t: Tensor) {
        if self.map.insert(name.clone(), t).is_none() {
            self.order.push(name);
        }
    }
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.map.get(name).or_else(|| Site::parse(name).and_then(|s| self.map.get(&s.name())))
    }
    pub fn site(&self, site: Site) -> Option<&Tensor> {
        self.map.get(&site.name())
    }
    /// Like `get`, but a missing site is an error naming it.
    pub fn require(&self, name: &str) -> Result<&Tensor> {
        self.get(name).ok_or_else(|| {
            EngineError::Invalid(format!("activation `{name}` was not cached; add it to the cache filter"))
        })
    }
    pub fn names(&self) -> &[String] {
        &self.order
    }
    pub fn len(&self) -> usize {
        self.order.len()
    }
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Tensor)> {
        self.order.iter().map(|n| (n.as_str(), &self.map[n]))
    }
}

/// What one forward pass should cache and change.
#[derive(Default)]
pub struct Hooks<'a> {
    pub cache: SiteFilter,
    pub interventions: Vec<Intervention<'a>>,
}

impl<'a> Hooks<'a> {
    pub fn none() -> Self {
        Self::default()
    }
    pub fn cache<S: AsRef<str>>(patterns: &[S]) -> Self {
        Self { cache: SiteFilter::new(patterns), interventions: Vec::new() }
    }
    pub fn with(mut self, iv: Intervention<'a>) -> Self {
        self.interventions.push(iv);
        self
    }
}

/// Per-forward hook state (what the forward pass talks to).
pub(crate) struct HookState<'h, 'a> {
    hooks: &'h Hooks<'a>,
    grad: Option<&'h SiteFilter>,
    active: bool,
    pub cache: ActivationCache,
    pub grad_vars: Vec<(String, Var)>,
    /// The activation at each site marked for gradients (what `Gradients::values` returns).
    pub grad_values: ActivationCache,
    /// Cache activations with their graph (training losses on activations), not detached.
    pub keep_graph: bool,
}

impl<'h, 'a> HookState<'h, 'a> {
    pub fn new(hooks: &'h Hooks<'a>, grad: Option<&'h SiteFilter>) -> Self {
        let active = !hooks.cache.is_empty() || !hooks.interventions.is_empty() || grad.is_some_and(|g| !g.is_empty());
        Self {
            hooks,
            grad,
            active,
            cache: ActivationCache::default(),
            grad_vars: Vec::new(),
            grad_values: ActivationCache::default(),
            keep_graph: false,
        }
    }

    /// Whether firing `site` can do anything (intervene, mark for gradients, cache): where it
    /// cannot, the forward pass may fuse the operations around it.
    /// Whether any hook, cache or gradient is attached: if not, every `fire` is the identity.
    pub fn is_active(&self) -> bool {
        self.active
    }

    pub fn touches(&self, site: Site) -> bool {
        self.active
            && (self.hooks.interventions.iter().any(|iv| iv.site == site)
                || self.grad.is_some_and(|g| g.matches(&site))
                || self.hooks.cache.matches(&site))
    }

    /// Called by the forward pass at `site` with its activation: applies the interventions at
    /// this site in order, marks it for gradients, and caches it (after the interventions).
    #[inline]
    pub fn fire(&mut self, site: Site, x: Tensor) -> Result<Tensor> {
        if !self.active {
            return Ok(x);
        }
        let mut x = x;
        for iv in self.hooks.interventions.iter().filter(|iv| iv.site == site) {
            x = iv.apply(&x)?;
        }
        if let Some(g) = self.grad {
            if g.matches(&site) {
                self.grad_values.insert(site.name(), x.detach());
                // x + 0 with the zero a leaf variable: d(out)/d(zero) = d(out)/d(x), and the
                // graph still flows through x to later marked sites.
                let zero = Var::from_tensor(&x.zeros_like()?.to_dtype(x.dtype())?)?;
                x = (&x + zero.as_tensor())?;
                self.grad_vars.push((site.name(), zero));
            }
        }
        if self.hooks.cache.matches(&site) {
            self.cache.insert(site.name(), if self.keep_graph { x.clone() } else { x.detach() });
        }
        Ok(x)
    }
}

/// Checks that every intervention names a site this model fires.
pub(crate) fn validate(hooks: &Hooks, sites: &[Site]) -> Result<()> {
    for iv in &hooks.interventions {
        if !sites.contains(&iv.site) {
            // A layer beyond the model's stays `UnknownSite` (callers name the layer count).
            return Err(match iv.site {
                Site::PosEmbed | Site::RotQ(_) | Site::RotK(_) | Site::MlpPreLinear(_) => absent(iv.site),
                _ => EngineError::UnknownSite(iv.site.name()),
            });
        }
    }
    Ok(())
}

/// A site name this architecture does not compute, with the reason.
pub(crate) fn absent(site: Site) -> EngineError {
    let why = match site {
        Site::PosEmbed => "only models with learned position embeddings (GPT-2) have it; this one uses RoPE",
        Site::RotQ(_) | Site::RotK(_) => "only models with rotary position embeddings (RoPE) have it",
        Site::MlpPreLinear(_) => "only gated MLPs (Llama, Mistral, Qwen, Gemma) have it",
        _ => "this architecture does not compute it",
    };
    EngineError::SiteNotInModel { site: site.name(), why: why.into() }
}
