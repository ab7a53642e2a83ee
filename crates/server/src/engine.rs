//! The scheduler: one thread owns the model, the paged KV cache and every
//! sequence, and runs batched steps for as long as there is work.
//!
//! A step holds one decode row of every running sequence that has a token to
//! feed, then prefill chunks of newly admitted ones, up to `step_tokens` rows
//! (chunked prefill: a long prompt is fed over several steps and never stalls
//! the others' decoding). A sequence is admitted when a slot is free and the
//! pool has blocks for its whole prompt; its leading whole blocks come from
//! the prefix cache when another request already computed them. When a
//! running sequence needs a block and none is left, the most recently
//! admitted other sequence is preempted: its blocks are freed and it goes
//! back to the front of the queue to be recomputed from its tokens (prompt
//! plus what it generated so far), which gives the same KV exactly where the
//! step is batch-invariant (always on the CPU, with `--deterministic` on
//! CUDA; see `metallic::model::BatchState`) and the same up to rounding
//! otherwise.
//!
//! Sampling runs on the backend, each sequence with its own sampler state
//! (`Backend::new_sampler`: penalty history and seeded random stream); the
//! ids of a step come back in one read, so the host never waits on the
//! device once per row. On the CPU backend the sampler is the host one.

use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use metallic::backend::{Backend, DType, PagedLayout};
use metallic::dispatch::{DispatchConfig, MatmulDispatch};
use metallic::exec::Exec;
use metallic::model::{BatchRow, BatchState, Model};
use metallic::sampler::SamplerParams;
use metallic::stop::StopMatcher;
use metallic::tokenizer::Tokenizer;
use metallic_gguf::GgufFile;
use tokio::sync::mpsc::UnboundedSender;

use crate::blocks::{BlockKey, BlockPool};
use crate::metrics::Shared;

/// Graph keys of a step's sampling launches: this plus the row count.
const SAMPLE_GRAPH_KEY_BASE: u64 = 0x5a3d_1e00_0000_0000;

/// A decode step queued before the tokens of the step before it were read.
struct Ahead {
    /// The sequences of its rows, in row order.
    ids: Vec<u64>,
    /// Rows whose sampling failed, with the error.
    failed: Vec<Option<String>>,
}

/// Sizes of the engine, fixed at start.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    pub block_size: usize,
    pub n_blocks: usize,
    /// Most sequences in the running batch.
    pub max_seqs: usize,
    /// Most rows (tokens) in one step.
    pub step_tokens: usize,
    /// Most positions of one sequence (prompt plus generated).
    pub max_context: usize,
    /// Element type of the paged KV cache.
    pub kv_type: DType,
    /// Force the backend's batch-invariant matmul.
    pub deterministic: bool,
    /// Queue the next decode step before reading this one's tokens (see
    /// [`Engine::collect`]): pays on a backend that runs queued work while
    /// the host goes on (CUDA); on one that does not it only adds a wasted
    /// row when a sequence ends.
    pub look_ahead: bool,
    /// Run a throwaway prompt step and decode step before reporting ready
    /// ([`Engine::warm_up`]).
    pub warm_up: bool,
}

/// What a request asks to generate.
#[derive(Clone, Debug)]
pub struct GenParams {
    pub sampler: SamplerParams,
    pub max_tokens: usize,
    pub stop: Vec<String>,
    /// Report log-probabilities with this many alternatives per token.
    pub logprobs: Option<usize>,
}

/// A request handed to the engine.
pub struct Submit {
    pub prompt: Vec<u32>,
    pub params: GenParams,
    pub events: UnboundedSender<Event>,
    pub arrived: Instant,
}

pub enum EngineMsg {
    Submit(Submit),
    /// Finish every sequence now (shutdown grace period is over).
    CancelAll,
}

#[derive(Clone, Debug)]
pub struct TokenLogprob {
    pub id: u32,
    pub logprob: f32,
    /// The most likely tokens at this step with their log-probabilities.
    pub top: Vec<(u32, f32)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    Stop,
    Length,
}

