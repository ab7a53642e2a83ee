//! metallic core.

pub mod chat;
pub mod sampler;
pub mod stop;
