//! metallic core.
