//! Data across the boundary: reports (serde) become dicts and lists with every list of numbers
//! a numpy array; tensors become float32 numpy arrays with one copy; pairs come in as a path,
//! a list of dicts or a DataFrame.

use std::path::PathBuf;

use numpy::{IxDyn, PyArray1, PyArrayMethods, PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyString};
use reward_lens_engine::{DType, Device, PairText, Tensor};
use serde::Serialize;
use serde_json::Value;

use crate::errors::{input, OrRaise};

/// A serde value as Python objects; with `arrays`, every non-empty list of numbers becomes a
/// numpy array (int64 when all are integers, else float64) and a list of equal-length number
/// lists a 2-D array. Lists holding nulls (NaN in JSON) stay lists.
pub fn value_to_py<'py>(py: Python<'py>, v: &Value, arrays: bool) -> PyResult<Bound<'py, PyAny>> {
    Ok(match v {
        Value::Null => py.None().into_bound(py),
        Value::Bool(b) => b.into_pyobject(py)?.to_owned().into_any(),
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => i.into_pyobject(py)?.into_any(),
            (None, Some(u)) => u.into_pyobject(py)?.into_any(),
            _ => n.as_f64().unwrap_or(f64::NAN).into_pyobject(py)?.into_any(),
        },
        Value::String(s) => PyString::new(py, s).into_any(),
        Value::Array(xs) => {
            if arrays {
                if let Some(a) = numeric_array(py, xs)? {
                    return Ok(a);
                }
            }
            let list = PyList::empty(py);
            for x in xs {
                list.append(value_to_py(py, x, arrays)?)?;
            }
            list.into_any()
        }
        Value::Object(m) => {
            let d = PyDict::new(py);
            for (k, x) in m {
                d.set_item(k, value_to_py(py, x, arrays)?)?;
            }
            d.into_any()
        }
    })
}

fn numbers(xs: &[Value]) -> Option<(Vec<f64>, bool)> {
    let mut ints = true;
    let mut out = Vec::with_capacity(xs.len());
    for x in xs {
        let Value::Number(n) = x else { return None };
        ints &= n.is_i64() || n.is_u64();
        out.push(n.as_f64()?);
    }
    Some((out, ints))
}

fn numeric_array<'py>(py: Python<'py>, xs: &[Value]) -> PyResult<Option<Bound<'py, PyAny>>> {
    if xs.is_empty() {
        return Ok(None);
    }
    if let Some((v, ints)) = numbers(xs) {
        return Ok(Some(if ints {
            PyArray1::from_vec(py, v.iter().map(|&x| x as i64).collect()).into_any()
        } else {
            PyArray1::from_vec(py, v).into_any()
        }));
    }
    // A matrix: every row a number list of one length.
    let mut flat = Vec::new();
    let mut all_ints = true;
    let mut width = None;
    for x in xs {
        let Value::Array(row) = x else { return Ok(None) };
        let Some((r, ints)) = numbers(row) else { return Ok(None) };
        if row.is_empty() || *width.get_or_insert(r.len()) != r.len() {
            return Ok(None);
        }
        all_ints &= ints;
        flat.extend(r);
    }
    let shape = [xs.len(), width.unwrap_or(0)];
    Ok(Some(if all_ints {
        PyArray1::from_vec(py, flat.iter().map(|&x| x as i64).collect()).reshape(shape)?.into_any()
    } else {
        PyArray1::from_vec(py, flat).reshape(shape)?.into_any()
    }))
}

/// A report as Python data (numpy arrays for number lists).
pub fn report<'py, T: Serialize>(py: Python<'py>, r: &T) -> PyResult<Bound<'py, PyAny>> {
    let v = serde_json::to_value(r).or_raise()?;
    value_to_py(py, &v, true)
}

/// Plain Python data, no numpy (info, score lines).
pub fn plain<'py, T: Serialize>(py: Python<'py>, r: &T) -> PyResult<Bound<'py, PyAny>> {
    let v = serde_json::to_value(r).or_raise()?;
    value_to_py(py, &v, false)
}

