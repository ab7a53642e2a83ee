//! The generation loop: chunked prefill, then one token per step until a
//! stop condition, streaming text as soon as its UTF-8 is complete.
//!
//! [`generate_with`] is the whole loop: it continues a prompt whose first
//! tokens may already be in the KV cache (a chat's earlier turns), reports
//! progress after every prefill chunk and every token (live views), and stops
//! between steps when asked to (Ctrl-C). [`generate`] is the one-shot form.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::exec::Exec;
use crate::model::{Model, State};
use crate::profiler::{OpKind, Phase};
use crate::sampler::SamplerParams;
use crate::stop::StopMatcher;
use crate::tokenizer::Tokenizer;

#[derive(Clone, Debug)]
pub struct GenerateOptions {
    pub max_tokens: usize,
    pub sampler: SamplerParams,
    /// Text that ends generation; it is not part of the output.
    pub stop: Vec<String>,
    /// Keep going past end-of-sequence tokens.
    pub ignore_eos: bool,
    /// Replay decode steps as a device graph where the backend can.
    pub use_graphs: bool,
    /// Set (by a Ctrl-C handler) to stop after the current step; the result
    /// then has [`StopReason::Interrupted`].
    pub interrupt: Option<Arc<AtomicBool>>,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            max_tokens: 128,
            sampler: SamplerParams::default(),
            stop: Vec::new(),
            ignore_eos: false,
            use_graphs: true,
            interrupt: None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// An end-of-sequence / end-of-turn token.
    Eos,
    /// A user stop string.
    StopString,
    /// `max_tokens` reached.
    MaxTokens,
    /// The context is full.
    ContextFull,
    /// [`GenerateOptions::interrupt`] was set.
    Interrupted,
}

