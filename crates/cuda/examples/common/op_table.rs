//! The per-op table the profile examples print: recorded ops grouped by op,
//! implementation and shape, biggest total first.

use std::collections::BTreeMap;

use metallic::profiler::OpEvent;

/// Print `ops` (host-side ops left out) grouped, with calls, total and mean
/// device time and share; returns the summed device time in ms.
pub fn print<'a>(ops: impl Iterator<Item = &'a OpEvent>) -> f64 {
    let mut groups: BTreeMap<String, (usize, f64)> = BTreeMap::new();
    let mut total = 0.0;
    for e in ops.filter(|e| e.imp != "host") {
        let key = match &e.shape {
            Some(s) => format!("{:<16} {:<9} {}", e.op.name(), e.imp, s),
            None => format!("{:<16} {:<9}", e.op.name(), e.imp),
        };
        let g = groups.entry(key).or_insert((0, 0.0));
        g.0 += 1;
        g.1 += e.device_ms;
        total += e.device_ms;
    }
    println!(
        "{:>8} {:>10} {:>9} {:>6}  op / impl / shape",
        "calls", "total ms", "mean us", "%"
    );
    let mut rows: Vec<_> = groups.into_iter().collect();
    rows.sort_by(|a, b| b.1 .1.total_cmp(&a.1 .1));
    for (k, (c, ms)) in rows {
        println!(
            "{c:>8} {ms:>10.3} {:>9.2} {:>6.2}  {k}",
            ms * 1e3 / c as f64,
            100.0 * ms / total
        );
    }
    total
}
