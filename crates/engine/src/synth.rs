//! Seeded synthetic models: a config and random weights for a Llama-family network of any
//! shape, for benchmarks and tests that need a model of a given size. Same seed, same bytes.

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use serde_json::{json, Value};

use crate::error::Result;

pub use crate::random::Rng;

/// The shape of a synthetic Llama.
#[derive(Debug, Clone, Copy)]
pub struct LlamaShape {
    pub n_layers: usize,
    pub d_model: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub d_mlp: usize,
    pub vocab_size: usize,
    pub max_positions: usize,
}

impl LlamaShape {
    /// A shape with a 2048-token context (see [`LlamaShape::max_positions`] to change it).
    pub fn new(n_layers: usize, d_model: usize, n_heads: usize, n_kv_heads: usize, d_mlp: usize, vocab: usize) -> Self {
        LlamaShape { n_layers, d_model, n_heads, n_kv_heads, d_mlp, vocab_size: vocab, max_positions: 2048 }
    }

    /// Why this shape cannot be built, if it cannot: heads must divide d_model and be a
    /// multiple of the kv heads.
    pub fn check(&self) -> std::result::Result<(), String> {
        let (h, kv) = (self.n_heads, self.n_kv_heads);
        if h == 0 || kv == 0 || !h.is_multiple_of(kv) || !self.d_model.is_multiple_of(h) {
            return Err(format!("{h} heads must divide d_model {} and be a multiple of {kv} kv heads", self.d_model));
        }
        Ok(())
    }

    pub fn config_json(&self) -> Value {
        json!({
            "architectures": ["LlamaForSequenceClassification"],
            "model_type": "llama",
            "hidden_size": self.d_model,
            "num_hidden_layers": self.n_layers,
            "num_attention_heads": self.n_heads,
            "num_key_value_heads": self.n_kv_heads,
            "head_dim": self.d_model / self.n_heads,
            "intermediate_size": self.d_mlp,
            "max_position_embeddings": self.max_positions,
            "vocab_size": self.vocab_size,
            "rms_norm_eps": 1e-5,
            "rope_parameters": {"rope_theta": 500000.0, "rope_type": "default"},
            "hidden_act": "silu",
            "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2,
            "num_labels": 1,
            "torch_dtype": "float32"
        })
    }

