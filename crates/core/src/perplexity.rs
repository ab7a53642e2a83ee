//! Perplexity and KL divergence, scored as llama.cpp's `llama-perplexity` does.
//!
//! The text's tokens (with a BOS first when the vocabulary adds one) are cut
//! into consecutive, non-overlapping chunks of `n_ctx` tokens; a tail shorter
//! than a chunk is dropped. Each chunk is evaluated from an empty KV cache, its
//! first token replaced by BOS when the vocabulary adds one. Only the second
//! half is scored: with `first = n_ctx / 2`, the logits at positions
//! `first ..= n_ctx - 2` are scored against the tokens at `first + 1 ..= n_ctx - 1`,
//! `n_ctx - 1 - first` predictions per chunk (255 for `n_ctx` 512), so every
//! scored prediction sees at least `first` tokens of context.
//!
//! Perplexity is `exp(mean NLL)` with uncertainty `ppl * sqrt(var(NLL) / (N - 1))`
//! (llama.cpp's formula). KL divergence is that of the reference (base)
//! distribution from this model's, `sum_i p_base(i) * (ln p_base(i) - ln p(i))`,
//! over the whole vocabulary; unlike llama.cpp (which stores log-probabilities
//! as 16-bit steps and drops base probabilities below e^-16) both sides here
//! are exact float32 log-probabilities, so a model against itself gives 0.

use serde::Serialize;

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::eval::{advance, argmax, logits_rows};
use crate::exec::Exec;
use crate::model::{Model, State};

/// How a token stream is cut into scored chunks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chunking {
    /// Tokens per chunk (`-c`).
    pub n_ctx: usize,
    /// Chunks evaluated.
    pub n_chunks: usize,
}

impl Chunking {
    /// The smallest chunk that scores anything (first = 1, one prediction).
    pub const MIN_CTX: usize = 3;

    /// Chunks of `n_ctx` over `n_tokens`, at most `max_chunks` of them.
    pub fn new(n_tokens: usize, n_ctx: usize, max_chunks: Option<usize>) -> Result<Chunking> {
        if n_ctx < Self::MIN_CTX {
            return Err(Error::InvalidArgument(format!(
                "a context of {n_ctx} tokens scores nothing; use at least {}",
                Self::MIN_CTX
            )));
        }
        if max_chunks == Some(0) {
            return Err(Error::InvalidArgument(
                "--chunks 0 evaluates nothing; give at least 1".into(),
            ));
        }
        let available = n_tokens / n_ctx;
        if available == 0 {
            return Err(Error::InvalidArgument(format!(
                "the text is {n_tokens} tokens, shorter than one chunk of {n_ctx}; \
                 give a longer text or a smaller context (-c)"
            )));
        }
        let n_chunks = max_chunks.map_or(available, |m| m.min(available));
        Ok(Chunking { n_ctx, n_chunks })
    }

    /// First scored logit position of a chunk.
    pub fn first(&self) -> usize {
        self.n_ctx / 2
    }

    /// Predictions scored per chunk.
    pub fn scored_per_chunk(&self) -> usize {
        self.n_ctx - 1 - self.first()
    }

    /// Predictions scored in all.
    pub fn scored(&self) -> usize {
        self.n_chunks * self.scored_per_chunk()
    }

    /// The tokens evaluated for chunk `i`: its slice of `tokens`, the first
    /// replaced by `bos` when given (as llama-perplexity does).
    pub fn chunk(&self, tokens: &[u32], i: usize, bos: Option<u32>) -> Vec<u32> {
        let mut c = tokens[i * self.n_ctx..(i + 1) * self.n_ctx].to_vec();
        if let Some(b) = bos {
            c[0] = b;
        }
        c
    }

    /// The ids whose prediction is scored in chunk `chunk` (that is, the
    /// targets of its scored positions, in order).
    pub fn targets<'t>(&self, chunk: &'t [u32]) -> &'t [u32] {
        &chunk[self.first() + 1..]
    }

    /// A digest of every token evaluated (BOS substitution included) and the
    /// chunking: saved log-probabilities are only comparable on equal digests.
    pub fn tokens_digest(&self, tokens: &[u32], bos: Option<u32>) -> u64 {
        let mut h = crate::hash::Fnv64::new();
        h.write_u64(self.n_ctx as u64);
        h.write_u64(self.n_chunks as u64);
        for i in 0..self.n_chunks {
            for t in self.chunk(tokens, i, bos) {
                h.write_u32(t);
            }
        }
        h.finish()
    }
}