/// A tensor as a float32 numpy array of the same shape. One copy: the tensor's storage into a
/// Vec that numpy then owns (no second copy on the numpy side).
pub fn tensor_to_numpy<'py>(py: Python<'py>, t: &Tensor) -> PyResult<Bound<'py, PyAny>> {
    let t = t.to_device(&Device::Cpu).or_raise()?.to_dtype(DType::F32).or_raise()?;
    let dims = t.dims().to_vec();
    let v = t.flatten_all().or_raise()?.to_vec1::<f32>().or_raise()?;
    Ok(PyArray1::from_vec(py, v).reshape(IxDyn(&dims))?.into_any())
}

/// Anything numpy can read as float32 (an array, a list, a scalar) as a tensor on `device`;
/// an InputError naming the first NaN or infinite element.
pub fn numpy_to_tensor(py: Python<'_>, obj: &Bound<'_, PyAny>, device: &Device, what: &str) -> PyResult<Tensor> {
    let np = py.import("numpy")?;
    let arr = np
        .call_method1("ascontiguousarray", (obj, "float32"))
        .map_err(|e| input(format!("{what}: expected an array of numbers ({e})")))?;
    let arr: PyReadonlyArrayDyn<f32> = arr.extract()?;
    let shape = arr.shape().to_vec();
    let data = arr.as_slice().map_err(|e| input(format!("{what}: {e}")))?;
    // A NaN written into the residual stream would surface as the model's "overflow".
    if let Some(i) = data.iter().position(|v| !v.is_finite()) {
        return Err(input(format!(
            "{what}: element {i} is {} (as float32; a number beyond ±3.4e38 becomes infinity): activations must be finite",
            data[i]
        )));
    }
    Tensor::from_slice(data, shape, device).or_raise()
}

/// What a `pairs` argument names: a JSONL file (read by the library, so errors carry its
/// file:line), or pairs in memory (dicts with prompt/chosen/rejected, or a DataFrame).
pub enum PairArg {
    File(PathBuf),
    Inline(Vec<PairText>),
}

impl PairArg {
    pub fn from_py(obj: &Bound<'_, PyAny>) -> PyResult<Self> {
        Self::from_py_as(obj, "pairs")
    }

    /// [`PairArg::from_py`] for the argument named `what` (`mean_reference`, `held_out`): its
    /// errors name it.
    pub fn from_py_as(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<Self> {
        if let Ok(p) = obj.extract::<PathBuf>() {
            return Ok(PairArg::File(p));
        }
        // One dict would be iterated as its keys.
        if obj.cast::<PyDict>().is_ok() {
            return Err(input(format!("{what}: got one dict; pass a list of dicts")));
        }
        // A pandas DataFrame: its rows as dicts.
        let frame = obj.hasattr("to_dict")? && obj.hasattr("columns")?;
        let rows = if frame { obj.call_method1("to_dict", ("records",))? } else { obj.clone() };
        let list = rows.try_iter().map_err(|_| {
            input(format!("{what}: expected a path to a JSONL file, a list of dicts or a pandas DataFrame"))
        })?;
        let mut pairs = reward_lens_report::datasets::PairReader::default();
        for (i, row) in list.enumerate() {
            let at = format!("{what}[{i}]");
            let row = clean_row(&row?, frame, &at)?;
            let value: Value = pythonize::depythonize(&row).map_err(|e| {
                input(format!("{at}: {e} (expected a dict with prompt, chosen, rejected; optional id, subset)"))
            })?;
            let Value::Object(obj) = value else {
                return Err(input(format!("{at}: expected a dict with prompt, chosen, rejected; optional id, subset")));
            };
            // The JSONL reader's rules (ids included), so a pair means the same given either way.
            pairs.push(obj, &at).or_raise()?;
        }
        let pairs = pairs.finish();
        if pairs.is_empty() {
            return Err(input(format!("{what}: empty")));
        }
        Ok(PairArg::Inline(pairs))
    }

    /// The pairs (reading the file if one was named).
    pub fn load(self) -> PyResult<Vec<PairText>> {
        match self {
            PairArg::File(p) => reward_lens_report::datasets::read_pairs(&p).or_raise(),
            PairArg::Inline(v) => Ok(v),
        }
    }
}

/// A row as a plain dict for the JSON reader's rules: numpy scalars made Python numbers, numpy
/// arrays lists, and an integral float id (pandas makes a column with a gap float) an int again.
/// In a DataFrame row (`frame`) a missing cell (None, NaN) is dropped, so optional fields stay
/// optional. In a dict, None is kept (the JSONL reader's null: `id=None` stays None, not the
/// index), and a NaN or infinite number is refused: JSON has none, and it would become null
/// (or, dropped, the index) silently.
fn clean_row<'py>(row: &Bound<'py, PyAny>, frame: bool, at: &str) -> PyResult<Bound<'py, PyAny>> {
    let Ok(d) = row.cast::<PyDict>() else { return Ok(row.clone()) };
    let out = PyDict::new(row.py());
    for (k, v) in d.iter() {
        let missing = v.is_none() || v.extract::<f64>().is_ok_and(f64::is_nan);
        if frame && missing {
            continue;
        }
        let v = if v.hasattr("dtype")? && v.hasattr("ndim")? {
            if v.getattr("ndim")?.extract::<usize>()? == 0 {
                v.call_method0("item")?
            } else {
                v.call_method0("tolist")?
            }
        } else {
            v
        };
        let is_id = k.extract::<String>().is_ok_and(|k| k == "id");
        if let Ok(x) = v.extract::<f64>() {
            if !x.is_finite() {
                return Err(input(format!(
                    "{at}: field `{k}` is {x}, not a finite number (JSON has no NaN or infinity); {}",
                    if is_id {
                        "give an int or a string id, None for no id, or leave `id` out for the pair's index"
                    } else {
                        "use None for a missing value"
                    }
                )));
            }
        }
        // An int beyond i64/u64 has no exact JSON number here (the JSONL reader refuses it too).
        if is_id
            && v.is_instance_of::<pyo3::types::PyInt>()
            && v.extract::<i64>().is_err()
            && v.extract::<u64>().is_err()
        {
            return Err(input(format!(
                "{at}: field `id` is the integer {v}, too large to be kept exactly (integer ids must lie within {} ..= {}); \
give the id as a string, str(id)",
                i64::MIN,
                u64::MAX
            )));
        }
        let v = match v.extract::<f64>() {
            Ok(x) if is_id && !v.is_instance_of::<pyo3::types::PyInt>() && x.fract() == 0.0 && x.abs() < 9.0e15 => {
                (x as i64).into_pyobject(row.py())?.into_any()
            }
            _ => v,
        };
        out.set_item(k, v)?;
    }
    Ok(out.into_any())
}

