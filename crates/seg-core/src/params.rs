//! The parameter store: every weight and buffer of a network under its
//! PyTorch `state_dict` name, seeded initialisation, and safetensors IO.
//!
//! Networks are built from a [`VarBuilder`] made by [`ParamStore::var_builder`];
//! the path given to `vb.pp(..)` is the tensor's name in the checkpoint, so the
//! names are fixed by the PyTorch reference and files move freely both ways.
//! Tensors named `*.running_mean`, `*.running_var` and `*.num_batches_tracked`
//! are buffers (saved and loaded, never trained); everything else is trainable.

use crate::error::{Error, Result};
use candle_core::{DType, Device, Shape, Tensor, Var};
use candle_nn::{Init, VarBuilder};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

/// Suffixes of the tensors that are state, not parameters.
pub const BUFFER_SUFFIXES: [&str; 3] = ["running_mean", "running_var", "num_batches_tracked"];

/// True for BatchNorm buffers (running statistics and batch counter).
pub fn is_buffer(name: &str) -> bool {
    let last = name.rsplit('.').next().unwrap_or(name);
    BUFFER_SUFFIXES.contains(&last)
}

/// Buffers that may be absent from a weight file (PyTorch adds them, we need not).
fn is_optional(name: &str) -> bool {
    name.ends_with("num_batches_tracked")
}

struct Inner {
    vars: Mutex<BTreeMap<String, Var>>,
    rng: Mutex<ChaCha8Rng>,
}

/// A named collection of variables shared by a network and its optimiser.
///
/// Cloning is cheap and shares the variables.
#[derive(Clone)]
pub struct ParamStore {
    inner: Arc<Inner>,
}

/// What [`ParamStore::load_tensors`] did besides loading.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Entries in the file that the model does not use.
    pub unused: Vec<String>,
    /// Optional buffers the file lacked (kept at their current value).
    pub defaulted: Vec<String>,
}

/// What [`ParamStore::load_matching`] did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MatchReport {
    /// Variables set from the file.
    pub loaded: usize,
    /// Variables kept as initialised because the file's shape differs:
    /// (name, the model's shape, the file's shape).
    pub reinitialised: Vec<(String, Vec<usize>, Vec<usize>)>,
    /// Variables the file lacks (kept as initialised).
    pub missing: Vec<String>,
    /// Entries of the file the model does not use.
    pub unused: Vec<String>,
}

impl ParamStore {
    /// An empty store whose random initialisation is determined by `seed`
    /// (and by the order in which the network asks for its tensors).
    pub fn new(seed: u64) -> Self {
        Self {
            inner: Arc::new(Inner {
                vars: Mutex::new(BTreeMap::new()),
                rng: Mutex::new(ChaCha8Rng::seed_from_u64(seed)),
            }),
        }
    }

