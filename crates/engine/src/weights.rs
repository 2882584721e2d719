//! Where weights come from. [`TensorSource`] hands out named tensors with their shape checked and
//! converted to the compute dtype; the architecture loaders only ever see that interface, so a
//! safetensors directory and an in-memory map (generated models, organisms) load the same way.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::safetensors::{Load, MmapedSafetensors};
use candle_core::{DType, Device, Tensor};

use crate::error::{io_err, EngineError, Result};

pub trait TensorSource {
    /// The tensor `name`, which must have exactly `shape`, in the compute dtype on the device.
    fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor>;
    /// Whether `name` exists (for optional tensors such as a tied head).
    fn contains(&self, name: &str) -> bool;
    /// Elements across all stored tensors, when known (for progress reporting).
    fn total_elements(&self) -> Option<usize> {
        None
    }
    /// Every stored tensor with the file holding it, when the source can list them (so that a
    /// checkpoint holding tensors its config does not describe is caught); empty otherwise.
    fn stored(&self) -> Vec<(String, String)> {
        Vec::new()
    }
}

/// Weights read from `model.safetensors` or a sharded `model.safetensors.index.json`, through
/// candle's memory-mapped loader. Each tensor is copied out of the map once, converted, and its
/// mapped pages are handed back to the kernel at once, so the process never holds the file and
/// the converted weights at the same time (peak ≈ weights in the compute dtype).
pub struct SafetensorsSource {
    st: MmapedSafetensors,
    files: Vec<PathBuf>,
    /// Tensor → shard, from the index (empty for a single file).
    shard_of: HashMap<String, PathBuf>,
    dtype: DType,
    device: Device,
}

impl SafetensorsSource {
    pub fn open(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        let mut shard_of = HashMap::new();
        let files = if index.symlink_metadata().is_ok() {
            let text = read_text(&index)?;
            let v: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| EngineError::Json { path: index.clone(), message: e.to_string() })?;
            let map = v.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| EngineError::ConfigField {
                path: index.clone(),
                field: "weight_map".into(),
                message: "missing or not an object of tensor name → shard file".into(),
            })?;
            let mut files: Vec<PathBuf> = Vec::new();
            for (name, file) in map {
                let file = file.as_str().ok_or_else(|| EngineError::ConfigField {
                    path: index.clone(),
                    field: format!("weight_map.{name}"),
                    message: "expected a file name".into(),
                })?;
                let p = confined(dir, &index, name, file)?;
                shard_of.insert(name.clone(), p.clone());
                if !files.contains(&p) {
                    files.push(p);
                }
            }
            if files.is_empty() {
                return Err(EngineError::ConfigField {
                    path: index.clone(),
                    field: "weight_map".into(),
                    message: "is empty: expected each tensor name mapped to its shard file".into(),
                });
            }
            // Both: one is stale (a model saved as one file beside an old index). transformers
            // reads model.safetensors; reading the index would load other weights without a word.
            if single.symlink_metadata().is_ok() && !files.contains(&single) {
                return Err(EngineError::ConfigField {
                    path: index.clone(),
                    field: "weight_map".into(),
                    message: "names shard files, but model.safetensors is here too: one of them is stale \
                              (transformers would read model.safetensors); remove the one that is"
                        .into(),
                });
            }
            files.sort();
            files
        } else if single.symlink_metadata().is_ok() {
            vec![single]
        } else {
            return Err(EngineError::NoWeights { dir: dir.to_path_buf() });
        };
        for f in &files {
            regular_file(f)?;
        }
        // SAFETY: the files are mapped read-only; we assume nobody rewrites them while loading,
        // which is the same contract every safetensors loader has.
        let st = unsafe { MmapedSafetensors::multi(&files) }.map_err(|e| EngineError::Safetensors {
            file: files.first().cloned().unwrap_or_default(),
            message: e.to_string(),
        })?;
        let me = Self { st, files, shard_of, dtype, device: device.clone() };
        // Shards are routed by content, the last file holding a name winning: a tensor stored
        // twice would silently load whichever copy sorts last.
        let mut seen = std::collections::HashSet::new();
        if let Some((name, _)) = me.st.tensors().into_iter().find(|(name, _)| !seen.insert(name.clone())) {
            return Err(EngineError::DuplicateTensor { name, files: me.files_list() });
        }
        Ok(me)
    }

    fn file_of(&self, name: &str) -> String {
        match self.shard_of.get(name) {
            Some(p) => p.display().to_string(),
            None => self.files_list(),
        }
    }

    fn files_list(&self) -> String {
        self.files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(", ")
    }

    /// The on-disk dtype of the first tensor (what `info` reports).
    pub fn disk_dtype(&self) -> Option<DType> {
        self.st.tensors().first().and_then(|(_, v)| DType::try_from(v.dtype()).ok())
    }
}

