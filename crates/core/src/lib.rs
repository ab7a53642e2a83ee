//! metallic core: the backend contract, model configuration and forward pass,
//! matmul dispatch, profiling, tokenizer, chat templates, sampling and the
//! generation loop. It never names a backend; callers choose one at run time.

pub mod autotune;
pub mod backend;
pub mod chat;
pub mod config;
pub mod conversation;
pub mod dirs;
pub mod dispatch;
pub mod error;
pub mod eval;
pub mod exec;
pub mod generate;
pub mod model;
pub mod percentile;
pub mod profiler;
pub mod quantize;
pub mod report;
pub mod rng;
pub mod sampler;
pub mod stop;
pub mod synth;
pub mod tokenizer;
pub mod trace;