    fn vars_lock(&self) -> MutexGuard<'_, BTreeMap<String, Var>> {
        self.inner.vars.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A `VarBuilder` that creates (or finds) variables in this store.
    pub fn var_builder(&self, dtype: DType, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(self.clone()), dtype, device.clone())
    }

    /// All variables, sorted by name.
    pub fn vars(&self) -> Vec<(String, Var)> {
        self.vars_lock()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// The trainable variables (everything but BatchNorm buffers), sorted by name.
    pub fn trainable(&self) -> Vec<(String, Var)> {
        self.vars()
            .into_iter()
            .filter(|(k, _)| !is_buffer(k))
            .collect()
    }

    /// The variable of that name, if any.
    pub fn get(&self, name: &str) -> Option<Var> {
        self.vars_lock().get(name).cloned()
    }

    /// Number of trainable scalars.
    pub fn num_trainable(&self) -> usize {
        self.trainable().iter().map(|(_, v)| v.elem_count()).sum()
    }

    /// Number of trainable scalars whose name starts with `prefix.`.
    pub fn num_trainable_under(&self, prefix: &str) -> usize {
        let p = format!("{prefix}.");
        self.trainable()
            .iter()
            .filter(|(k, _)| k.starts_with(&p))
            .map(|(_, v)| v.elem_count())
            .sum()
    }

    /// Every tensor (parameters and buffers) under its name.
    pub fn tensors(&self) -> BTreeMap<String, Tensor> {
        self.vars_lock()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
            .collect()
    }

    /// Sets every variable from `tensors` (PyTorch names). Every parameter and
    /// running statistic must be present with the right shape; entries the
    /// model does not use are reported, not refused. `source` names the file
    /// in errors.
    pub fn load_tensors(
        &self,
        tensors: &HashMap<String, Tensor>,
        source: &Path,
    ) -> Result<LoadReport> {
        let vars = self.vars_lock();
        let mut report = LoadReport::default();
        // Check everything first so that a failed load changes nothing.
        for (name, var) in vars.iter() {
            match tensors.get(name) {
                None if is_optional(name) => report.defaulted.push(name.clone()),
                None => {
                    return Err(Error::MissingTensor {
                        path: source.to_path_buf(),
                        name: name.clone(),
                        expected: var.dims().to_vec(),
                    })
                }
                Some(t) if t.dims() != var.dims() => {
                    return Err(Error::ShapeMismatch {
                        path: source.to_path_buf(),
                        name: name.clone(),
                        expected: var.dims().to_vec(),
                        found: t.dims().to_vec(),
                    })
                }
                Some(_) => {}
            }
        }
        for (name, var) in vars.iter() {
            if let Some(t) = tensors.get(name) {
                let t = t.to_dtype(var.dtype())?.to_device(var.device())?;
                var.set(&t)?;
            }
        }
        report.unused = tensors
            .keys()
            .filter(|k| !vars.contains_key(*k))
            .cloned()
            .collect();
        report.unused.sort();
        Ok(report)
    }

    /// Fine-tuning: sets every variable that `tensors` holds with the same
    /// shape, and keeps the others as initialised — those whose shape
    /// differs (a new class count, another input channel count) and those
    /// the file lacks — reporting each.
    pub fn load_matching(&self, tensors: &HashMap<String, Tensor>) -> Result<MatchReport> {
        let vars = self.vars_lock();
        let mut report = MatchReport::default();
        for (name, var) in vars.iter() {
            match tensors.get(name) {
                None => report.missing.push(name.clone()),
                Some(t) if t.dims() != var.dims() => report.reinitialised.push((
                    name.clone(),
                    var.dims().to_vec(),
                    t.dims().to_vec(),
                )),
                Some(t) => {
                    var.set(&t.to_dtype(var.dtype())?.to_device(var.device())?)?;
                    report.loaded += 1;
                }
            }
        }
        report.unused = tensors
            .keys()
            .filter(|k| !vars.contains_key(*k))
            .cloned()
            .collect();
        report.unused.sort();
        report.missing.sort();
        report.reinitialised.sort();
        Ok(report)
    }

    /// Loads a safetensors file written by seg or by PyTorch's `save_file`.
    pub fn load_safetensors(&self, path: &Path) -> Result<LoadReport> {
        let (tensors, _) = read_safetensors(path)?;
        self.load_tensors(&tensors, path)
    }

    /// Writes every parameter and buffer to a safetensors file (atomically:
    /// a temporary file in the same folder, then a rename), with `metadata`
    /// in the header.
    pub fn save_safetensors(&self, path: &Path, metadata: &HashMap<String, String>) -> Result<()> {
        let tensors: Vec<(String, Tensor)> = self
            .tensors()
            .into_iter()
            .map(|(k, t)| Ok((k, t.to_device(&Device::Cpu)?.contiguous()?)))
            .collect::<Result<_>>()?;
        write_safetensors(path, &tensors, metadata)
    }

    fn init_tensor(&self, shape: &Shape, init: Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        let n = shape.elem_count();
        let values: Vec<f32> = {
            let mut rng = self.inner.rng.lock().unwrap_or_else(|e| e.into_inner());
            match init {
                Init::Const(c) => vec![c as f32; n],
                Init::Uniform { lo, up } => {
                    (0..n).map(|_| rng.random_range(lo..up) as f32).collect()
                }
                Init::Randn { mean, stdev } => (0..n)
                    .map(|_| (mean + stdev * standard_normal(&mut rng)) as f32)
                    .collect(),
                Init::Kaiming {
                    dist,
                    fan,
                    non_linearity,
                } => {
                    let fan = fan.for_shape(shape) as f64;
                    let std = non_linearity.gain() / fan.sqrt();
                    match dist {
                        candle_nn::init::NormalOrUniform::Uniform => {
                            let bound = 3f64.sqrt() * std;
                            (0..n)
                                .map(|_| rng.random_range(-bound..bound) as f32)
                                .collect()
                        }
                        candle_nn::init::NormalOrUniform::Normal => (0..n)
                            .map(|_| (std * standard_normal(&mut rng)) as f32)
                            .collect(),
                    }
                }
            }
        };
        Ok(Tensor::from_vec(values, shape.clone(), &Device::Cpu)?
            .to_dtype(dtype)?
            .to_device(dev)?)
    }
}

