//! Next-token choice on the CPU from one row of logits: greedy, or temperature with
//! top-k / top-p, from a seeded RNG so runs are reproducible.
//!
//! Decoding samples on the GPU instead ([`crate::ops::sampling`]: the same rules, greedy
//! bit-identical, its own counter-based RNG), so a decode step reads back token ids, not
//! [rows × n_vocab] logits. This sampler is the reference it is tested against, and the
//! decode path with `EDGEREASON_CPU_SAMPLING=1` (see [`cpu_sampling`]), for comparison.

use rand::{Rng, SeedableRng};

/// How to pick tokens.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SamplingParams {
    /// 0 = greedy.
    pub temperature: f32,
    /// Keep the k most likely tokens (0 = all).
    pub top_k: usize,
    /// Keep the smallest set whose probability reaches p (1 = all).
    pub top_p: f32,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: 0,
        }
    }
}

/// Sampling settings no sampler can honour.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SamplingError {
    #[error("temperature {0}: must be a finite number >= 0 (0 = greedy)")]
    Temperature(f32),
    #[error("top_p {0}: must be in (0, 1] (1 = off)")]
    TopP(f32),
}

impl SamplingParams {
    /// Check the settings: temperature finite and ≥ 0, top_p in (0, 1]. (top_k 0 means
    /// off: every token is kept.)
    ///
    /// ```
    /// use edgereason::sampling::SamplingParams;
    /// assert!(SamplingParams { top_p: 0.0, ..Default::default() }.validate().is_err());
    /// assert!(SamplingParams { temperature: 0.7, ..Default::default() }.validate().is_ok());
    /// ```
    pub fn validate(&self) -> Result<(), SamplingError> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(SamplingError::Temperature(self.temperature));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(SamplingError::TopP(self.top_p));
        }
        Ok(())
    }
}

/// A sampler holding its RNG state.
pub struct Sampler {
    pub params: SamplingParams,
    rng: rand::rngs::StdRng,
}

/// Whether decoding samples on the CPU from read-back logits (`EDGEREASON_CPU_SAMPLING=1`)
/// instead of on the GPU. Sampled (T > 0) streams differ between the two (each has its
/// own RNG); greedy ones are identical.
pub fn cpu_sampling() -> bool {
    std::env::var("EDGEREASON_CPU_SAMPLING").is_ok_and(|v| v == "1")
}

/// Index of the largest value (first one on ties, as torch.argmax).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// Natural log of softmax(logits)`[id]`.
pub fn log_prob(logits: &[f32], id: u32) -> f32 {
    let mx = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let z: f64 = logits.iter().map(|&v| ((v - mx) as f64).exp()).sum();
    (logits[id as usize] - mx) - z.ln() as f32
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Self {
        let rng = rand::rngs::StdRng::seed_from_u64(params.seed);
        Self { params, rng }
    }

    /// A token id drawn from `logits` under this sampler's settings.
    ///
    /// # Panics
    /// If `logits` is empty.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        let p = &self.params;
        if p.temperature <= 0.0 {
            return argmax(logits);
        }
        let mut idx: Vec<u32> = (0..logits.len() as u32).collect();
        let k = if p.top_k == 0 {
            logits.len()
        } else {
            p.top_k.min(logits.len())
        };
        if k < logits.len() {
            idx.select_nth_unstable_by(k - 1, |&a, &b| {
                logits[b as usize].total_cmp(&logits[a as usize])
            });
            idx.truncate(k);
        }
        idx.sort_unstable_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]));
        let mx = logits[idx[0] as usize];
        let mut probs: Vec<f32> = idx
            .iter()
            .map(|&i| ((logits[i as usize] - mx) / p.temperature).exp())
            .collect();
        let z: f32 = probs.iter().sum();
        probs.iter_mut().for_each(|v| *v /= z);
        if p.top_p < 1.0 {
            let mut acc = 0.0;
            let keep = probs.iter().position(|&v| {
                acc += v;
                acc >= p.top_p
            });
            let keep = keep.map_or(probs.len(), |i| i + 1);
            probs.truncate(keep);
            idx.truncate(keep);
        }
        let total: f32 = probs.iter().sum();
        let mut r = self.rng.random::<f32>() * total;
        for (i, &pv) in probs.iter().enumerate() {
            if r < pv {
                return idx[i];
            }
            r -= pv;
        }
        // Rounding left r at the total: the last kept token.
        idx.last().copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_argmax() {
        let mut s = Sampler::new(SamplingParams::default());
        assert_eq!(s.sample(&[0.1, 2.0, -1.0, 2.0]), 1);
    }

    #[test]
    fn top_k_one_is_greedy_and_seed_reproduces() {
        let logits: Vec<f32> = (0..100).map(|i| ((i * 37) % 11) as f32 * 0.3).collect();
        let mut s = Sampler::new(SamplingParams {
            temperature: 1.0,
            top_k: 1,
            top_p: 1.0,
            seed: 3,
        });
        assert_eq!(s.sample(&logits), argmax(&logits));
        let p = SamplingParams {
            temperature: 0.9,
            top_k: 20,
            top_p: 0.9,
            seed: 42,
        };
        let a: Vec<u32> = {
            let mut s = Sampler::new(p.clone());
            (0..20).map(|_| s.sample(&logits)).collect()
        };
        let b: Vec<u32> = {
            let mut s = Sampler::new(p);
            (0..20).map(|_| s.sample(&logits)).collect()
        };
        assert_eq!(a, b);
    }

    #[test]
    fn top_p_keeps_only_the_nucleus() {
        // Tokens 3 and 7 hold 0.23 of the mass each, the 48 others 0.011 each: without
        // top_p, 400 draws pick one of the 48 about 220 times. top_p 0.4 needs both (0.23 <
        // 0.4 <= 0.46) and nothing else, so every draw is 3 or 7, and both come up.
        let mut logits = vec![0.0f32; 50];
        logits[3] = 3.0;
        logits[7] = 3.0;
        let draws = |top_p: f32| {
            let mut s = Sampler::new(SamplingParams {
                temperature: 1.0,
                top_k: 0,
                top_p,
                seed: 1,
            });
            (0..400).map(|_| s.sample(&logits)).collect::<Vec<u32>>()
        };
        let nucleus = draws(0.4);
        assert!(nucleus.iter().all(|&t| t == 3 || t == 7), "{nucleus:?}");
        assert!(nucleus.contains(&3) && nucleus.contains(&7));
        let outside = draws(1.0).iter().filter(|&&t| t != 3 && t != 7).count();
        assert!(
            outside > 150,
            "top_p 1 keeps every token: {outside} of 400 outside"
        );
    }

    #[test]
    fn log_prob_normalizes() {
        let l = [1.0f32, 2.0, 3.0];
        let total: f32 = (0..3).map(|i| log_prob(&l, i).exp()).sum();
        assert!((total - 1.0).abs() < 1e-5);
    }
}
