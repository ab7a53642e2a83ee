//! Ctrl-C: the first stops the current generation (at the next token), a
//! second one while that is still under way ends the process.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use anyhow::{Context, Result};

fn cell() -> &'static Arc<AtomicBool> {
    static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();
    FLAG.get_or_init(|| Arc::new(AtomicBool::new(false)))
}

/// The flag the generation loop watches.
pub fn flag() -> Arc<AtomicBool> {
    cell().clone()
}

/// Ready for the next reply.
pub fn clear() {
    cell().store(false, Ordering::Relaxed);
}

/// Install the SIGINT handler (once per process).
pub fn install() -> Result<()> {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    if INSTALLED.get().is_some() {
        return Ok(());
    }
    let flag = flag();
    // ctrlc's sigaction replaces whatever handler is installed now.
    ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::Relaxed) {
            // The first one has not been acted on yet (a long prefill step):
            // the user wants out now.
            eprintln!();
            std::process::exit(130);
        }
    })
    .context("installing the Ctrl-C handler")?;
    let _ = INSTALLED.set(());
    Ok(())
}