fn standard_normal(rng: &mut ChaCha8Rng) -> f64 {
    // Box-Muller: two uniforms in (0, 1] and [0, 1).
    let u1: f64 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

impl candle_nn::var_builder::SimpleBackend for ParamStore {
    fn get(
        &self,
        s: Shape,
        name: &str,
        h: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        if let Some(v) = self.vars_lock().get(name) {
            if v.shape() != &s {
                candle_core::bail!(
                    "tensor {name:?} requested with shape {:?} but exists with shape {:?}",
                    s.dims(),
                    v.dims()
                );
            }
            return Ok(v.as_tensor().clone());
        }
        let t = if dtype.is_float() {
            self.init_tensor(&s, h, dtype, dev)
                .map_err(|e| candle_core::Error::Msg(e.to_string()))?
        } else {
            // Integer buffers (num_batches_tracked) start at their constant.
            let c = match h {
                Init::Const(c) => c,
                _ => 0.0,
            };
            (Tensor::ones(s.clone(), DType::F64, dev)? * c)?.to_dtype(dtype)?
        };
        let var = Var::from_tensor(&t)?;
        let out = var.as_tensor().clone();
        self.vars_lock().insert(name.to_string(), var);
        Ok(out)
    }

    fn get_unchecked(
        &self,
        name: &str,
        _dtype: DType,
        _dev: &Device,
    ) -> candle_core::Result<Tensor> {
        self.vars_lock()
            .get(name)
            .map(|v| v.as_tensor().clone())
            .ok_or_else(|| candle_core::Error::Msg(format!("no tensor named {name:?}")))
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.vars_lock().contains_key(name)
    }
}

/// Reads every tensor of a safetensors file onto the CPU, with the header's
/// metadata (empty when there is none).
pub fn read_safetensors(path: &Path) -> Result<(HashMap<String, Tensor>, HashMap<String, String>)> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let bad = |reason: String| Error::Safetensors {
        path: path.to_path_buf(),
        reason,
    };
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| bad(e.to_string()))?;
    let (_, meta) =
        safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| bad(e.to_string()))?;
    let metadata = meta.metadata().clone().unwrap_or_default();
    let mut tensors = HashMap::new();
    for (name, view) in st.tensors() {
        let t = candle_core::safetensors::Load::load(&view, &Device::Cpu)
            .map_err(|e| bad(format!("tensor {name:?}: {e}")))?;
        tensors.insert(name, t);
    }
    Ok((tensors, metadata))
}