impl FinishReason {
    pub fn name(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub cached_tokens: usize,
}

pub enum Event {
    /// One generated token and the text it releases (maybe empty: a partial
    /// character, or text that may begin a stop string).
    Token {
        text: String,
        logprob: Option<TokenLogprob>,
    },
    /// Text released at the end (held-back characters).
    Text(String),
    Done {
        reason: FinishReason,
        usage: Usage,
    },
    Error(String),
}

/// A sequence; `S` is the backend's sampler state (on the device where
/// sampling runs there, the host [`metallic::sampler::Sampler`] on the CPU).
struct Seq<S> {
    /// Unique among the engine's sequences.
    id: u64,
    prompt_len: usize,
    /// Prompt then generated tokens; the last one is not in the cache yet.
    tokens: Vec<u32>,
    /// Positions whose KV is in the cache.
    n_computed: usize,
    blocks: Vec<u32>,
    /// Prefix-cache keys of the leading full blocks that are registered.
    keys: Vec<BlockKey>,
    sampler: S,
    params: GenParams,
    stop: StopMatcher,
    /// Bytes of generated tokens not yet released as UTF-8.
    pending: Vec<u8>,
    events: UnboundedSender<Event>,
    arrived: Instant,
    last_token: Option<Instant>,
    cached_tokens: usize,
    /// Admitted at least once (its prompt counted in the metrics).
    counted: bool,
}

impl<S> Seq<S> {
    fn generated(&self) -> usize {
        self.tokens.len() - self.prompt_len
    }
}

/// Loads the model on `backend` and serves `rx` until every sender is gone
/// and no sequence is left. Errors while loading are reported through `on_load`.
pub fn run<B: Backend>(
    backend: B,
    file: Arc<GgufFile>,
    tokenizer: Tokenizer,
    cfg: EngineConfig,
    shared: Arc<Shared>,
    rx: Receiver<EngineMsg>,
    on_load: tokio::sync::oneshot::Sender<Result<(), String>>,
) {
    let loaded = (|| -> metallic::error::Result<_> {
        let model = Model::load(&backend, &file)?;
        let paged = PagedLayout {
            block_size: cfg.block_size,
            n_blocks: cfg.n_blocks,
            table_stride: cfg.max_context.div_ceil(cfg.block_size),
        };
        let bs = BatchState::new(
            &backend,
            &model.config,
            paged,
            cfg.kv_type,
            cfg.step_tokens,
            cfg.max_seqs,
        )?;
        Ok((model, bs))
    })();
    // The batch-invariant matmul (see BatchState) unless the user forces
    // one: always on the CPU (exact, and as fast as any there), and with
    // --deterministic elsewhere (on CUDA it gives up cuBLAS for prefill).
    let mut dcfg = DispatchConfig::from_env();
    let invariant = backend.batch_invariant_matmul();
    let wanted = cfg.deterministic || backend.name() == "cpu";
    let dispatch = match invariant {
        None if cfg.deterministic => Err(format!(
            "--deterministic: the {} backend has no batch-invariant matmul",
            backend.name()
        )),
        Some(_) if cfg.deterministic && (dcfg.all.is_some() || !dcfg.per_op.is_empty()) => {
            Err("--deterministic chooses the matmul itself: unset METALLIC_MATMUL_BACKEND*".into())
        }
        _ => {
            if let Some(name) = invariant.filter(|_| wanted) {
                if dcfg.all.is_none() && dcfg.per_op.is_empty() {
                    dcfg.all = Some(name.into());
                }
            }
            MatmulDispatch::new(backend.matmul_impls(), &dcfg).map_err(|e| e.to_string())
        }
    };
    let (model, bs, dispatch) = match (loaded, dispatch) {
        (Ok((m, b)), Ok(d)) => (m, b, d),
        (Err(e), _) => {
            let _ = on_load.send(Err(format!("loading the model: {e}")));
            return;
        }
        (_, Err(e)) => {
            let _ = on_load.send(Err(format!("matmul dispatch: {e}")));
            return;
        }
    };
    let ids = (|| -> metallic::error::Result<_> {
        Ok((
            backend.alloc(DType::I32, 1, "sampled id")?,
            backend.alloc(DType::I32, cfg.max_seqs, "sampled ids of a step")?,
        ))
    })();
    let (sampled_one, sampled_ids) = match ids {
        Ok(t) => t,
        Err(e) => {
            let _ = on_load.send(Err(format!("allocating the sampler outputs: {e}")));
            return;
        }
    };
    let mut ex = Exec::new(&backend, dispatch);
    let mut eng = Engine {
        backend: &backend,
        model: &model,
        bs,
        sampled_one,
        sampled_ids,
        host_ids: Vec::new(),
        last_sampled: Vec::new(),
        next_id: 0,
        pool: BlockPool::new(cfg.n_blocks, cfg.block_size),
        cfg,
        shared,
        tokenizer,
        running: Vec::new(),
        waiting: VecDeque::new(),
        logits: Vec::new(),
        ahead: None,
    };
    eng.shared
        .kv_blocks_total
        .store(eng.pool.total() as u64, Relaxed);
    if eng.cfg.warm_up {
        if let Err(e) = eng.warm_up(&mut ex) {
            let _ = on_load.send(Err(format!(
                "warming up (a throwaway step before the first request; --no-warmup skips it): {e}"
            )));
            return;
        }
    }
    eng.shared.ready.store(true, Relaxed);
    let _ = on_load.send(Ok(()));
    let mut open = true;
    loop {
        if eng.running.is_empty() && eng.waiting.is_empty() {
            if !open {
                break;
            }
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(msg) => eng.on_msg(msg),
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        loop {
            match rx.try_recv() {
                Ok(msg) => eng.on_msg(msg),
                Err(std::sync::mpsc::TryRecvError::Empty) => break,
                Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                    open = false;
                    break;
                }
            }
        }
        if let Err(e) = eng.step(&mut ex) {
            // A failed step leaves the cache of its rows undefined: fail those
            // sequences, keep serving the others.
            eng.fail_running(&format!("engine step failed: {e}"));
        }
        eng.publish();
    }
    eng.shared.ready.store(false, Relaxed);
}

struct Engine<'m, B: Backend> {
    backend: &'m B,
    model: &'m Model<B>,
    bs: BatchState<B>,
    /// `[1]`: where the backend's sampler writes one row's id.
    sampled_one: B::Tensor,
    /// `[max_seqs]`: the ids sampled in a step, row `j` for the `j`-th
    /// sampled sequence, read back together.
    sampled_ids: B::Tensor,
    host_ids: Vec<i32>,
    /// Ids of the sequences sampled in the last step, in row order.
    last_sampled: Vec<u64>,
    next_id: u64,
    pool: BlockPool,
    cfg: EngineConfig,
    shared: Arc<Shared>,
    tokenizer: Tokenizer,
    /// In admission order (oldest first).
    running: Vec<Seq<B::Sampler>>,
    waiting: VecDeque<Seq<B::Sampler>>,
    /// Host copy of the logits rows that asked for log-probabilities.
    logits: Vec<f32>,
    /// A decode step queued ahead (look-ahead) whose ids are not read yet.
    ahead: Option<Ahead>,
}

