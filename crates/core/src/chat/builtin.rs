//! Chat templates shipped with metallic, for models (or synthetic GGUFs) that carry none.
//! Origins and checksums: `templates/README.md`.

/// Qwen2.5-Instruct's `chat_template` (ChatML with a default system prompt and tools).
pub const QWEN2_5: &str = include_str!("templates/qwen2_5.jinja");

/// Llama 3.2 Instruct's `chat_template` (header tokens, "Today Date", JSON tool calls).
pub const LLAMA3_2: &str = include_str!("templates/llama3_2.jinja");