/// Writes tensors to a safetensors file atomically (temporary file + rename).
pub fn write_safetensors(
    path: &Path,
    tensors: &[(String, Tensor)],
    metadata: &HashMap<String, String>,
) -> Result<()> {
    let meta = if metadata.is_empty() {
        None
    } else {
        Some(metadata.clone())
    };
    let data: Vec<(&str, &Tensor)> = tensors.iter().map(|(k, t)| (k.as_str(), t)).collect();
    let bytes = safetensors::serialize(data, meta).map_err(|e| Error::Safetensors {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    crate::fsutil::atomic_write(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(store: &ParamStore) {
        let vb = store.var_builder(DType::F32, &Device::Cpu);
        let _ = vb
            .pp("a")
            .get_with_hints((2, 3), "weight", Init::Uniform { lo: -1., up: 1. })
            .unwrap();
        let _ = vb
            .pp("bn")
            .get_with_hints(3, "running_mean", Init::Const(0.))
            .unwrap();
        let _ = vb
            .pp("bn")
            .get_with_hints_dtype((), "num_batches_tracked", Init::Const(0.), DType::I64)
            .unwrap();
    }

    #[test]
    fn same_seed_same_values_and_buffers_are_not_trainable() {
        let (a, b) = (ParamStore::new(7), ParamStore::new(7));
        build(&a);
        build(&b);
        let ta = a.tensors()["a.weight"]
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let tb = b.tensors()["a.weight"]
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(ta, tb);
        let c = ParamStore::new(8);
        build(&c);
        assert_ne!(
            ta,
            c.tensors()["a.weight"]
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        );
        let names: Vec<_> = a.trainable().into_iter().map(|(k, _)| k).collect();
        assert_eq!(names, vec!["a.weight".to_string()]);
        assert_eq!(a.vars().len(), 3);
    }

    #[test]
    fn save_load_round_trip_and_errors() {
        let dir = std::env::temp_dir().join(format!("seg-core-params-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("w.safetensors");
        let a = ParamStore::new(1);
        build(&a);
        let meta = HashMap::from([("k".to_string(), "v".to_string())]);
        a.save_safetensors(&path, &meta).unwrap();
        let (t, m) = read_safetensors(&path).unwrap();
        assert_eq!(m["k"], "v");
        assert_eq!(t["bn.num_batches_tracked"].dtype(), DType::I64);
        let b = ParamStore::new(2);
        build(&b);
        let report = b.load_safetensors(&path).unwrap();
        assert!(report.unused.is_empty());
        assert_eq!(
            a.tensors()["a.weight"]
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap(),
            b.tensors()["a.weight"]
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        );
        // missing tensor
        let mut partial = t.clone();
        partial.remove("a.weight");
        let err = b.load_tensors(&partial, &path).unwrap_err();
        assert!(
            matches!(&err, Error::MissingTensor { name, .. } if name == "a.weight"),
            "{err}"
        );
        // wrong shape names both shapes
        let mut wrong = t.clone();
        wrong.insert(
            "a.weight".into(),
            Tensor::zeros((3, 2), DType::F32, &Device::Cpu).unwrap(),
        );
        let msg = b.load_tensors(&wrong, &path).unwrap_err().to_string();
        assert!(
            msg.contains("a.weight") && msg.contains("[3, 2]") && msg.contains("[2, 3]"),
            "{msg}"
        );
        // optional buffer missing, extra entry reported
        let mut extra = t.clone();
        extra.remove("bn.num_batches_tracked");
        extra.insert(
            "other".into(),
            Tensor::zeros(1, DType::F32, &Device::Cpu).unwrap(),
        );
        let report = b.load_tensors(&extra, &path).unwrap();
        assert_eq!(report.unused, vec!["other".to_string()]);
        assert_eq!(report.defaulted, vec!["bn.num_batches_tracked".to_string()]);
        // not a safetensors file
        std::fs::write(dir.join("junk.safetensors"), b"not a file").unwrap();
        let err = read_safetensors(&dir.join("junk.safetensors")).unwrap_err();
        assert!(matches!(err, Error::Safetensors { .. }), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