/// Evaluate one chunk from an empty cache in steps of at most `st.max_batch`
/// tokens and return the logits of its scored positions
/// (`scored_per_chunk * vocab`, row-major). Steps that hold no scored position
/// compute no logits beyond their last row and read none back.
pub fn chunk_logits<B: Backend>(
    ex: &mut Exec<'_, B>,
    model: &Model<B>,
    st: &mut State<B>,
    chunking: &Chunking,
    chunk: &[u32],
) -> Result<Vec<f32>> {
    let n_ctx = chunking.n_ctx;
    if chunk.len() != n_ctx {
        return Err(Error::InvalidArgument(format!(
            "a chunk of {} tokens, expected {n_ctx}",
            chunk.len()
        )));
    }
    let vocab = model.config.vocab;
    let first = chunking.first();
    let last = n_ctx - 1; // exclusive: the last position predicts past the chunk
    let batch = st.max_batch.min(st.logits_rows);
    let want = chunking
        .scored_per_chunk()
        .checked_mul(vocab)
        .ok_or_else(|| Error::InvalidArgument("chunk logits size overflows".into()))?;
    let mut out: Vec<f32> = Vec::new();
    out.try_reserve_exact(want).map_err(|_| {
        Error::InvalidArgument(format!(
            "cannot allocate {} MiB for a chunk's logits; use a smaller context (-c)",
            (want * 4) >> 20
        ))
    })?;
    st.reset();
    let mut s = 0;
    while s < n_ctx {
        let e = (s + batch).min(n_ctx);
        if e <= first {
            advance(ex, model, st, &chunk[s..e])?;
        } else {
            let rows = logits_rows(ex, model, st, &chunk[s..e])?;
            let lo = first.max(s);
            let hi = last.min(e);
            if lo < hi {
                out.extend_from_slice(&rows[(lo - s) * vocab..(hi - s) * vocab]);
            }
        }
        s = e;
    }
    debug_assert_eq!(out.len(), want);
    Ok(out)
}

/// `ln(sum_i exp(row_i))`, accumulated in f64 after subtracting the maximum.
pub fn log_sum_exp(row: &[f32]) -> f64 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = row.iter().map(|&v| (v as f64 - max).exp()).sum();
    max + sum.ln()
}

/// Log-probabilities of a row of logits, rounded to f32 (the stored form:
/// the same rounding on both sides makes a model against itself exactly 0).
pub fn log_probs_into(row: &[f32], out: &mut [f32]) {
    let lse = log_sum_exp(row);
    for (o, &v) in out.iter_mut().zip(row) {
        *o = (v as f64 - lse) as f32;
    }
}

/// Running sums of negative log-likelihoods.
#[derive(Clone, Copy, Debug, Default)]
pub struct NllSums {
    pub sum: f64,
    pub sum2: f64,
    pub count: usize,
}

impl NllSums {
    pub fn add(&mut self, nll: f64) {
        self.sum += nll;
        self.sum2 += nll * nll;
        self.count += 1;
    }

    pub fn merge(&mut self, o: &NllSums) {
        self.sum += o.sum;
        self.sum2 += o.sum2;
        self.count += o.count;
    }

    /// Mean NLL and its standard error (llama.cpp: `sqrt(var / (N - 1))`,
    /// 0 with fewer than two samples).
    pub fn mean_and_error(&self) -> (f64, f64) {
        mean_and_error(self.sum, self.sum2, self.count)
    }

    pub fn perplexity(&self) -> Perplexity {
        let (mean, err) = self.mean_and_error();
        let ppl = mean.exp();
        Perplexity {
            ppl,
            ppl_error: ppl * err,
            mean_nll: mean,
            count: self.count,
        }
    }
}

fn mean_and_error(sum: f64, sum2: f64, count: usize) -> (f64, f64) {
    if count == 0 {
        return (f64::NAN, f64::NAN);
    }
    let n = count as f64;
    let mean = sum / n;
    let var = sum2 / n - mean * mean;
    let err = if var > 0.0 && count > 1 {
        (var / (n - 1.0)).sqrt()
    } else {
        0.0
    };
    (mean, err)
}

/// Perplexity with its uncertainty.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Perplexity {
    pub ppl: f64,
    pub ppl_error: f64,
    pub mean_nll: f64,
    pub count: usize,
}