impl<B: Backend> Engine<'_, B> {
    fn on_msg(&mut self, msg: EngineMsg) {
        match msg {
            EngineMsg::Submit(s) => {
                let vocab = self.model.config.vocab;
                // The prompt stays out of the penalty history: OpenAI's
                // penalties count generated tokens only.
                let sampler = match self.backend.new_sampler(&s.params.sampler, vocab) {
                    Ok(x) => x,
                    Err(e) => {
                        self.shared.queued.fetch_sub(1, Relaxed);
                        let _ = s.events.send(Event::Error(format!("sampler: {e}")));
                        return;
                    }
                };
                self.next_id += 1;
                self.waiting.push_back(Seq {
                    id: self.next_id,
                    prompt_len: s.prompt.len(),
                    tokens: s.prompt,
                    n_computed: 0,
                    blocks: Vec::new(),
                    keys: Vec::new(),
                    sampler,
                    stop: StopMatcher::new(&s.params.stop),
                    params: s.params,
                    pending: Vec::new(),
                    events: s.events,
                    arrived: s.arrived,
                    last_token: None,
                    cached_tokens: 0,
                    counted: false,
                });
            }
            EngineMsg::CancelAll => {
                for s in self.waiting.drain(..) {
                    self.shared.queued.fetch_sub(1, Relaxed);
                    let _ = s
                        .events
                        .send(Event::Error("the server is shutting down".into()));
                }
                let running = std::mem::take(&mut self.running);
                for s in running {
                    let _ = s
                        .events
                        .send(Event::Error("the server is shutting down".into()));
                    self.free(s);
                }
            }
        }
    }

    /// Before the first request, as llama-server does: a prompt-shaped
    /// step of up to 16 rows, then a one-row decode step after it, on
    /// throwaway tokens in blocks that go back to the pool unregistered (no
    /// sampler runs; nothing is counted). The first request then does not
    /// pay for first-use work: on CUDA the capture of the one-row decode
    /// graph and the set-up of the prompt's matrix products, on the CPU
    /// faulting in the mapped weights and waking the threads.
    fn warm_up(&mut self, ex: &mut Exec<'_, B>) -> metallic::error::Result<()> {
        let bsz = self.cfg.block_size;
        let p = 16.min(self.cfg.step_tokens).min(self.cfg.max_context - 1);
        let need = (p + 1).div_ceil(bsz);
        if p == 0 || self.pool.available() < need {
            return Ok(());
        }
        let blocks: Vec<u32> = (0..need).filter_map(|_| self.pool.alloc()).collect();
        let result = (|| {
            if blocks.len() < need {
                return Ok(());
            }
            let row = |pos| BatchRow {
                token: 0,
                pos,
                table: &blocks,
            };
            let prompt: Vec<BatchRow> = (0..p).map(row).collect();
            self.model
                .forward_batch(ex, &mut self.bs, &prompt, &[p - 1])?;
            self.model
                .forward_batch(ex, &mut self.bs, &[row(p)], &[0])?;
            self.backend.synchronize()
        })();
        for b in blocks {
            self.pool.release(b);
        }
        result
    }

    fn free(&mut self, s: Seq<B::Sampler>) {
        for &b in &s.blocks {
            self.pool.release(b);
        }
    }

    fn fail_running(&mut self, msg: &str) {
        let running = std::mem::take(&mut self.running);
        for s in running {
            self.shared.requests_error.fetch_add(1, Relaxed);
            let _ = s.events.send(Event::Error(msg.to_string()));
            self.free(s);
        }
    }

    fn publish(&self) {
        let s = &self.shared;
        s.running.store(self.running.len() as u64, Relaxed);
        s.kv_blocks_used.store(self.pool.used() as u64, Relaxed);
        s.kv_blocks_cached_idle
            .store(self.pool.cached_idle() as u64, Relaxed);
    }

    /// Drop sequences whose client went away: their blocks are free at once.
    fn drop_cancelled(&mut self) {
        let before = self.waiting.len();
        self.waiting.retain(|s| !s.events.is_closed());
        let gone = before - self.waiting.len();
        self.shared.queued.fetch_sub(gone as u64, Relaxed);
        self.shared
            .requests_cancelled
            .fetch_add(gone as u64, Relaxed);
        let mut i = 0;
        while i < self.running.len() {
            if self.running[i].events.is_closed() {
                let s = self.running.remove(i);
                self.shared.requests_cancelled.fetch_add(1, Relaxed);
                self.free(s);
            } else {
                i += 1;
            }
        }
    }

    /// Admit waiting sequences while a slot is free and their tokens fit.
    fn admit(&mut self) {
        let bsz = self.cfg.block_size;
        while self.running.len() < self.cfg.max_seqs {
            let Some(mut s) = self.waiting.pop_front() else {
                break;
            };
            // Leave the last token out of the cached prefix: its row must run
            // to give logits, and it must not write into a shared block.
            let max_shared = (s.tokens.len() - 1) / bsz;
            let (blocks, keys) = self.pool.acquire_prefix(&s.tokens, max_shared);
            let need = s.tokens.len().div_ceil(bsz) - blocks.len();
            // Keep a block per running sequence in reserve for their growth.
            if self.pool.available() < need + self.running.len() {
                for b in blocks {
                    self.pool.release(b);
                }
                self.waiting.push_front(s);
                break;
            }
            s.n_computed = blocks.len() * bsz;
            s.blocks = blocks;
            s.keys = keys;
            if !s.counted {
                s.counted = true;
                s.cached_tokens = s.n_computed;
                self.shared
                    .prompt_tokens
                    .fetch_add(s.prompt_len as u64, Relaxed);
                self.shared
                    .cached_prompt_tokens
                    .fetch_add(s.n_computed as u64, Relaxed);
            }
            self.shared.queued.fetch_sub(1, Relaxed);
            self.running.push(s);
        }
    }

    /// Give sequence `i` blocks up to position `upto` (exclusive). When the
    /// pool is empty, preempt the newest other sequence that is neither
    /// scheduled in this step nor already preempted: its blocks are freed now
    /// and `preempted[v]` is set (the caller moves it back to the queue).
    /// Returns false when no blocks can be found.
    fn grow(&mut self, i: usize, upto: usize, scheduled: &[bool], preempted: &mut [bool]) -> bool {
        let bsz = self.cfg.block_size;
        while self.running[i].blocks.len() * bsz < upto {
            match self.pool.alloc() {
                Some(b) => self.running[i].blocks.push(b),
                None => {
                    let victim = (0..self.running.len())
                        .rev()
                        .find(|&v| v != i && !scheduled[v] && !preempted[v]);
                    let Some(v) = victim else { return false };
                    let s = &mut self.running[v];
                    for &b in &s.blocks {
                        self.pool.release(b);
                    }
                    s.blocks.clear();
                    s.keys.clear();
                    s.n_computed = 0;
                    preempted[v] = true;
                    self.shared.preemptions.fetch_add(1, Relaxed);
                }
            }
        }
        true
    }

    fn step(&mut self, ex: &mut Exec<'_, B>) -> metallic::error::Result<()> {
        // A decode step queued ahead by the last call: its tokens first,
        // before any sequence is admitted, dropped or preempted (their
        // blocks must not change under rows already queued).
        if let Some(ahead) = self.ahead.take() {
            return self.take_ahead(ex, ahead);
        }
        self.drop_cancelled();
        self.admit();
        if self.running.is_empty() {
            return Ok(());
        }
        // Decode rows first (one pending token), then prefill chunks, in
        // admission order within each group.
        let n = self.running.len();
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by_key(|&i| {
            let s = &self.running[i];
            (s.tokens.len() - s.n_computed > 1) as u8
        });
        let mut budget = self.cfg.step_tokens;
        let mut plan: Vec<(usize, usize)> = Vec::new();
        let mut scheduled = vec![false; n];
        let mut preempted = vec![false; n];
        for &i in &order {
            if budget == 0 {
                break;
            }
            if preempted[i] {
                continue;
            }
            let s = &self.running[i];
            let take = (s.tokens.len() - s.n_computed).min(budget);
            let upto = s.n_computed + take;
            if !self.grow(i, upto, &scheduled, &mut preempted) {
                continue;
            }
            scheduled[i] = true;
            plan.push((i, take));
            budget -= take;
        }
        if plan.is_empty() {
            // Nothing can grow even with every other sequence preempted: the
            // oldest one has outgrown the pool.
            let s = self.running.remove(0);
            self.finish(s, FinishReason::Length);
            self.requeue_preempted(&preempted[1..]);
            return Ok(());
        }
        let mut rows = Vec::with_capacity(self.cfg.step_tokens);
        let mut logit_rows = Vec::new();
        let mut sampled = Vec::new();
        for &(i, take) in &plan {
            let s = &self.running[i];
            for p in s.n_computed..s.n_computed + take {
                rows.push(BatchRow {
                    token: s.tokens[p],
                    pos: p,
                    table: &s.blocks,
                });
            }
            if s.n_computed + take == s.tokens.len() {
                logit_rows.push(rows.len() - 1);
                sampled.push(i);
            }
        }
        self.model
            .forward_batch(ex, &mut self.bs, &rows, &logit_rows)?;
        drop(rows);
        self.shared.steps.fetch_add(1, Relaxed);
        for &(i, take) in &plan {
            self.computed(i, take);
        }
        let failed = self.queue_sampling(&sampled)?;
        let sampled: Vec<Option<usize>> = sampled.into_iter().map(Some).collect();
        let finished = self.collect(ex, &sampled, failed)?;
        self.remove(finished, &preempted);
        Ok(())
    }

    /// `take` more positions of running sequence `i` are in the cache:
    /// register the blocks whose tokens are now all computed.
    fn computed(&mut self, i: usize, take: usize) {
        let bsz = self.cfg.block_size;
        let s = &mut self.running[i];
        s.n_computed += take;
        while (s.keys.len() + 1) * bsz <= s.n_computed {
            let j = s.keys.len();
            let parent = s.keys.last().copied().unwrap_or(0);
            let key = self
                .pool
                .register(s.blocks[j], parent, &s.tokens[j * bsz..(j + 1) * bsz]);
            s.keys.push(key);
        }
    }

    /// Remove finished and preempted sequences (`preempted` indexed as
    /// `running` was when the step was planned), highest index first so the
    /// others keep their places until they go.
    fn remove(&mut self, finished: Vec<(usize, FinishReason)>, preempted: &[bool]) {
        let n = self.running.len();
        let mut done: Vec<Option<FinishReason>> = vec![None; n];
        for (i, r) in finished {
            done[i] = Some(r);
        }
        let mut back = Vec::new();
        for i in (0..n).rev() {
            if let Some(r) = done[i] {
                let s = self.running.remove(i);
                self.finish(s, r);
            } else if preempted.get(i).copied().unwrap_or(false) {
                back.push(self.running.remove(i));
            }
        }
        // `back` is newest first; the oldest goes to the front of the queue.
        for s in back {
            self.shared.queued.fetch_add(1, Relaxed);
            self.waiting.push_front(s);
        }
    }

    /// The tokens of the step queued ahead (its rows' sequences that are
    /// gone since, finished or cancelled, had their row computed for
    /// nothing: its cache write went to a block they no longer hold, and the
    /// queue orders it before any later use of that block).
    fn take_ahead(&mut self, ex: &mut Exec<'_, B>, ahead: Ahead) -> metallic::error::Result<()> {
        let rows: Vec<Option<usize>> = ahead
            .ids
            .iter()
            .map(|id| self.running.iter().position(|s| s.id == *id))
            .collect();
        if rows.iter().all(Option::is_none) {
            return Ok(());
        }
        self.shared.steps.fetch_add(1, Relaxed);
        for &i in rows.iter().flatten() {
            self.computed(i, 1);
        }
        let finished = self.collect(ex, &rows, ahead.failed)?;
        self.remove(finished, &[]);
        Ok(())
    }

    /// Move the sequences flagged in `preempted` back to the queue's front.
    fn requeue_preempted(&mut self, preempted: &[bool]) {
        for i in (0..preempted.len().min(self.running.len())).rev() {
            if preempted[i] {
                let s = self.running.remove(i);
                self.shared.queued.fetch_add(1, Relaxed);
                self.waiting.push_front(s);
            }
        }
    }

    /// Queue the sampling of the next token of every sequence in `sampled`
    /// (logits row `j` for `sampled[j]`, its id into `sampled_ids[j]`) on
    /// the backend. A row whose sampling cannot be queued fails its
    /// sequence alone: its error is at its index in the result.
    fn queue_sampling(
        &mut self,
        sampled: &[usize],
    ) -> metallic::error::Result<Vec<Option<String>>> {
        let b = self.backend;
        let vocab = self.model.config.vocab;
        let mut failed: Vec<Option<String>> = vec![None; sampled.len()];
        let key: Vec<u64> = sampled.iter().map(|&i| self.running[i].id).collect();
        let (running, bs) = (&mut self.running, &self.bs);
        let (one, ids) = (&mut self.sampled_one, &mut self.sampled_ids);
        let mut sample_rows = || -> metallic::error::Result<()> {
            for (j, &i) in sampled.iter().enumerate() {
                match b.sample(&bs.logits, j, vocab, &mut running[i].sampler, one) {
                    Ok(()) => b.copy(one, 0, ids, j, 1)?,
                    Err(e) => failed[j] = Some(format!("sampling: {e}")),
                }
            }
            Ok(())
        };
        // The same sequences in the same rows as the step before: their
        // sampling launches are the same, so on CUDA they replay as one
        // graph (the backend compares every launch and re-captures if one
        // differs). While the batch changes they run directly, not paying
        // a capture that would be used once.
        if key == self.last_sampled {
            b.replayable(
                SAMPLE_GRAPH_KEY_BASE + sampled.len() as u64,
                &mut sample_rows,
            )?;
        } else {
            sample_rows()?;
        }
        self.last_sampled = key;
        Ok(failed)
    }

    /// Read back the ids sampled for `rows` (row `j` for running sequence
    /// `rows[j]`, None for a row whose sequence is gone) in one read, the
    /// logits too for rows that want log-probabilities, and hand each token
    /// to its sequence; `failed[j]` fails row `j`'s sequence instead.
    /// Returns the sequences that are finished and why.
    ///
    /// Look-ahead: when the next step is sure to be this one again (every
    /// running sequence decoding its next token, none at its length limit,
    /// none waiting to be admitted), it is queued before this step's ids are
    /// read, its tokens taken from the device (the ids just sampled) and its
    /// rows' positions and blocks from the host, which knows them. The host's
    /// work (the read's wait, streaming the tokens, the next step's
    /// bookkeeping) then overlaps the device's, as `generate` does. A
    /// sequence that this step ends had a row in the step queued ahead: it is
    /// dropped when that step's ids are read ([`Engine::take_ahead`]).
    fn collect(
        &mut self,
        ex: &mut Exec<'_, B>,
        rows: &[Option<usize>],
        mut failed: Vec<Option<String>>,
    ) -> metallic::error::Result<Vec<(usize, FinishReason)>> {
        let b = self.backend;
        let vocab = self.model.config.vocab;
        // The span of logits rows from the first to the last that wants
        // log-probabilities (the raw logits: sampling does not change them).
        let wants_lp =
            |i: &Option<usize>| i.is_some_and(|i| self.running[i].params.logprobs.is_some());
        let first = rows.iter().position(wants_lp);
        let last = rows.iter().rposition(wants_lp);
        if let (Some(first), Some(last)) = (first, last) {
            self.logits.resize((last + 1 - first) * vocab, 0.0);
            b.read_f32(&self.bs.logits, first * vocab, &mut self.logits)?;
        }
        self.host_ids.resize(rows.len(), 0);
        let rb = b.read_i32_start(&self.sampled_ids, 0, rows.len())?;
        // (The logits were read above, before a step queued ahead can
        // overwrite them.)
        let queued = if failed.iter().all(Option::is_none) {
            self.queue_ahead(ex, rows)
        } else {
            Ok(None)
        };
        // The read is finished whatever became of the queueing (it holds a
        // staging slot until then).
        let read = b.read_i32_finish(rb, &mut self.host_ids);
        self.ahead = queued?;
        read?;
        let mut finished = Vec::new();
        for (j, &i) in rows.iter().enumerate() {
            let Some(i) = i else { continue };
            let tok = self.host_ids[j];
            let valid = u32::try_from(tok).ok().filter(|&t| (t as usize) < vocab);
            let r = match (failed[j].take(), valid) {
                (None, Some(t)) => {
                    let lp = match (self.running[i].params.logprobs, first) {
                        (Some(n), Some(first)) => {
                            let row = &self.logits[(j - first) * vocab..][..vocab];
                            Some(token_logprob(row, t, n))
                        }
                        _ => None,
                    };
                    self.take_token(i, t, lp)
                }
                (err, _) => {
                    let msg = err.unwrap_or_else(|| {
                        format!("sampling: token id {tok} outside the vocabulary of {vocab}")
                    });
                    let _ = self.running[i].events.send(Event::Error(msg));
                    Some(FinishReason::Stop)
                }
            };
            if let Some(r) = r {
                finished.push((i, r));
            }
        }
        Ok(finished)
    }

    /// Queue the step after the one whose ids `rows` are about to be read,
    /// if look-ahead is on and that step is sure to be the same rows one
    /// position further (see [`Engine::collect`]). Returns its sequences.
    fn queue_ahead(
        &mut self,
        ex: &mut Exec<'_, B>,
        rows: &[Option<usize>],
    ) -> metallic::error::Result<Option<Ahead>> {
        let bsz = self.cfg.block_size;
        let max_context = self.cfg.max_context;
        let every_running = rows.len() == self.running.len();
        let eligible = self.cfg.look_ahead
            && every_running
            && self.waiting.is_empty()
            && rows.iter().all(|i| {
                i.is_some_and(|i| {
                    let s = &self.running[i];
                    // Decoding (all its tokens computed, the next one on the
                    // device), and not ended by length by the coming token.
                    s.n_computed == s.tokens.len()
                        && s.generated() + 1 < s.params.max_tokens
                        && s.tokens.len() + 1 < max_context
                        && !s.events.is_closed()
                })
            });
        if !eligible {
            return Ok(None);
        }
        let rows: Vec<usize> = rows.iter().flatten().copied().collect();
        // Blocks for the next position, without preempting anyone.
        let need: usize = rows
            .iter()
            .map(|&i| {
                let s = &self.running[i];
                (s.n_computed + 1)
                    .div_ceil(bsz)
                    .saturating_sub(s.blocks.len())
            })
            .sum();
        if need > self.pool.available() {
            return Ok(None);
        }
        for &i in &rows {
            while self.running[i].blocks.len() * bsz < self.running[i].n_computed + 1 {
                let Some(b) = self.pool.alloc() else {
                    return Ok(None);
                };
                self.running[i].blocks.push(b);
            }
        }
        let batch: Vec<BatchRow> = rows
            .iter()
            .map(|&i| {
                let s = &self.running[i];
                BatchRow {
                    // The token is the id sampled on the device.
                    token: 0,
                    pos: s.n_computed,
                    table: &s.blocks,
                }
            })
            .collect();
        let logit_rows: Vec<usize> = (0..batch.len()).collect();
        self.model
            .forward_batch_after(ex, &mut self.bs, &batch, &logit_rows, &self.sampled_ids)?;
        drop(batch);
        let failed = self.queue_sampling(&rows)?;
        self.shared.steps_ahead.fetch_add(1, Relaxed);
        Ok(Some(Ahead {
            ids: rows.iter().map(|&i| self.running[i].id).collect(),
            failed,
        }))
    }

    /// Append the sampled token `tok` to running sequence `i` (its sampler
    /// has already taken it into its history) and stream its text; returns
    /// why the sequence is finished, if it is.
    fn take_token(
        &mut self,
        i: usize,
        tok: u32,
        logprob: Option<TokenLogprob>,
    ) -> Option<FinishReason> {
        let now = Instant::now();
        let tok_ids = [self.tokenizer.eos_id(), self.tokenizer.eot_id()];
        let s = &mut self.running[i];
        match s.last_token {
            None => self.shared.ttft.observe((now - s.arrived).as_secs_f64()),
            Some(t) => self.shared.itl.observe((now - t).as_secs_f64()),
        }
        s.last_token = Some(now);
        if tok_ids.contains(&Some(tok)) {
            return Some(FinishReason::Stop);
        }
        s.tokens.push(tok);
        self.shared.generated_tokens.fetch_add(1, Relaxed);
        if let Some(b) = self.tokenizer.token_bytes(tok) {
            s.pending.extend_from_slice(b);
        }
        let text = take_utf8(&mut s.pending);
        let r = s.stop.push(&text);
        let _ = s.events.send(Event::Token {
            text: r.emit,
            logprob,
        });
        if r.stopped {
            return Some(FinishReason::Stop);
        }
        if s.generated() >= s.params.max_tokens || s.tokens.len() >= self.cfg.max_context {
            return Some(FinishReason::Length);
        }
        None
    }

    fn finish(&mut self, mut s: Seq<B::Sampler>, reason: FinishReason) {
        if !s.stop.stopped() {
            let tail = String::from_utf8_lossy(&std::mem::take(&mut s.pending)).into_owned();
            let r = s.stop.push(&tail);
            let mut rest = r.emit;
            if !r.stopped {
                rest.push_str(&s.stop.finish());
            }
            if !rest.is_empty() {
                let _ = s.events.send(Event::Text(rest));
            }
        }
        let usage = Usage {
            prompt_tokens: s.prompt_len,
            completion_tokens: s.generated(),
            cached_tokens: s.cached_tokens,
        };
        let _ = s.events.send(Event::Done { reason, usage });
        self.shared.requests_ok.fetch_add(1, Relaxed);
        self.free(s);
    }
}

