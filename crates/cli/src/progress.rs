//! Progress bars (indicatif) for long commands, on stderr only when it is a
//! terminal: in pipes and logs they draw nothing.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::common::{stderr_is_terminal, use_color};

/// A bar of `total` steps, labelled `what`; hidden unless stderr is a terminal.
/// When finished it leaves its last state on screen (what was done, how long).
pub fn bar(total: u64, what: &str) -> ProgressBar {
    let target = if stderr_is_terminal() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let template = if use_color(stderr_is_terminal()) {
        "{prefix:.bold} [{bar:30.cyan/blue}] {pos}/{len} {msg} ({elapsed})"
    } else {
        "{prefix} [{bar:30}] {pos}/{len} {msg} ({elapsed})"
    };
    let style = ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    ProgressBar::with_draw_target(Some(total), target)
        .with_style(style)
        .with_prefix(what.to_string())
}
