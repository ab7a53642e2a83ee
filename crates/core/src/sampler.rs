//! CPU reference sampler: picks the next token from f32 logits.
//!
//! The chain follows llama.cpp's common sampler (`common/sampling.cpp`), in its default
//! order: repetition penalties, top-k, top-p, min-p, temperature, then a draw from the
//! softmax of what is left. As in llama.cpp, top-p and min-p look at the probabilities
//! *before* temperature, and temperature <= 0 means greedy (argmax after penalties).
//!
//! Determinism: the random stream is xoshiro256** seeded through splitmix64, so a seed
//! gives the same draws on every platform; ties in the logits are broken by the lower
//! token id wherever an order is needed.
//!
//! Cost per token: one linear pass over the vocabulary plus a partial selection
//! (`select_nth_unstable`) and a sort of the few candidates that survive top-k/min-p; no
//! full sort of the vocabulary unless top-p alone has to look at most of it. No
//! allocation per call: scratch buffers live in the [`Sampler`].

use std::cmp::Ordering;

/// Sampling settings. Plain `Copy` data so a GPU backend can take the same struct to a
/// device-side sampler.
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C)]
pub struct SamplerParams {
    /// Softmax temperature; `<= 0` samples greedily (argmax after penalties).
    pub temperature: f32,
    /// Keep the `top_k` most likely tokens; 0 turns it off.
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability reaches `top_p`;
    /// `>= 1` turns it off.
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` times the most likely one; `<= 0` turns it off.
    pub min_p: f32,
    /// llama.cpp-style repetition penalty on tokens seen in the last `repeat_last_n`
    /// accepted tokens: positive logits are divided by it, negative ones multiplied;
    /// 1 turns it off.
    pub repeat_penalty: f32,
    /// How many recently accepted tokens the penalties look at; 0 turns all penalties
    /// off. (llama.cpp's -1, "whole context", is a large value here.)
    pub repeat_last_n: usize,
    /// Subtracted once from the logit of every token seen in the window (OpenAI-style).
    pub presence_penalty: f32,
    /// Subtracted from a token's logit once per occurrence in the window.
    pub frequency_penalty: f32,
    /// Seed of the random stream.
    pub seed: u64,
}

impl Default for SamplerParams {
    /// llama.cpp's `common_params_sampling` defaults: temperature 0.8, top-k 40,
    /// top-p 0.95, min-p 0.05, penalties off with a 64-token window. llama.cpp's default
    /// seed (0xFFFFFFFF) means "random"; here it is an ordinary fixed seed, so runs are
    /// reproducible unless the caller picks a seed.
    fn default() -> Self {
        SamplerParams {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: 0xFFFF_FFFF,
        }
    }
}

impl SamplerParams {
    /// Argmax decoding, no penalties.
    pub fn greedy() -> Self {
        SamplerParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repeat_penalty: 1.0,
            repeat_last_n: 0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: 0,
        }
    }

    /// Whether this samples greedily: temperature `<= 0`, or so small (subnormal) that
    /// `1 / temperature` overflows to infinity, where the softmax is an argmax anyway (and
    /// computing it would give NaN weights).
    pub fn is_greedy(&self) -> bool {
        self.temperature <= 0.0 || !(1.0 / self.temperature).is_finite()
    }

    fn penalties_active(&self) -> bool {
        self.repeat_last_n > 0
            && (self.repeat_penalty != 1.0
                || self.presence_penalty != 0.0
                || self.frequency_penalty != 0.0)
    }

    fn validate(&self) -> Result<(), SamplerError> {
        let finite = [
            ("temperature", self.temperature),
            ("top_p", self.top_p),
            ("min_p", self.min_p),
            ("repeat_penalty", self.repeat_penalty),
            ("presence_penalty", self.presence_penalty),
            ("frequency_penalty", self.frequency_penalty),
        ];
        for (name, v) in finite {
            if !v.is_finite() {
                return Err(SamplerError::InvalidParams(name));
            }
        }
        if self.repeat_penalty <= 0.0 {
            return Err(SamplerError::InvalidParams("repeat_penalty"));
        }
        Ok(())
    }
}

/// Why no token could be sampled.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SamplerError {
    /// A parameter is NaN/infinite, or the repeat penalty is not positive.
    #[error("invalid sampler parameter `{0}`")]
    InvalidParams(&'static str),
    /// The logits slice was empty.
    #[error("no logits to sample from")]
    EmptyLogits,
    /// Every logit is NaN or -inf (after penalties), so no token has any probability.
    #[error(
        "no token has a finite logit: every logit is NaN or -inf after the penalties \
         (the model produced non-finite values, e.g. from corrupt or overflowing weights, \
         or the penalties excluded every token)"
    )]
    NoFiniteLogits,
}

/// A token id with its current score.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    id: u32,
    logit: f32,
}

/// Higher logit first, then lower id: a total order, so selections are reproducible.
fn by_logit_desc(a: &Candidate, b: &Candidate) -> Ordering {
    b.logit
        .partial_cmp(&a.logit)
        .unwrap_or(Ordering::Equal)
        .then(a.id.cmp(&b.id))
}

use crate::rng::Xoshiro256 as Rng;

/// Without top-k, top-p looks at the best `TOP_P_FIRST_CAP` candidates first and widens
/// the window (doubling) only if their probability does not reach `top_p`.
const TOP_P_FIRST_CAP: usize = 256;

/// Up to this k, top-k keeps a sorted buffer while scanning (cheap for small k); above
/// it, all candidates are collected and partially selected.
const SMALL_TOP_K: usize = 128;

/// Without top-k, top-p first looks only at tokens within this many nats of the best
/// (probability ratio e^-16 ~ 1e-7); almost always they hold the top-p mass.
const TOP_P_PREFILTER: f32 = 16.0;

/// Most history slots reserved up front (see [`Sampler::new`]).
const HISTORY_RESERVE: usize = 4096;

/// Samples tokens with [`SamplerParams`], remembering accepted tokens for the penalties.
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplerParams,
    rng: Rng,
    /// Last `repeat_last_n` accepted tokens, oldest first from `history_start`.
    history: Vec<u32>,
    history_start: usize,
    /// Occurrences of each token id in `history`.
    counts: Vec<u32>,
    /// Per-token marker so each distinct token in the window is penalized once per call.
    seen: Vec<u32>,
    epoch: u32,
    candidates: Vec<Candidate>,
}

impl Sampler {
    /// A sampler for a vocabulary of `n_vocab` tokens (scratch space is sized for it).
    pub fn new(params: SamplerParams, n_vocab: usize) -> Result<Self, SamplerError> {
        params.validate()?;
        let penalized = params.penalties_active();
        Ok(Sampler {
            params,
            rng: Rng::new(params.seed),
            // The window fills one accepted token at a time, so it never holds more than the
            // context; reserving `repeat_last_n` up front would let a huge value (the CLI
            // accepts any count) abort the process.
            history: Vec::with_capacity(if penalized {
                params.repeat_last_n.min(HISTORY_RESERVE)
            } else {
                0
            }),
            history_start: 0,
            counts: vec![0; if penalized { n_vocab } else { 0 }],
            seen: vec![0; if penalized { n_vocab } else { 0 }],
            epoch: 0,
            candidates: Vec::with_capacity(n_vocab),
        })
    }

    pub fn params(&self) -> &SamplerParams {
        &self.params
    }

    /// Forgets the penalty history and restarts the random stream from the seed.
    pub fn reset(&mut self) {
        self.history.clear();
        self.history_start = 0;
        self.counts.iter_mut().for_each(|c| *c = 0);
        self.rng = Rng::new(self.params.seed);
    }

    /// Records a token (prompt or generated) for the repetition penalties. Ids outside
    /// the vocabulary given to [`Sampler::new`] are ignored.
    pub fn accept(&mut self, token: u32) {
        if !self.params.penalties_active() || token as usize >= self.counts.len() {
            return;
        }
        if self.history.len() < self.params.repeat_last_n {
            self.history.push(token);
        } else {
            let old = std::mem::replace(&mut self.history[self.history_start], token);
            self.counts[old as usize] -= 1;
            self.history_start = (self.history_start + 1) % self.history.len();
        }
        self.counts[token as usize] += 1;
    }

    /// Applies the repetition, frequency and presence penalties to `logits` in place,
    /// llama.cpp's way: for every distinct token t seen c times in the window,
    /// `l = l <= 0 ? l * repeat : l / repeat`, then `l -= c * frequency + presence`.
    pub fn apply_penalties(&mut self, logits: &mut [f32]) {
        if !self.params.penalties_active() || self.history.is_empty() {
            return;
        }
        self.epoch = self.epoch.wrapping_add(1);
        if self.epoch == 0 {
            // The markers wrapped around: clear them so stale marks cannot match.
            self.seen.iter_mut().for_each(|s| *s = 0);
            self.epoch = 1;
        }
        let p = self.params;
        for &t in &self.history {
            let t = t as usize;
            if self.seen[t] == self.epoch || t >= logits.len() {
                continue;
            }
            self.seen[t] = self.epoch;
            let count = self.counts[t] as f32;
            let l = &mut logits[t];
            if *l <= 0.0 {
                *l *= p.repeat_penalty;
            } else {
                *l /= p.repeat_penalty;
            }
            *l -= count * p.frequency_penalty + p.presence_penalty;
        }
    }

    /// Picks the next token. `logits` is modified in place (penalties); NaN logits count
    /// as -inf. Call [`Sampler::accept`] with the result to include it in the penalties.
    /// The greedy token of `logits` where no penalty applies (greedy
    /// parameters, no active penalty): what [`Sampler::sample`] would pick,
    /// without the copy of the logits it needs to apply penalties in place
    /// (a 151,936-token vocabulary is 600 KB a step). `None` otherwise.
    pub fn sample_unpenalized(&self, logits: &[f32]) -> Option<Result<u32, SamplerError>> {
        let plain =
            self.params.is_greedy() && (!self.params.penalties_active() || self.history.is_empty());
        plain.then(|| {
            if logits.is_empty() {
                Err(SamplerError::EmptyLogits)
            } else {
                argmax(logits)
            }
        })
    }

    pub fn sample(&mut self, logits: &mut [f32]) -> Result<u32, SamplerError> {
        if logits.is_empty() {
            return Err(SamplerError::EmptyLogits);
        }
        self.apply_penalties(logits);
        if self.params.is_greedy() {
            return argmax(logits);
        }
        let temperature = self.filter(logits)?;
        Ok(self.draw(temperature))
    }

    /// Runs top-k, top-p and min-p, leaving the surviving tokens in `candidates`; returns
    /// the temperature to draw with.
    fn filter(&mut self, logits: &[f32]) -> Result<f32, SamplerError> {
        let p = self.params;
        // `f32::max` ignores NaN, so NaN logits never set the maximum.
        let max = logits.iter().fold(f32::NEG_INFINITY, |m, &l| m.max(l));
        if max == f32::NEG_INFINITY {
            return Err(SamplerError::NoFiniteLogits);
        }
        self.candidates.clear();
        if max == f32::INFINITY {
            // A +inf logit is certainty: only the +inf tokens stay, equally likely.
            self.collect_where(logits, |l| l == f32::INFINITY);
            self.candidates.iter_mut().for_each(|c| c.logit = 0.0);
            return Ok(1.0);
        }

        // top-k leaves the k best sorted; without it, only tokens that can survive min-p
        // (and, for top-p, a prefilter) are collected.
        let top_k_on = p.top_k > 0 && p.top_k < logits.len();
        let min_p_threshold = if p.min_p > 0.0 {
            // min_p >= 1 keeps only the most likely token(s), never nothing.
            max + p.min_p.min(1.0).ln()
        } else {
            f32::NEG_INFINITY
        };
        let top_p_on = p.top_p < 1.0;
        // top-p normalizes over the post-top-k set; min-p keeps logits >= max + ln(min_p).
        // Both keep a prefix of the descending order, so the result is the shorter prefix:
        // min-p is applied first as a plain filter to shrink what has to be sorted, with
        // the top-p normalizer taken before that filter, so results are unchanged.
        let z;
        if top_k_on {
            if p.top_k <= SMALL_TOP_K {
                self.collect_top_k_small(logits, p.top_k);
            } else {
                self.collect_where(logits, |l| l > f32::NEG_INFINITY);
                self.candidates
                    .select_nth_unstable_by(p.top_k - 1, by_logit_desc);
                self.candidates.truncate(p.top_k);
                self.candidates.sort_unstable_by(by_logit_desc);
            }
            z = if top_p_on {
                softmax_normalizer(self.candidates.iter().map(|c| c.logit), max)
            } else {
                1.0
            };
            if p.min_p > 0.0 {
                self.candidates.retain(|c| c.logit >= min_p_threshold);
            }
        } else if top_p_on {
            z = softmax_normalizer(logits.iter().copied(), max);
            // Collect only tokens within TOP_P_PREFILTER nats of the best if those already
            // hold the top-p mass (the top-p prefix then lies inside them); else all that
            // pass min-p.
            let prefilter = max - TOP_P_PREFILTER;
            if prefilter > min_p_threshold {
                self.collect_where(logits, |l| l >= prefilter);
                let mass = softmax_normalizer(self.candidates.iter().map(|c| c.logit), max) / z;
                if mass < p.top_p as f64 {
                    self.candidates.clear();
                }
            }
            if self.candidates.is_empty() {
                self.collect_where(logits, |l| l >= min_p_threshold && l > f32::NEG_INFINITY);
            }
        } else {
            z = 1.0;
            self.collect_where(logits, |l| l >= min_p_threshold && l > f32::NEG_INFINITY);
        }
        if top_p_on {
            let keep = if top_k_on {
                top_p_prefix(&self.candidates, max, z, p.top_p)
            } else {
                self.top_p_unsorted(max, z, p.top_p)
            };
            self.candidates.truncate(keep);
        }
        Ok(p.temperature)
    }

    /// Collects the tokens whose logit passes `keep`, in id order.
    fn collect_where(&mut self, logits: &[f32], keep: impl Fn(f32) -> bool) {
        for (id, &logit) in logits.iter().enumerate() {
            if keep(logit) {
                self.candidates.push(Candidate {
                    id: id as u32,
                    logit,
                });
            }
        }
    }

    /// The `k` best tokens, sorted, in one pass: a token enters the sorted buffer only if
    /// it beats the current k-th best, which after the first few hundred tokens is rare.
    /// Scanning ids upward and requiring a strictly greater logit makes lower ids win ties.
    fn collect_top_k_small(&mut self, logits: &[f32], k: usize) {
        let mut floor = f32::NEG_INFINITY;
        for (id, &logit) in logits.iter().enumerate() {
            // False for NaN and -inf (floor starts at -inf).
            if logit > floor {
                let c = Candidate {
                    id: id as u32,
                    logit,
                };
                let at = self.candidates.partition_point(|x| x.logit >= logit);
                if self.candidates.len() == k {
                    self.candidates.pop();
                }
                self.candidates.insert(at, c);
                if self.candidates.len() == k {
                    floor = self.candidates[k - 1].logit;
                }
            }
        }
    }

    /// top-p over candidates that are not sorted yet: select and sort a window of the
    /// best ones, widening it until the probability mass reaches `top_p`; returns how
    /// many of the (now sorted) leading candidates to keep.
    fn top_p_unsorted(&mut self, max: f32, z: f64, top_p: f32) -> usize {
        let n = self.candidates.len();
        let mut cap = TOP_P_FIRST_CAP.min(n);
        loop {
            if cap < n {
                self.candidates
                    .select_nth_unstable_by(cap - 1, by_logit_desc);
            }
            self.candidates[..cap].sort_unstable_by(by_logit_desc);
            let keep = top_p_prefix(&self.candidates[..cap], max, z, top_p);
            if keep < cap || cap == n {
                return keep;
            }
            cap = (cap * 2).min(n);
        }
    }

    /// Softmax of `logit / temperature` over the candidates and one draw from it.
    fn draw(&mut self, temperature: f32) -> u32 {
        let inv_t = 1.0 / temperature;
        let max = self
            .candidates
            .iter()
            .fold(f32::NEG_INFINITY, |m, c| m.max(c.logit));
        let mut total = 0.0f64;
        for c in &mut self.candidates {
            let w = ((c.logit - max) * inv_t).exp();
            c.logit = w;
            total += w as f64;
        }
        let target = self.rng.next_f64() * total;
        let mut acc = 0.0f64;
        for c in &self.candidates {
            acc += c.logit as f64;
            if acc > target {
                return c.id;
            }
        }
        // Rounding left `target` at the very top: the last candidate with any weight owns
        // that sliver (the most likely one has weight 1, so there is one).
        self.candidates
            .iter()
            .rev()
            .find(|c| c.logit > 0.0)
            .map_or(self.candidates[0].id, |c| c.id)
    }
}

/// Sum of exp(l - max) over finite logits (NaN and -inf contribute nothing), accumulated
/// in f64 so that a vocabulary of small terms does not lose precision.
fn softmax_normalizer(logits: impl Iterator<Item = f32>, max: f32) -> f64 {
    logits
        .filter(|l| *l > f32::NEG_INFINITY)
        .map(|l| (l - max).exp() as f64)
        .sum()
}

/// Length of the shortest prefix of `sorted` whose probability (normalizer `z`, relative
/// to `max`) reaches `top_p`, keeping at least one token (llama.cpp's `min_keep = 1`).
fn top_p_prefix(sorted: &[Candidate], max: f32, z: f64, top_p: f32) -> usize {
    let mut cum = 0.0f64;
    for (i, c) in sorted.iter().enumerate() {
        cum += (c.logit - max).exp() as f64 / z;
        if cum >= top_p as f64 {
            return i + 1;
        }
    }
    sorted.len()
}

/// Index of the largest logit, the lowest id on ties; NaN counts as -inf.
fn argmax(logits: &[f32]) -> Result<u32, SamplerError> {
    // Two simple passes vectorize better than one pass tracking the index;
    // each in lanes of `LANES` independent values, as one running maximum
    // (a chain of dependent `max`es, NaN checks included) or an early-exit
    // scan does not vectorize: a vocabulary of 151,936 logits took ~0.1 ms a
    // token, about 1% of a Qwen2.5-0.5B decode step on two cores. The
    // maximum of a set does not depend on the order it is taken in.
    const LANES: usize = 16;
    let chunks = logits.chunks_exact(LANES);
    let tail = chunks.remainder();
    let mut lanes = [f32::NEG_INFINITY; LANES];
    for c in chunks {
        for (m, &l) in lanes.iter_mut().zip(c) {
            *m = m.max(l);
        }
    }
    let max = lanes
        .iter()
        .chain(tail)
        .fold(f32::NEG_INFINITY, |m, &l| m.max(l));
    if max == f32::NEG_INFINITY {
        return Err(SamplerError::NoFiniteLogits);
    }
    let first = logits
        .chunks(LANES)
        .position(|c| c.iter().fold(false, |hit, &l| hit | (l == max)))
        .ok_or(SamplerError::NoFiniteLogits)?;
    logits[first * LANES..]
        .iter()
        .position(|&l| l == max)
        .map(|i| (first * LANES + i) as u32)
        .ok_or(SamplerError::NoFiniteLogits)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(temperature: f32, top_k: usize, top_p: f32, min_p: f32, seed: u64) -> SamplerParams {
        SamplerParams {
            temperature,
            top_k,
            top_p,
            min_p,
            seed,
            ..SamplerParams::greedy()
        }
    }

    /// Deterministic pseudo-random logits in [-8, 8).
    fn logits(n: usize, salt: u64) -> Vec<f32> {
        let mut rng = Rng::new(salt);
        (0..n)
            .map(|_| (rng.next_f64() * 16.0 - 8.0) as f32)
            .collect()
    }

    fn run(params: SamplerParams, base: &[f32], steps: usize) -> Vec<u32> {
        let mut s = Sampler::new(params, base.len()).unwrap();
        (0..steps)
            .map(|_| {
                let mut l = base.to_vec();
                let t = s.sample(&mut l).unwrap();
                s.accept(t);
                t
            })
            .collect()
    }

    /// Without penalties a greedy sampler's pick needs no copy of the
    /// logits and is `sample`'s; with a penalty in force, or a temperature,
    /// `sample_unpenalized` declines.
    #[test]
    fn unpenalized_greedy_pick_is_samples_pick_and_declines_otherwise() {
        let base = logits(1000, 11);
        let mut s = Sampler::new(SamplerParams::greedy(), 1000).unwrap();
        let want = s.sample(&mut base.clone()).unwrap();
        assert_eq!(s.sample_unpenalized(&base).unwrap().unwrap(), want);
        assert!(matches!(
            s.sample_unpenalized(&[]),
            Some(Err(SamplerError::EmptyLogits))
        ));
        let penalized = SamplerParams {
            repeat_penalty: 2.0,
            repeat_last_n: 8,
            ..SamplerParams::greedy()
        };
        let mut s = Sampler::new(penalized, 1000).unwrap();
        // No history yet: nothing to penalize.
        assert_eq!(s.sample_unpenalized(&base).unwrap().unwrap(), want);
        s.accept(want);
        assert!(s.sample_unpenalized(&base).is_none());
        assert_ne!(s.sample(&mut base.clone()).unwrap(), want);
        let s = Sampler::new(params(0.8, 0, 1.0, 0.0, 1), 1000).unwrap();
        assert!(s.sample_unpenalized(&base).is_none());
    }

    /// The lane-wise argmax picks what a plain scan picks (the first of the
    /// largest non-NaN logits) at every length around its lane width, with
    /// ties, NaNs and infinities anywhere.
    #[test]
    fn argmax_is_the_first_largest_at_every_length() {
        let mut r = Rng::new(9);
        for len in 1..70 {
            for round in 0..40 {
                let v: Vec<f32> = (0..len)
                    .map(|_| match (r.next_f64() * 10.0) as u32 {
                        0 => f32::NAN,
                        1 if round % 2 == 0 => f32::NEG_INFINITY,
                        2 if round % 5 == 0 => f32::INFINITY,
                        // Few distinct values: many ties.
                        _ => ((r.next_f64() * 4.0) as i32) as f32,
                    })
                    .collect();
                let max = v.iter().fold(f32::NEG_INFINITY, |m, &l| m.max(l));
                let want = v.iter().position(|&l| l == max && max > f32::NEG_INFINITY);
                assert_eq!(argmax(&v).ok(), want.map(|i| i as u32), "{v:?}");
            }
        }
    }

    #[test]
    fn greedy_is_argmax_with_lowest_id_on_ties() {
        let mut s = Sampler::new(SamplerParams::greedy(), 5).unwrap();
        assert_eq!(s.sample(&mut [0.1, 3.0, -1.0, 3.0, 2.9]).unwrap(), 1);
        assert_eq!(
            s.sample(&mut [f32::NAN, -2.0, f32::NAN, -1.0, -5.0])
                .unwrap(),
            3
        );
        let base = logits(1000, 7);
        let want = base
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .unwrap()
            .0 as u32;
        let mut s = Sampler::new(SamplerParams::greedy(), 1000).unwrap();
        assert_eq!(s.sample(&mut base.clone()).unwrap(), want);
    }

    #[test]
    fn same_seed_same_sequence_different_seed_different() {
        let base = logits(5000, 1);
        let p = params(1.0, 0, 1.0, 0.0, 42);
        let a = run(p, &base, 200);
        assert_eq!(a, run(p, &base, 200));
        let b = run(SamplerParams { seed: 43, ..p }, &base, 200);
        assert_ne!(a, b);
        // The stream must be the same on every platform: pin its first outputs.
        let mut rng = Rng::new(0);
        assert_eq!(rng.next_u64(), 0x99EC_5F36_CB75_F2B4);
        assert_eq!(rng.next_u64(), 0xBF6E_1F78_4956_452A);
    }

    #[test]
    fn top_k_one_equals_greedy() {
        let base = logits(151_936, 3);
        let greedy = run(SamplerParams::greedy(), &base, 1)[0];
        for seed in 0..20 {
            assert_eq!(run(params(1.5, 1, 1.0, 0.0, seed), &base, 1)[0], greedy);
        }
    }

    #[test]
    fn tiny_top_p_collapses_to_argmax() {
        let base = logits(151_936, 4);
        let greedy = run(SamplerParams::greedy(), &base, 1)[0];
        for seed in 0..20 {
            // Without top-k (the widening-window path) and with it (the sorted path).
            assert_eq!(run(params(2.0, 0, 1e-6, 0.0, seed), &base, 1)[0], greedy);
            assert_eq!(run(params(2.0, 100, 1e-6, 0.0, seed), &base, 1)[0], greedy);
        }
    }

    #[test]
    fn min_p_removes_unlikely_tokens() {
        // Probabilities relative to the best: 1, e^-1 ~ 0.37, e^-3 ~ 0.05, e^-10.
        let base = [5.0, 4.0, 2.0, -5.0];
        let p = params(1.0, 0, 1.0, 0.1, 9);
        let drawn = run(p, &base, 2000);
        assert!(
            drawn.iter().all(|&t| t <= 1),
            "min_p 0.1 keeps only tokens 0 and 1"
        );
        assert!(drawn.contains(&0) && drawn.contains(&1));
    }

    #[test]
    fn top_p_keeps_the_smallest_prefix_reaching_p() {
        // softmax([3, 2, 1, 0]) = [0.644, 0.237, 0.087, 0.032]: p = 0.85 needs two tokens,
        // p = 0.9 needs three.
        let base = [1.0, 3.0, 0.0, 2.0];
        let two = run(params(1.0, 0, 0.85, 0.0, 5), &base, 3000);
        assert!(two.iter().all(|&t| t == 1 || t == 3));
        assert!(two.contains(&1) && two.contains(&3));
        let three = run(params(1.0, 0, 0.9, 0.0, 5), &base, 3000);
        assert!(three.iter().all(|&t| t != 2));
        assert!(three.contains(&0));
    }

    #[test]
    fn top_p_window_widens_beyond_the_first_cap() {
        // Flat logits: top-p 0.9 over 1000 equal tokens must keep 900 of them, more than
        // the first selection window holds.
        let base = vec![0.0f32; 1000];
        let drawn = run(params(1.0, 0, 0.9, 0.0, 11), &base, 5_000);
        let max = *drawn.iter().max().unwrap();
        assert!(max < 900, "ties keep the lowest ids");
        assert!(max >= 850, "window widened to all 900 (max id {max})");
    }

    /// Chi-square goodness of fit of 200k draws against softmax(logits / T). With 7
    /// degrees of freedom the 0.1% critical value is 24.32; the seed is fixed, so the
    /// test is stable, and a wrong temperature or draw shifts the statistic into the
    /// thousands.
    #[test]
    fn draws_follow_softmax_with_temperature() {
        let base = [1.0f32, 0.5, 0.0, -0.5, 2.0, 1.5, -1.0, 0.25];
        let t = 0.7f32;
        let p = params(t, 0, 1.0, 0.0, 1234);
        let n = 200_000;
        let mut counts = [0usize; 8];
        for tok in run(p, &base, n) {
            counts[tok as usize] += 1;
        }
        let w: Vec<f64> = base.iter().map(|&l| ((l / t) as f64).exp()).collect();
        let z: f64 = w.iter().sum();
        let chi2: f64 = counts
            .iter()
            .zip(&w)
            .map(|(&c, &wi)| {
                let e = n as f64 * wi / z;
                (c as f64 - e).powi(2) / e
            })
            .sum();
        assert!(chi2 < 24.32, "chi-square {chi2}, counts {counts:?}");
    }

    /// The same fit after top-k: draws over the 3 best tokens follow their renormalized
    /// softmax(logits / T). 2 degrees of freedom, 0.1% critical value 13.82.
    #[test]
    fn top_k_draws_follow_renormalized_softmax() {
        let base = [0.3f32, 2.0, -1.0, 1.2, 1.9, -0.2];
        let t = 1.3f32;
        let n = 100_000;
        let mut counts = [0usize; 6];
        for tok in run(params(t, 3, 1.0, 0.0, 77), &base, n) {
            counts[tok as usize] += 1;
        }
        let kept = [1usize, 4, 3];
        assert_eq!(
            counts.iter().sum::<usize>(),
            kept.iter().map(|&i| counts[i]).sum::<usize>()
        );
        let w: Vec<f64> = kept.iter().map(|&i| ((base[i] / t) as f64).exp()).collect();
        let z: f64 = w.iter().sum();
        let chi2: f64 = kept
            .iter()
            .zip(&w)
            .map(|(&i, &wi)| {
                let e = n as f64 * wi / z;
                (counts[i] as f64 - e).powi(2) / e
            })
            .sum();
        assert!(chi2 < 13.82, "chi-square {chi2}, counts {counts:?}");
    }

    /// The filters applied the slow, obvious way (llama.cpp's order on a fully sorted
    /// list, probabilities in f64), to check the fast paths against.
    fn reference_kept(logits: &[f32], p: &SamplerParams) -> Vec<u32> {
        let mut c: Vec<Candidate> = logits
            .iter()
            .enumerate()
            .filter(|(_, l)| **l > f32::NEG_INFINITY)
            .map(|(i, &l)| Candidate {
                id: i as u32,
                logit: l,
            })
            .collect();
        c.sort_by(by_logit_desc);
        if p.top_k > 0 {
            c.truncate(p.top_k);
        }
        let max = c[0].logit as f64;
        if p.top_p < 1.0 {
            let z: f64 = c.iter().map(|x| (x.logit as f64 - max).exp()).sum();
            let mut cum = 0.0;
            let mut keep = c.len();
            for (i, x) in c.iter().enumerate() {
                cum += (x.logit as f64 - max).exp() / z;
                if cum >= p.top_p as f64 {
                    keep = i + 1;
                    break;
                }
            }
            c.truncate(keep);
        }
        if p.min_p > 0.0 {
            let threshold = max + (p.min_p.min(1.0) as f64).ln();
            c.retain(|x| x.logit as f64 >= threshold);
        }
        let mut ids: Vec<u32> = c.iter().map(|x| x.id).collect();
        ids.sort_unstable();
        ids
    }

    fn kept(s: &mut Sampler, logits: &[f32]) -> Vec<u32> {
        s.filter(logits).unwrap();
        let mut ids: Vec<u32> = s.candidates.iter().map(|c| c.id).collect();
        ids.sort_unstable();
        ids
    }

    #[test]
    fn fast_filters_keep_what_the_reference_keeps() {
        let mut rng = Rng::new(2024);
        let settings = [
            (0, 0.9, 0.0),
            (0, 0.5, 0.05),
            (0, 1.0, 0.1),
            (40, 0.95, 0.05),
            (40, 1.0, 0.0),
            (5, 0.3, 0.0),
            (300, 0.8, 0.0),
            (300, 0.99, 0.01),
            (1, 0.5, 0.5),
            (0, 0.999, 0.0),
        ];
        for round in 0..40 {
            let n = [10, 1000, 20_000][round % 3];
            let scale = [0.5, 3.0, 10.0][(round / 3) % 3];
            let mut logits: Vec<f32> = (0..n)
                .map(|_| (rng.next_f64() * 2.0 - 1.0) as f32 * scale)
                .collect();
            // Some ties, NaNs and -inf too.
            logits[n / 2] = logits[0];
            logits[n / 3] = f32::NAN;
            logits[n / 4] = f32::NEG_INFINITY;
            for &(top_k, top_p, min_p) in &settings {
                let p = SamplerParams {
                    temperature: 1.0,
                    ..params(1.0, top_k, top_p, min_p, 0)
                };
                let mut s = Sampler::new(p, n).unwrap();
                assert_eq!(
                    kept(&mut s, &logits),
                    reference_kept(&logits, &p),
                    "n={n} scale={scale} top_k={top_k} top_p={top_p} min_p={min_p}"
                );
            }
        }
    }

    #[test]
    fn top_p_falls_back_when_the_prefilter_lacks_the_mass() {
        // One token at 0 and 1000 at -17: the tokens within 16 nats of the best hold
        // ~0.99996 of the mass, so top-p 0.99999 must reach into the far tokens.
        let mut logits = vec![-17.0f32; 1001];
        logits[0] = 0.0;
        let p = params(1.0, 0, 0.99999, 0.0, 0);
        let mut s = Sampler::new(p, logits.len()).unwrap();
        let got = kept(&mut s, &logits);
        assert!(got.len() > 1, "kept only {got:?}");
        assert_eq!(got, reference_kept(&logits, &p));
    }

    #[test]
    fn penalties_change_logits_like_llama_cpp() {
        let p = SamplerParams {
            repeat_penalty: 2.0,
            repeat_last_n: 3,
            presence_penalty: 0.5,
            frequency_penalty: 0.25,
            ..SamplerParams::greedy()
        };
        let mut s = Sampler::new(p, 4).unwrap();
        for t in [3, 0, 1, 1] {
            s.accept(t); // the window of 3 drops the first token (3)
        }
        let mut l = [2.0, -1.0, 0.5, 3.0];
        s.apply_penalties(&mut l);
        // token 0: seen once, 2/2 - (0.25 + 0.5); token 1: seen twice, -1*2 - (0.5 + 0.5)
        assert_eq!(l, [0.25, -3.0, 0.5, 3.0]);
        // sample() applies them too before the argmax.
        let mut l = [3.5, -1.0, 0.5, 3.0];
        assert_eq!(s.sample(&mut l).unwrap(), 3);
        assert_eq!(l[0], 1.0);
    }

    #[test]
    fn degenerate_logits_are_errors_not_panics() {
        for p in [SamplerParams::greedy(), SamplerParams::default()] {
            let mut s = Sampler::new(p, 4).unwrap();
            assert_eq!(s.sample(&mut []), Err(SamplerError::EmptyLogits));
            assert_eq!(
                s.sample(&mut [f32::NAN; 4]),
                Err(SamplerError::NoFiniteLogits)
            );
            assert_eq!(
                s.sample(&mut [f32::NEG_INFINITY; 4]),
                Err(SamplerError::NoFiniteLogits)
            );
            let mut inf = [0.0, f32::INFINITY, f32::NAN, 1.0];
            assert_eq!(s.sample(&mut inf), Ok(1));
        }
        assert!(matches!(
            Sampler::new(
                SamplerParams {
                    temperature: f32::NAN,
                    ..SamplerParams::default()
                },
                4
            ),
            Err(SamplerError::InvalidParams("temperature"))
        ));
    }
}
