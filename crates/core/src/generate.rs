//! The generation loop: chunked prefill, then one token per step until a
//! stop condition, streaming text as soon as its UTF-8 is complete.

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
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            max_tokens: 128,
            sampler: SamplerParams::default(),
            stop: Vec::new(),
            ignore_eos: false,
            use_graphs: true,
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
}

impl StopReason {
    pub fn name(self) -> &'static str {
        match self {
            StopReason::Eos => "eos",
            StopReason::StopString => "stop",
            StopReason::MaxTokens => "length",
            StopReason::ContextFull => "context_full",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Generation {
    pub text: String,
    /// Generated token ids (the stop token excluded).
    pub ids: Vec<u32>,
    pub prompt_tokens: usize,
    /// Host wall time from the first prefill op to the first sampled token.
    pub prefill_time: Duration,
    /// Host wall time of the decode steps after the first token.
    pub decode_time: Duration,
    /// Decode steps run (tokens produced after the first).
    pub decode_steps: usize,
    pub stop_reason: StopReason,
}

impl Generation {
    pub fn prefill_tok_s(&self) -> f64 {
        self.prompt_tokens as f64 / self.prefill_time.as_secs_f64().max(1e-9)
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

/// Generate from `prompt` (already tokenised), calling `on_text` with each
/// piece of new text as soon as it is complete.
pub fn generate<B: Backend>(
    ex: &mut Exec<'_, B>,
    model: &Model<B>,
    st: &mut State<B>,
    tokenizer: &Tokenizer,
    prompt: &[u32],
    opts: &GenerateOptions,
    on_text: &mut dyn FnMut(&str),
) -> Result<Generation> {
    let b = ex.backend;
    let vocab = model.config.vocab;
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

    let t0 = Instant::now();
    prefill(ex, model, st, prompt)?;
    let last_rows = prompt.len() - (prompt.len() - 1) / st.max_batch * st.max_batch;
    ex.op(OpKind::Sample, b.name(), None, |b| {
        b.sample(&st.logits, 0, vocab, &mut sampler, &mut st.ids)
    })?;
    ex.backend.advance(&mut st.pos, last_rows)?;
    let mut id = [0i32; 1];
    b.read_i32(&st.ids, 0, &mut id)?;
    let prefill_time = t0.elapsed();

    let t1 = Instant::now();
    let mut steps = 0usize;
    let graphs = opts.use_graphs && !ex.is_recording() && !ex.is_autotuning();
    let reason = loop {
        let tok = id[0] as u32;
        if stops.contains(&tok) {
            break StopReason::Eos;
        }
        out_ids.push(tok);
        let td = Instant::now();
        let piece = detok.push(tok);
        let r = matcher.push(piece);
        ex.host_op(OpKind::Detokenize, td);
        if !r.emit.is_empty() {
            on_text(&r.emit);
            text.push_str(&r.emit);
        }
        if r.stopped {
            break StopReason::StopString;
        }
        if out_ids.len() >= opts.max_tokens {
            break StopReason::MaxTokens;
        }
        if st.n_past + 1 > st.capacity {
            break StopReason::ContextFull;
        }
        let start = st.n_past;
        ex.begin_step(Phase::Decode, 1)?;
        let mut step = || -> Result<()> {
            model.forward(ex, st, 1, start, false)?;
            ex.op(OpKind::Sample, b.name(), None, |b| {
                b.sample(&st.logits, 0, vocab, &mut sampler, &mut st.ids)
            })?;
            ex.backend.advance(&mut st.pos, 1)
        };
        if graphs {
            b.replayable(DECODE_GRAPH_KEY, &mut step)?;
        } else {
            step()?;
        }
        b.read_i32(&st.ids, 0, &mut id)?;
        ex.end_step()?;
        st.n_past += 1;
        steps += 1;
    };
    let decode_time = t1.elapsed();
    if reason != StopReason::StopString {
        let tail = detok.finish();
        let r = matcher.push(&tail);
        let mut rest = r.emit;
        if !r.stopped {
            rest.push_str(&matcher.finish());
        }
        if !rest.is_empty() {
            on_text(&rest);
            text.push_str(&rest);
        }
    }
    Ok(Generation {
        text,
        ids: out_ids,
        prompt_tokens: prompt.len(),
        prefill_time,
        decode_time,
        decode_steps: steps,
        stop_reason: reason,
    })
}