/// Negative log-likelihood of `target` under a row of logits.
pub fn nll(row: &[f32], target: u32) -> f64 {
    log_sum_exp(row) - row[target as usize] as f64
}

/// Accumulated comparison of a model's distributions with a base's.
#[derive(Clone, Debug, Default)]
pub struct KldSums {
    pub nll: NllSums,
    pub nll_base: NllSums,
    pub sum_kld: f64,
    pub sum_kld2: f64,
    pub sum_dp: f64,
    pub sum_dp2: f64,
    pub sum_dp4: f64,
    pub same_top: usize,
    /// Every position's KLD, for percentiles.
    pub klds: Vec<f32>,
}

impl KldSums {
    /// Compare one position: `row` this model's logits, `base` the base's
    /// log-probabilities (f32, as saved), `target` the next token.
    /// `scratch` (vocab long) receives this model's log-probabilities.
    pub fn add(&mut self, row: &[f32], base: &[f32], target: u32, scratch: &mut [f32]) {
        log_probs_into(row, scratch);
        let t = target as usize;
        let nll = -(scratch[t] as f64);
        let nll_base = -(base[t] as f64);
        self.nll.add(nll);
        self.nll_base.add(nll_base);
        let mut kld = 0.0f64;
        for (&b, &q) in base.iter().zip(scratch.iter()) {
            if b > f32::NEG_INFINITY {
                let b = b as f64;
                kld += b.exp() * (b - q as f64);
            }
        }
        self.sum_kld += kld;
        self.sum_kld2 += kld * kld;
        self.klds.push(kld as f32);
        // Both argmaxes on the rounded log-probabilities, so that equal
        // distributions agree even where rounding ties two logits.
        if argmax(scratch) == argmax(base) {
            self.same_top += 1;
        }
        let dp = (-nll).exp() - (-nll_base).exp();
        self.sum_dp += dp;
        self.sum_dp2 += dp * dp;
        self.sum_dp4 += dp * dp * dp * dp;
    }

    pub fn merge(&mut self, o: &KldSums) {
        self.nll.merge(&o.nll);
        self.nll_base.merge(&o.nll_base);
        self.sum_kld += o.sum_kld;
        self.sum_kld2 += o.sum_kld2;
        self.sum_dp += o.sum_dp;
        self.sum_dp2 += o.sum_dp2;
        self.sum_dp4 += o.sum_dp4;
        self.same_top += o.same_top;
        self.klds.extend_from_slice(&o.klds);
    }

    pub fn count(&self) -> usize {
        self.nll.count
    }

    /// The figures llama-perplexity prints for `--kl-divergence`.
    pub fn summary(&self) -> KldSummary {
        let n = self.count();
        let (kld, kld_err) = mean_and_error(self.sum_kld, self.sum_kld2, n);
        let mut sorted = self.klds.clone();
        sorted.sort_by(f32::total_cmp);
        let (ms, ms_err) = mean_and_error(self.sum_dp2, self.sum_dp4, n);
        let rms = ms.sqrt();
        let rms_err = if rms > 0.0 { 0.5 / rms * ms_err } else { 0.0 };
        let top = self.same_top as f64 / n.max(1) as f64;
        let top_err = if n > 1 {
            (top * (1.0 - top) / (n as f64 - 1.0)).sqrt()
        } else {
            0.0
        };
        KldSummary {
            count: n,
            ppl: self.nll.perplexity(),
            ppl_base: self.nll_base.perplexity(),
            mean_kld: kld,
            mean_kld_error: kld_err,
            kld_p99: percentile(&sorted, 0.99),
            kld_p999: percentile(&sorted, 0.999),
            kld_max: sorted.last().map_or(f64::NAN, |&v| v as f64),
            same_top_pct: 100.0 * top,
            same_top_pct_error: 100.0 * top_err,
            rms_dp_pct: 100.0 * rms,
            rms_dp_pct_error: 100.0 * rms_err,
        }
    }
}

/// KL divergence figures of a set of positions.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct KldSummary {
    pub count: usize,
    /// This model's perplexity on the scored tokens.
    pub ppl: Perplexity,
    /// The base's perplexity on the same tokens (from the saved log-probabilities).
    pub ppl_base: Perplexity,
    pub mean_kld: f64,
    pub mean_kld_error: f64,
    pub kld_p99: f64,
    pub kld_p999: f64,
    pub kld_max: f64,
    /// Positions whose most likely token is the base's, in percent.
    pub same_top_pct: f64,
    pub same_top_pct_error: f64,
    /// Root mean square of p(target) - p_base(target), in percent.
    pub rms_dp_pct: f64,
    pub rms_dp_pct_error: f64,
}