/// `pairs` as loaded pairs.
pub fn pairs(obj: &Bound<'_, PyAny>) -> PyResult<Vec<PairText>> {
    named_pairs(obj, "pairs")
}

/// [`pairs`] for the argument named `what`.
pub fn named_pairs(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<Vec<PairText>> {
    let pairs = PairArg::from_py_as(obj, what)?.load()?;
    if let Some(w) = reward_lens_report::datasets::identical_pairs_warning(&pairs) {
        crate::model::warn(obj.py(), &w)?;
    }
    Ok(pairs)
}

/// A library enum from its JSON name (`"noising"`), with the names allowed in the error.
pub fn choice<T: std::str::FromStr>(value: &str, what: &str) -> PyResult<T>
where
    T::Err: std::fmt::Display,
{
    value.parse::<T>().map_err(|e| input(format!("{what}={value:?}: {e}")))
}

/// What a list argument holds, for its type error.
pub trait Described {
    const WHAT: &'static str;
}
impl Described for String {
    const WHAT: &'static str = "a string or a list of strings";
}
impl Described for PathBuf {
    const WHAT: &'static str = "a path or a list of paths";
}

/// A list argument that also takes one item: `names="blocks.0.hook_resid_post"`,
/// `receivers="all"`, `probes="probes/"`. pyo3 refuses a str where a list is expected (rather
/// than take its characters), which would make these a TypeError about `Vec`.
pub struct OneOrMany<T>(pub Vec<T>);

impl<'a, 'py, T> FromPyObject<'a, 'py> for OneOrMany<T>
where
    T: FromPyObjectOwned<'py> + Described,
{
    type Error = PyErr;

    fn extract(obj: pyo3::Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        if let Ok(one) = obj.extract::<T>() {
            return Ok(Self(vec![one]));
        }
        obj.extract::<Vec<T>>().map(Self).map_err(|_| {
            let found = obj.get_type().name().map_or_else(|_| "?".to_string(), |n| n.to_string());
            pyo3::exceptions::PyTypeError::new_err(format!("expected {}, found {found}", T::WHAT))
        })
    }
}
