//! The streaming-read kernel behind `metallic probe`'s memory-bandwidth floor.

use rayon::prelude::*;

/// Wrapping sum of `v`, read once across the pool in large chunks; sixteen
/// independent lanes let the compiler keep the loads in wide registers.
pub fn stream_sum(v: &[i32]) -> i32 {
    const CHUNK: usize = 1 << 18;
    v.par_chunks(CHUNK)
        .map(|c| {
            let mut acc = [0i32; 16];
            let mut it = c.chunks_exact(16);
            for b in &mut it {
                for (a, &x) in acc.iter_mut().zip(b) {
                    *a = a.wrapping_add(x);
                }
            }
            let tail = it.remainder().iter().fold(0i32, |s, &x| s.wrapping_add(x));
            acc.iter().fold(tail, |s, &x| s.wrapping_add(x))
        })
        .reduce(|| 0, i32::wrapping_add)
}

#[cfg(test)]
mod tests {
    #[test]
    fn stream_sum_wraps_like_a_serial_sum() {
        let v: Vec<i32> = (0..1_000_003i32)
            .map(|i| i.wrapping_mul(7919).wrapping_sub(3))
            .collect();
        let serial = v.iter().fold(0i32, |s, &x| s.wrapping_add(x));
        assert_eq!(super::stream_sum(&v), serial);
    }
}