/// Percentile of ascending `sorted` by linear interpolation between ranks, as
/// llama-perplexity computes its KLD percentiles (NaN when empty).
pub fn percentile(sorted: &[f32], fraction: f64) -> f64 {
    let Some(&last) = sorted.last() else {
        return f64::NAN;
    };
    if fraction <= 0.0 {
        return sorted[0] as f64;
    }
    if fraction >= 1.0 {
        return last as f64;
    }
    let p = fraction * (sorted.len() - 1) as f64;
    let i = p as usize;
    let f = p - i as f64;
    let hi = sorted[(i + 1).min(sorted.len() - 1)] as f64;
    (1.0 - f) * sorted[i] as f64 + f * hi
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunking_scores_the_second_half_of_each_whole_chunk() {
        let c = Chunking::new(1300, 512, None).unwrap();
        assert_eq!((c.n_chunks, c.first(), c.scored_per_chunk()), (2, 256, 255));
        assert_eq!(Chunking::new(1300, 512, Some(1)).unwrap().n_chunks, 1);
        let toks: Vec<u32> = (0..20).collect();
        let c = Chunking::new(20, 6, None).unwrap();
        assert_eq!(c.n_chunks, 3);
        let ch = c.chunk(&toks, 1, Some(99));
        assert_eq!(ch, vec![99, 7, 8, 9, 10, 11]);
        // first = 3: logits at positions 3 and 4 predict tokens 4 and 5 of the chunk.
        assert_eq!(c.targets(&ch), &[10, 11]);
    }

    #[test]
    fn chunking_rejects_short_texts_and_useless_sizes() {
        let e = Chunking::new(100, 512, None).unwrap_err().to_string();
        assert!(e.contains("shorter than one chunk"), "{e}");
        assert!(Chunking::new(100, 2, None).is_err());
        assert!(Chunking::new(100, 10, Some(0)).is_err());
    }

    #[test]
    fn perplexity_of_known_likelihoods() {
        let mut s = NllSums::default();
        for v in [1.0, 2.0, 3.0] {
            s.add(v);
        }
        let p = s.perplexity();
        assert!((p.ppl - 2f64.exp()).abs() < 1e-12);
        // var = 2/3, error of the mean sqrt(var / 2) = sqrt(1/3).
        assert!((p.ppl_error - 2f64.exp() * (1.0f64 / 3.0).sqrt()).abs() < 1e-12);
    }

    #[test]
    fn kld_of_a_distribution_against_itself_is_zero_and_positive_against_another() {
        let row = [1.0f32, 2.0, 0.5, -3.0];
        let other = [1.5f32, 1.0, 0.5, -3.0];
        let mut base = [0.0f32; 4];
        log_probs_into(&row, &mut base);
        let mut scratch = [0.0f32; 4];
        let mut same = KldSums::default();
        same.add(&row, &base, 1, &mut scratch);
        let s = same.summary();
        assert_eq!(s.mean_kld, 0.0);
        assert_eq!(s.same_top_pct, 100.0);
        assert_eq!(s.rms_dp_pct, 0.0);
        let mut diff = KldSums::default();
        diff.add(&other, &base, 1, &mut scratch);
        let d = diff.summary();
        // Direct: sum p (ln p - ln q).
        let lp = |r: &[f32]| {
            let l = log_sum_exp(r);
            r.iter().map(|&v| v as f64 - l).collect::<Vec<_>>()
        };
        let (p, q) = (lp(&row), lp(&other));
        let want: f64 = p.iter().zip(&q).map(|(a, b)| a.exp() * (a - b)).sum();
        assert!((d.mean_kld - want).abs() < 1e-6, "{} vs {want}", d.mean_kld);
        assert_eq!(d.same_top_pct, 0.0);
    }

    #[test]
    fn percentiles_interpolate_like_llama_perplexity() {
        let v = [0.0f32, 1.0, 2.0, 3.0, 4.0];
        assert_eq!(percentile(&v, 0.5), 2.0);
        assert!((percentile(&v, 0.99) - 3.96).abs() < 1e-6);
        assert_eq!(percentile(&v, 1.0), 4.0);
        assert!(percentile(&[], 0.5).is_nan());
    }
}
