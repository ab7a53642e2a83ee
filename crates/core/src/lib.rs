//! metallic core.

pub mod tokenizer;