    /// Every tensor with its shape, in transformers' names.
    pub fn tensor_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let (d, hd) = (self.d_model, self.d_model / self.n_heads);
        let mut v = vec![("model.embed_tokens.weight".to_string(), vec![self.vocab_size, d])];
        for l in 0..self.n_layers {
            let p = format!("model.layers.{l}");
            v.push((format!("{p}.input_layernorm.weight"), vec![d]));
            v.push((format!("{p}.self_attn.q_proj.weight"), vec![self.n_heads * hd, d]));
            v.push((format!("{p}.self_attn.k_proj.weight"), vec![self.n_kv_heads * hd, d]));
            v.push((format!("{p}.self_attn.v_proj.weight"), vec![self.n_kv_heads * hd, d]));
            v.push((format!("{p}.self_attn.o_proj.weight"), vec![d, self.n_heads * hd]));
            v.push((format!("{p}.post_attention_layernorm.weight"), vec![d]));
            v.push((format!("{p}.mlp.gate_proj.weight"), vec![self.d_mlp, d]));
            v.push((format!("{p}.mlp.up_proj.weight"), vec![self.d_mlp, d]));
            v.push((format!("{p}.mlp.down_proj.weight"), vec![d, self.d_mlp]));
        }
        v.push(("model.norm.weight".to_string(), vec![d]));
        v.push(("score.weight".to_string(), vec![1, d]));
        v
    }

    /// Seeded weights: norms 1 + N(0, 0.1²), matrices N(0, 0.02²) (transformers' init).
    pub fn random_weights(&self, seed: u64, device: &Device) -> Result<HashMap<String, Tensor>> {
        use rayon::prelude::*;
        // One normal stream over the tensors in order, drawn in parallel chunks that each start
        // where the serial stream would be (an 8B-width model is billions of draws).
        const CHUNK: usize = 1 << 16;
        let mut drawn = 0u64;
        let mut out = HashMap::new();
        for (name, shape) in self.tensor_shapes() {
            let n: usize = shape.iter().product();
            let norm = name.ends_with("norm.weight");
            let mut data = vec![0f32; n];
            data.par_chunks_mut(CHUNK).enumerate().for_each(|(c, xs)| {
                let mut rng = Rng::at(seed, 2 * (drawn + (c * CHUNK) as u64));
                for x in xs {
                    *x = if norm { 1.0 + 0.1 * rng.normal() as f32 } else { 0.02 * rng.normal() as f32 };
                }
            });
            drawn += n as u64;
            out.insert(name, Tensor::from_vec(data, shape, device)?);
        }
        Ok(out)
    }

    /// Multiply-adds × 2 of one forward over `t` tokens per sequence, per sequence.
    pub fn flops_per_sequence(&self, t: usize) -> f64 {
        let (d, hd) = (self.d_model as f64, (self.d_model / self.n_heads) as f64);
        let t = t as f64;
        let proj = d * (self.n_heads as f64 * hd) * 2.0 + d * (self.n_kv_heads as f64 * hd) * 2.0;
        let mlp = 3.0 * d * self.d_mlp as f64;
        let attn = 2.0 * t * self.n_heads as f64 * hd; // q·k and p·v per token, full T×T
        self.n_layers as f64 * t * 2.0 * (proj + mlp + attn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_bytes() {
        let s = LlamaShape {
            n_layers: 1,
            d_model: 8,
            n_heads: 2,
            n_kv_heads: 1,
            d_mlp: 16,
            vocab_size: 10,
            max_positions: 16,
        };
        // The parallel chunks give the serial stream: tensors in order, one normal per element,
        // on a shape whose embedding spans several chunks.
        let wide = LlamaShape { d_model: 64, n_heads: 4, n_kv_heads: 2, d_mlp: 96, vocab_size: 3000, ..s };
        let got = wide.random_weights(5, &Device::Cpu).unwrap();
        let mut rng = Rng::new(5);
        for (name, _) in wide.tensor_shapes() {
            let norm = name.ends_with("norm.weight");
            let have = got[&name].flatten_all().unwrap().to_vec1::<f32>().unwrap();
            for (i, x) in have.iter().enumerate() {
                let want = if norm { 1.0 + 0.1 * rng.normal() as f32 } else { 0.02 * rng.normal() as f32 };
                assert_eq!(x.to_bits(), want.to_bits(), "{name}[{i}]");
            }
        }
        let a = s.random_weights(3, &Device::Cpu).unwrap();
        let b = s.random_weights(3, &Device::Cpu).unwrap();
        let c = s.random_weights(4, &Device::Cpu).unwrap();
        let v = |m: &HashMap<String, Tensor>| {
            m["model.layers.0.mlp.up_proj.weight"].flatten_all().unwrap().to_vec1::<f32>().unwrap()
        };
        assert_eq!(v(&a), v(&b));
        assert!(s.check().is_ok());
        assert!(LlamaShape::new(1, 8, 3, 1, 16, 10).check().is_err());
        assert!(LlamaShape { n_kv_heads: 0, ..s }.check().is_err());
        assert_eq!(LlamaShape::new(1, 8, 2, 1, 16, 10).max_positions, 2048);
        assert_ne!(v(&a), v(&c));
        let mut r = Rng::new(1);
        let xs: Vec<f64> = (0..20000).map(|_| r.normal()).collect();
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / xs.len() as f64;
        assert!(mean.abs() < 0.03 && (var - 1.0).abs() < 0.05, "mean {mean} var {var}");
    }
}