impl TensorSource for SafetensorsSource {
    fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let view = self
            .st
            .get(name)
            .map_err(|_| EngineError::MissingTensor { name: name.to_string(), files: self.files_list() })?;
        if view.shape() != shape {
            return Err(EngineError::ShapeMismatch {
                name: name.to_string(),
                file: self.file_of(name),
                expected: shape.to_vec(),
                found: view.shape().to_vec(),
            });
        }
        match DType::try_from(view.dtype()) {
            Ok(DType::F32 | DType::BF16 | DType::F16 | DType::F64) => {}
            _ => {
                return Err(EngineError::UnsupportedDtype {
                    name: name.to_string(),
                    file: self.file_of(name),
                    dtype: format!("{:?}", view.dtype()),
                })
            }
        }
        let raw = view.load(&self.device)?;
        release_pages(view.data());
        let t = raw.to_dtype(self.dtype)?;
        drop(raw);
        if !is_finite(&t)? {
            return Err(EngineError::NonFinite { name: name.to_string(), file: self.file_of(name) });
        }
        Ok(t)
    }

    fn contains(&self, name: &str) -> bool {
        self.st.get(name).is_ok()
    }

    fn total_elements(&self) -> Option<usize> {
        Some(self.st.tensors().iter().map(|(_, v)| v.shape().iter().product::<usize>()).sum())
    }

    fn stored(&self) -> Vec<(String, String)> {
        self.st
            .tensors()
            .into_iter()
            .map(|(name, _)| {
                let file = self.file_of(&name);
                (name, file)
            })
            .collect()
    }
}

/// A shard file named by the index: a plain relative path inside the model folder. An absolute
/// path or one climbing out with `..` could read any file on the machine (`/dev/zero`,
/// `../../etc/passwd`), so it is refused before anything is opened.
fn confined(dir: &Path, index: &Path, tensor: &str, file: &str) -> Result<PathBuf> {
    use std::path::Component;
    let rel = Path::new(file);
    let inside = !file.is_empty() && rel.components().all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
    if !inside {
        return Err(EngineError::BadPath {
            path: index.to_path_buf(),
            message: format!(
                "weight_map.{tensor} names `{file}`: expected a file name inside the model folder (no absolute \
                 path, no `..`)"
            ),
        });
    }
    Ok(dir.join(rel))
}

/// A weight file must be a regular file once symbolic links are followed (the HuggingFace cache
/// links `snapshots/<rev>/model.safetensors` to `../../blobs/<hash>`, which is fine). A FIFO, a
/// device or a directory is refused from its metadata, without opening it: opening a FIFO
/// would block for ever and a device could be endless.
pub(crate) fn regular_file(f: &Path) -> Result<()> {
    let bad = |message: String| EngineError::BadPath { path: f.to_path_buf(), message };
    let expected =
        if f.extension().is_some_and(|e| e == "safetensors") { "a safetensors file" } else { "a regular file" };
    match std::fs::metadata(f) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(m) if m.is_dir() => Err(bad(format!("is a directory, expected {expected}"))),
        Ok(_) => Err(bad(format!("is not a regular file (a pipe, socket or device); expected {expected}"))),
        Err(e) if f.symlink_metadata().is_ok() => {
            Err(bad(format!("is a symbolic link that does not resolve ({e}); a broken link or a loop")))
        }
        Err(_) if expected == "a safetensors file" => Err(EngineError::Io {
            path: f.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "weight file named in the index is missing"),
        }),
        Err(e) => Err(EngineError::Io { path: f.to_path_buf(), source: e }),
    }
}

