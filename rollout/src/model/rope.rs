//! Rotary position embeddings, computed like transformers: inverse frequencies and angles in
//! f32, rotation by halves (`rotate_half`), cos/sin cast to the model dtype.

use crate::config::{ModelConfig, RopeScaling};
use tch::{Device, Kind, Tensor};

#[derive(Debug)]
pub struct Rope {
    /// [head_dim / 2], f32.
    inv_freq: Tensor,
}

/// Inverse frequencies for `dim` rotary dimensions, before and after scaling.
pub fn inv_freq(theta: f64, dim: i64, scaling: &RopeScaling) -> Vec<f32> {
    // Same operation order as transformers, in f32: 1 / theta^(i/dim).
    let base: Vec<f32> = (0..dim / 2).map(|i| 1.0 / (theta as f32).powf((2 * i) as f32 / dim as f32)).collect();
    match *scaling {
        RopeScaling::Default => base,
        RopeScaling::Linear { factor } => base.iter().map(|f| f / factor as f32).collect(),
        RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings: old } => {
            let (factor, lf, hf, old) = (factor as f32, low_freq_factor as f32, high_freq_factor as f32, old as f32);
            let low_wavelen = old / lf;
            let high_wavelen = old / hf;
            base.iter()
                .map(|&f| {
                    let wavelen = 2.0 * std::f32::consts::PI / f;
                    let scaled = if wavelen > low_wavelen { f / factor } else { f };
                    let medium = !(wavelen < high_wavelen) && !(wavelen > low_wavelen);
                    if medium {
                        let smooth = (old / wavelen - lf) / (hf - lf);
                        (1.0 - smooth) * scaled / factor + smooth * scaled
                    } else {
                        scaled
                    }
                })
                .collect()
        }
    }
}

impl Rope {
    pub fn new(cfg: &ModelConfig, device: Device) -> Self {
        let f = inv_freq(cfg.rope_theta, cfg.head_dim, &cfg.rope_scaling);
        Rope { inv_freq: Tensor::from_slice(&f).to_device(device) }
    }

    /// cos, sin: [B, 1, T, head_dim] in `kind`, for positions [B, T].
    pub fn cos_sin(&self, positions: &Tensor, kind: Kind) -> (Tensor, Tensor) {
        let freqs = positions.to_kind(Kind::Float).unsqueeze(-1) * self.inv_freq.view([1, 1, -1]);
        let emb = Tensor::cat(&[&freqs, &freqs], -1).unsqueeze(1);
        (emb.cos().to_kind(kind), emb.sin().to_kind(kind))
    }
}

/// `x * cos + rotate_half(x) * sin` with x: [B, heads, T, head_dim].
pub fn apply(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
    let half = x.size()[3] / 2;
    let x1 = x.narrow(3, 0, half);
    let x2 = x.narrow(3, half, half);
    let rotated = Tensor::cat(&[&x2.neg(), &x1], 3);
    x * cos + rotated * sin
}