impl StopReason {
    pub fn name(self) -> &'static str {
        match self {
            StopReason::Eos => "eos",
            StopReason::StopString => "stop",
            StopReason::MaxTokens => "length",
            StopReason::ContextFull => "context_full",
            StopReason::Interrupted => "interrupted",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Generation {
    pub text: String,
    /// Generated token ids: the end-of-sequence token excluded, and after a
    /// stop string only the tokens whose text lies wholly before it, so that
    /// `ids` never hold text that `text` dropped.
    pub ids: Vec<u32>,
    /// The whole prompt, including tokens reused from the cache.
    pub prompt_tokens: usize,
    /// Prompt tokens that were already in the KV cache and not run again.
    pub reused_tokens: usize,
    /// Host wall time from the first prefill op to the first sampled token
    /// (the time to first token, once the model is loaded).
    pub prefill_time: Duration,
    /// Host wall time of the decode steps after the first token.
    pub decode_time: Duration,
    /// Decode steps run (tokens produced after the first).
    pub decode_steps: usize,
    pub stop_reason: StopReason,
}

impl Generation {
    /// Prompt tokens run through the model (the prompt less the reused ones).
    pub fn prefilled_tokens(&self) -> usize {
        self.prompt_tokens - self.reused_tokens
    }
    pub fn prefill_tok_s(&self) -> f64 {
        self.prefilled_tokens() as f64 / self.prefill_time.as_secs_f64().max(1e-9)
    }
    pub fn decode_tok_s(&self) -> f64 {
        self.decode_steps as f64 / self.decode_time.as_secs_f64().max(1e-9)
    }
}

/// Key under which decode steps are replayed.
const DECODE_GRAPH_KEY: u64 = 0x6465_636f_6465;

/// Feed `tokens` starting at `st.n_past`, in chunks of the state's batch.
/// Leaves the last row's logits in `st.logits`.
pub fn prefill<B: Backend>(
    ex: &mut Exec<'_, B>,
    model: &Model<B>,
    st: &mut State<B>,
    tokens: &[u32],
) -> Result<()> {
    if tokens.is_empty() {
        return Err(Error::InvalidArgument("empty prompt".into()));
    }
    let needed = st.n_past + tokens.len();
    if needed > st.capacity {
        return Err(Error::ContextFull {
            needed,
            limit: st.capacity,
            model_limit: model.config.context_length,
        });
    }
    for chunk in tokens.chunks(st.max_batch) {
        let start = st.n_past;
        st.stage(ex.backend, chunk, model.config.vocab)?;
        ex.begin_step(Phase::Prefill, chunk.len())?;
        model.forward(ex, st, chunk.len(), start, false)?;
        ex.end_step()?;
        st.n_past += chunk.len();
    }
    Ok(())
}

/// Where a generation stands, reported to [`generate_with`]'s observer after
/// every prefill chunk and every sampled token.
#[derive(Clone, Copy, Debug, Default)]
pub struct Progress {
    /// The whole prompt, cached part included.
    pub prompt_tokens: usize,
    /// Prompt tokens reused from the cache.
    pub reused_tokens: usize,
    /// New prompt tokens run so far.
    pub prefilled: usize,
    /// Time spent prefilling (until the first token once it is sampled).
    pub prefill_time: Duration,
    /// Tokens sampled so far (the first comes out of the prefill).
    pub generated: usize,
    /// Decode steps run and their time.
    pub decode_steps: usize,
    pub decode_time: Duration,
    /// Positions filled in the KV cache, and its size.
    pub n_past: usize,
    pub capacity: usize,
}

impl Progress {
    pub fn prefill_tok_s(&self) -> f64 {
        self.prefilled as f64 / self.prefill_time.as_secs_f64().max(1e-9)
    }
    pub fn decode_tok_s(&self) -> f64 {
        self.decode_steps as f64 / self.decode_time.as_secs_f64().max(1e-9)
    }
}

/// Generate from `prompt` (already tokenised), calling `on_text` with each
/// piece of new text as soon as it is complete. The prompt is fed after
/// whatever the state already holds.
pub fn generate<B: Backend>(
    ex: &mut Exec<'_, B>,
    model: &Model<B>,
    st: &mut State<B>,
    tokenizer: &Tokenizer,
    prompt: &[u32],
    opts: &GenerateOptions,
    on_text: &mut dyn FnMut(&str),
) -> Result<Generation> {
    generate_with(
        ex,
        model,
        st,
        tokenizer,
        prompt,
        0,
        opts,
        &mut |text, _, _| {
            if !text.is_empty() {
                on_text(text)
            }
        },
    )
}

/// Queue one decode step: the token in `st.ids` at position `start` through
/// the model, the next token sampled into `st.ids`, the device's position
/// advanced; replayed as one graph when `graphs`.
fn queue_step<B: Backend>(
    ex: &mut Exec<'_, B>,
    model: &Model<B>,
    st: &mut State<B>,
    sampler: &mut B::Sampler,
    start: usize,
    graphs: bool,
) -> Result<()> {
    let b = ex.backend;
    let vocab = model.config.vocab;
    let mut step = || -> Result<()> {
        model.forward(ex, st, 1, start, false)?;
        ex.op(OpKind::Sample, b.name(), None, |b| {
            b.sample(&st.logits, 0, vocab, sampler, &mut st.ids)
        })?;
        ex.backend.advance(&mut st.pos, 1)
    };
    if graphs {
        b.replayable(DECODE_GRAPH_KEY, &mut step)
    } else {
        step()
    }
}

/// Called with new text (possibly empty), the progress and the executor (for
/// its live recorder) after every prefill chunk and every token.
pub type Observer<'o, 'b, B> = dyn FnMut(&str, &Progress, &Exec<'b, B>) + 'o;

/// The generation loop. `prompt[..reused]` is already in the KV cache, ending
/// at `st.n_past`; the rest is prefilled in chunks of the state's batch. The
/// sampler's penalties see the whole prompt either way, so a continued chat
/// samples exactly as a one-shot run of the same tokens would.
#[allow(clippy::too_many_arguments)]
pub fn generate_with<'b, B: Backend>(
    ex: &mut Exec<'b, B>,
    model: &Model<B>,
    st: &mut State<B>,
    tokenizer: &Tokenizer,
    prompt: &[u32],
    reused: usize,
    opts: &GenerateOptions,
    observer: &mut Observer<'_, 'b, B>,
) -> Result<Generation> {
    if reused >= prompt.len() {
        return Err(Error::InvalidArgument(format!(
            "{reused} of {} prompt tokens reused: at least one must be run to sample from",
            prompt.len()
        )));
    }
    if reused > st.n_past {
        return Err(Error::InvalidArgument(format!(
            "{reused} prompt tokens reused but the cache holds {}",
            st.n_past
        )));
    }
    let b = ex.backend;
    let vocab = model.config.vocab;
    let interrupted = || {
        opts.interrupt
            .as_ref()
            .is_some_and(|f| f.load(Ordering::Relaxed))
    };
    let mut stops: Vec<u32> = Vec::new();
    if !opts.ignore_eos {
        stops.extend(tokenizer.eos_id());
        stops.extend(tokenizer.eot_id());
    }
    let mut sampler = b.new_sampler(&opts.sampler, vocab)?;
    b.sampler_accept(&mut sampler, prompt)?;
    let mut detok = tokenizer.stream_decoder();
    let mut matcher = StopMatcher::new(&opts.stop);
    let mut text = String::new();
    let mut out_ids = Vec::new();
    // Bytes of decoded text after each generated token, to cut `out_ids`
    // where a stop string cut the text.
    let mut text_ends: Vec<usize> = Vec::new();
    let mut decoded = 0usize;
    let new = &prompt[reused..];
    let mut p = Progress {
        prompt_tokens: prompt.len(),
        reused_tokens: reused,
        n_past: st.n_past,
        capacity: st.capacity,
        ..Progress::default()
    };
    let done = |text: String, ids: Vec<u32>, p: &Progress, reason| Generation {
        text,
        ids,
        prompt_tokens: prompt.len(),
        reused_tokens: reused,
        prefill_time: p.prefill_time,
        decode_time: p.decode_time,
        decode_steps: p.decode_steps,
        stop_reason: reason,
    };

    let needed = st.n_past + new.len();
    if needed > st.capacity {
        return Err(Error::ContextFull {
            needed,
            limit: st.capacity,
            model_limit: model.config.context_length,
        });
    }
    let t0 = Instant::now();
    let chunks = new.len().div_ceil(st.max_batch);
    for (i, chunk) in new.chunks(st.max_batch).enumerate() {
        prefill(ex, model, st, chunk)?;
        p.prefilled += chunk.len();
        p.prefill_time = t0.elapsed();
        p.n_past = st.n_past;
        observer("", &p, &*ex);
        if i + 1 < chunks && interrupted() {
            return Ok(done(text, out_ids, &p, StopReason::Interrupted));
        }
    }
    let last_rows = new.len() - (new.len() - 1) / st.max_batch * st.max_batch;
    ex.op(OpKind::Sample, b.name(), None, |b| {
        b.sample(&st.logits, 0, vocab, &mut sampler, &mut st.ids)
    })?;
    ex.backend.advance(&mut st.pos, last_rows)?;
    let mut id = [0i32; 1];
    b.read_i32(&st.ids, 0, &mut id)?;
    p.prefill_time = t0.elapsed();

    let t1 = Instant::now();
    let graphs = opts.use_graphs && !ex.is_recording() && !ex.is_autotuning();
    let mut piece_text = String::new();
    // Whether the step that consumes `id` was already queued ahead.
    let mut queued = false;
    let reason = loop {
        let tok = id[0] as u32;
        p.generated += 1;
        if stops.contains(&tok) {
            break StopReason::Eos;
        }
        out_ids.push(tok);
        let td = Instant::now();
        let piece = detok.push(tok);
        decoded += piece.len();
        text_ends.push(decoded);
        piece_text.clear();
        let stopped = matcher.push_into(piece, &mut piece_text);
        ex.host_op(OpKind::Detokenize, td);
        text.push_str(&piece_text);
        p.decode_time = t1.elapsed();
        observer(&piece_text, &p, &*ex);
        if stopped {
            break StopReason::StopString;
        }
        if out_ids.len() >= opts.max_tokens {
            break StopReason::MaxTokens;
        }
        if st.n_past + 1 > st.capacity {
            break StopReason::ContextFull;
        }
        if interrupted() {
            break StopReason::Interrupted;
        }
        let start = st.n_past;
        ex.begin_step(Phase::Decode, 1)?;
        if !queued {
            queue_step(ex, model, st, &mut sampler, start, graphs)?;
        }
        if graphs {
            // Queue the next step before waiting for this one's token, so the
            // host's work for it (and the detokenising above) overlaps the
            // device's. The token stays on the device and feeds the next
            // embedding. If this token ends the generation, the extra step
            // is thrown away: it wrote the cache at `n_past` and advanced the
            // device's position, and both are rewritten before any later use
            // (`n_past` is not advanced for it; a prefill writes positions).
            let rb = b.read_i32_start(&st.ids, 0, 1)?;
            let ahead = out_ids.len() + 1 < opts.max_tokens && start + 2 <= st.capacity;
            if ahead {
                queue_step(ex, model, st, &mut sampler, start + 1, graphs)?;
            }
            b.read_i32_finish(rb, &mut id)?;
            queued = ahead;
        } else {
            b.read_i32(&st.ids, 0, &mut id)?;
        }
        ex.end_step()?;
        st.n_past += 1;
        p.decode_steps += 1;
        p.n_past = st.n_past;
    };
    p.decode_time = t1.elapsed();
    if reason != StopReason::StopString {
        let tail = detok.finish();
        let mut rest = String::new();
        if !matcher.push_into(&tail, &mut rest) {
            rest.push_str(&matcher.finish());
        }
        if !rest.is_empty() {
            text.push_str(&rest);
            observer(&rest, &p, &*ex);
        }
    }
    if matcher.stopped() {
        // Keep the tokens whose text is all in `text`: the stop string's
        // token (and any after it) are dropped with the text.
        let keep = text_ends.iter().take_while(|&&e| e <= text.len()).count();
        out_ids.truncate(keep);
    }
    Ok(done(text, out_ids, &p, reason))
}
