//! GGUF: reading by mmap with full validation, writing, and the ggml block formats.
