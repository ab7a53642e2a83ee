//! metallic core.

pub mod chat;