/// Largest JSON or template file we read whole (config.json is a few KB, a shard index or a
/// tokenizer_config.json with many added tokens a few MB).
const MAX_TEXT_FILE: u64 = 64 << 20;

/// Reads a small text file of the model folder: a regular file (checked from metadata, so a
/// FIFO is never opened) of at most [`MAX_TEXT_FILE`] bytes, so a corrupt or hostile folder
/// cannot make us read without end.
pub(crate) fn read_text(f: &Path) -> Result<String> {
    bounded_file(f, MAX_TEXT_FILE)?;
    std::fs::read_to_string(f).map_err(io_err(f))
}

/// Largest tokenizer.json we hand to the tokenizer library (the largest real vocabularies make
/// files of a few tens of MB).
pub(crate) const MAX_TOKENIZER_FILE: u64 = 1 << 30;

/// A regular file of at most `limit` bytes, checked from metadata before anything reads it.
pub(crate) fn bounded_file(f: &Path, limit: u64) -> Result<()> {
    regular_file(f)?;
    let len = std::fs::metadata(f).map_err(io_err(f))?.len();
    if len > limit {
        return Err(EngineError::BadPath {
            path: f.to_path_buf(),
            message: format!("is {len} bytes; expected a text file of at most {} MiB", limit >> 20),
        });
    }
    Ok(())
}

/// Tells the kernel we are done with these mapped pages (they are file-backed and read-only, so
/// dropping them loses nothing; a later read would fault them back in).
fn release_pages(data: &[u8]) {
    #[cfg(unix)]
    {
        let page = 4096usize;
        let start = data.as_ptr() as usize;
        let end = start + data.len();
        let a = start.div_ceil(page) * page;
        let b = end / page * page;
        if b > a {
            // SAFETY: [a, b) lies inside a live read-only mapping; MADV_DONTNEED on a private
            // file mapping only drops cached pages.
            unsafe {
                libc::madvise(a as *mut libc::c_void, b - a, libc::MADV_DONTNEED);
            }
        }
    }
}

pub(crate) fn is_finite(t: &Tensor) -> Result<bool> {
    use candle_core::{CpuStorage, Storage};
    let finite = {
        let (storage, _) = t.storage_and_layout();
        match &*storage {
            // Scan the loaded buffer in place: no second copy of a large tensor.
            Storage::Cpu(CpuStorage::F32(v)) => Some(v.iter().all(|x| x.is_finite())),
            Storage::Cpu(CpuStorage::BF16(v)) => Some(v.iter().all(|x| x.is_finite())),
            Storage::Cpu(CpuStorage::F16(v)) => Some(v.iter().all(|x| x.is_finite())),
            Storage::Cpu(CpuStorage::F64(v)) => Some(v.iter().all(|x| x.is_finite())),
            _ => None,
        }
    };
    Ok(match finite {
        Some(f) => f,
        // Other devices: 0·x is NaN exactly where x is NaN or ±inf.
        None => (t * 0.0)?.sum_all()?.to_dtype(DType::F32)?.to_scalar::<f32>()?.is_finite(),
    })
}

/// Tensors held in memory: generated benchmark models, trained organisms, tests.
pub struct MapSource {
    pub tensors: HashMap<String, Tensor>,
    pub dtype: DType,
}

impl TensorSource for MapSource {
    fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let t = self
            .tensors
            .get(name)
            .ok_or_else(|| EngineError::MissingTensor { name: name.to_string(), files: "in-memory weights".into() })?;
        if t.dims() != shape {
            return Err(EngineError::ShapeMismatch {
                name: name.to_string(),
                file: "in-memory weights".into(),
                expected: shape.to_vec(),
                found: t.dims().to_vec(),
            });
        }
        Ok(t.to_dtype(self.dtype)?)
    }

    fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
}