/// The longest valid UTF-8 prefix of `pending`, removed from it (an invalid
/// sequence that can never complete is replaced by U+FFFD).
fn take_utf8(pending: &mut Vec<u8>) -> String {
    match std::str::from_utf8(pending) {
        Ok(s) => {
            let out = s.to_string();
            pending.clear();
            out
        }
        Err(e) => {
            let valid = e.valid_up_to();
            let mut out = String::from_utf8_lossy(&pending[..valid]).into_owned();
            match e.error_len() {
                // Bytes that cannot start a character: replace them now.
                Some(n) => {
                    out.push('\u{FFFD}');
                    pending.drain(..valid + n);
                    out.push_str(&take_utf8(pending));
                }
                // An incomplete character at the end: keep it for the next token.
                None => {
                    pending.drain(..valid);
                }
            }
            out
        }
    }
}

/// Log-softmax of the raw logits `row`: the log-probability of `tok` and
/// of the `n` most likely tokens (ties by lower id).
fn token_logprob(row: &[f32], tok: u32, n: usize) -> TokenLogprob {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = row.iter().map(|&l| ((l - max) as f64).exp()).sum();
    let lse = max + sum.ln() as f32;
    let mut top: Vec<(u32, f32)> = Vec::new();
    if n > 0 && !row.is_empty() {
        let mut idx: Vec<u32> = (0..row.len() as u32).collect();
        let n = n.min(idx.len());
        let cmp = |a: &u32, b: &u32| row[*b as usize].total_cmp(&row[*a as usize]).then(a.cmp(b));
        idx.select_nth_unstable_by(n - 1, cmp);
        idx.truncate(n);
        idx.sort_by(cmp);
        top = idx.iter().map(|&i| (i, row[i as usize] - lse)).collect();
    }
    TokenLogprob {
        id: tok,
        logprob: row
            .get(tok as usize)
            .map_or(f32::NEG_INFINITY, |&l| l - lse),
        top,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_split_across_tokens_is_held_until_complete() {
        let mut p = "é".as_bytes()[..1].to_vec();
        assert_eq!(take_utf8(&mut p), "");
        p.extend_from_slice(&"é".as_bytes()[1..]);
        p.extend_from_slice(b"x");
        assert_eq!(take_utf8(&mut p), "éx");
        assert!(p.is_empty());
        let mut bad = vec![b'a', 0xFF, b'b'];
        assert_eq!(take_utf8(&mut bad), "a\u{FFFD}b");
    }

    #[test]
    fn logprobs_are_normalised_and_sorted() {
        let row = [0.0, 2.0, 1.0];
        let lp = |t: u32| token_logprob(&row, t, 0).logprob;
        let total: f32 = (0..3).map(|t| lp(t).exp()).sum();
        assert!((total - 1.0).abs() < 1e-5);
        let top = token_logprob(&row, 2, 2);
        assert_eq!(top.logprob, lp(2));
        assert_eq!(top.top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(top.top[0].1, lp(1));
    }
}
