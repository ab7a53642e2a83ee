//! The probe's chart: hand-written SVG, one group of horizontal bars per
//! shape (one bar per implementation, median time on a log scale, p10..p90
//! whisker), the bandwidth floor of each shape as a dashed tick.

use std::fmt::Write as _;

use crate::probe::ProbeReport;

const COLORS: [&str; 6] = [
    "#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#b07aa1",
];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

pub fn svg(r: &ProbeReport) -> String {
    let mut impls: Vec<&str> = Vec::new();
    for row in &r.rows {
        if !impls.contains(&row.imp.as_str()) {
            impls.push(&row.imp);
        }
    }
    // Groups in report order.
    let mut groups: Vec<(String, Vec<usize>)> = Vec::new();
    for (i, row) in r.rows.iter().enumerate() {
        let key = format!(
            "{} · {} m={} n={} k={} {}",
            row.shape.label, row.shape.op, row.shape.m, row.shape.n, row.shape.k, row.shape.dtype
        );
        match groups.last_mut() {
            Some((k, v)) if *k == key => v.push(i),
            _ => groups.push((key, vec![i])),
        }
    }
    let floor_ms = |i: usize| {
        let row = &r.rows[i];
        row.bytes as f64 / (r.stream_gb_s * 1e6)
    };
    let mut lo = f64::INFINITY;
    let mut hi: f64 = 0.0;
    for (i, row) in r.rows.iter().enumerate() {
        let f = floor_ms(i);
        lo = lo.min(if f.is_finite() {
            row.p10_ms.min(f)
        } else {
            row.p10_ms
        });
        hi = hi.max(row.p90_ms);
    }
    if !lo.is_finite() || lo <= 0.0 {
        lo = 1e-3;
    }
    let (lo_e, hi_e) = (lo.log10().floor(), hi.max(lo * 10.0).log10().ceil());

    let (label_w, plot_w, bar_h, gap, top) = (420.0, 560.0, 11.0, 12.0, 70.0);
    let group_h = |n: usize| n as f64 * bar_h + gap;
    let plot_h: f64 = groups.iter().map(|g| group_h(g.1.len())).sum();
    let width = label_w + plot_w + 40.0;
    let height = top + plot_h + 60.0;
    let x_of = |ms: f64| label_w + (ms.max(1e-9).log10() - lo_e) / (hi_e - lo_e) * plot_w;

    let mut o = String::new();
    let _ = writeln!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(o, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        o,
        r#"<text x="10" y="20" font-size="14" font-weight="bold">metallic probe: matmul time per shape and implementation (median, p10..p90; log scale)</text>"#
    );
    let _ = writeln!(
        o,
        r#"<text x="10" y="38">{} — {} — {}</text>"#,
        esc(&r.device),
        esc(&r.timing),
        if r.stream_gb_s.is_finite() {
            format!(
                "streaming-read floor {:.1} GB/s (dashed: time at the floor)",
                r.stream_gb_s
            )
        } else {
            "no streaming-read floor on this backend".to_string()
        }
    );
    // Legend.
    for (j, name) in impls.iter().enumerate() {
        let x = 10.0 + j as f64 * 110.0;
        let _ = writeln!(
            o,
            r#"<rect x="{x}" y="48" width="12" height="10" fill="{}"/><text x="{}" y="57">{}</text>"#,
            COLORS[j % COLORS.len()],
            x + 16.0,
            esc(name)
        );
    }
    // Decades.
    let mut e = lo_e;
    while e <= hi_e + 1e-9 {
        let x = x_of(10f64.powf(e));
        let _ = writeln!(
            o,
            r##"<line x1="{x:.1}" y1="{top}" x2="{x:.1}" y2="{:.1}" stroke="#ddd"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{} ms</text>"##,
            top + plot_h,
            top + plot_h + 16.0,
            10f64.powf(e)
        );
        e += 1.0;
    }
    let mut y = top;
    for (key, idx) in &groups {
        let _ = writeln!(
            o,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            label_w - 8.0,
            y + group_h(idx.len()) / 2.0 - gap / 2.0 + 4.0,
            esc(key)
        );
        for (bi, &i) in idx.iter().enumerate() {
            let row = &r.rows[i];
            let j = impls.iter().position(|n| *n == row.imp).unwrap_or(0);
            let by = y + bi as f64 * bar_h;
            let x1 = x_of(row.median_ms);
            let x0 = x_of(10f64.powf(lo_e));
            let _ = writeln!(
                o,
                r#"<rect x="{x0:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{}"><title>{} {}: median {:.4} ms, {:.1} GB/s{}</title></rect>"#,
                by + 1.0,
                (x1 - x0).max(1.0),
                bar_h - 2.0,
                COLORS[j % COLORS.len()],
                esc(&key.clone()),
                esc(&row.imp),
                row.median_ms,
                row.gb_s,
                if row.pct_of_floor.is_finite() {
                    format!(", {:.0}% of floor", row.pct_of_floor)
                } else {
                    String::new()
                }
            );
            let _ = writeln!(
                o,
                r#"<line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="black"/>"#,
                x_of(row.p10_ms),
                by + bar_h / 2.0,
                x_of(row.p90_ms),
                by + bar_h / 2.0
            );
            let _ = writeln!(
                o,
                r#"<text x="{:.1}" y="{:.1}" font-size="9">{:.3} ms{}</text>"#,
                x_of(row.p90_ms) + 4.0,
                by + bar_h - 2.0,
                row.median_ms,
                if row.winner { " ★" } else { "" }
            );
        }
        let fx = x_of(floor_ms(idx[0]));
        if fx.is_finite() {
            let _ = writeln!(
                o,
                r#"<line x1="{fx:.1}" y1="{y:.1}" x2="{fx:.1}" y2="{:.1}" stroke="red" stroke-dasharray="3,2"/>"#,
                y + idx.len() as f64 * bar_h
            );
        }
        y += group_h(idx.len());
    }
    o.push_str("</svg>\n");
    o
}
