//! Helpers for Tollgate's benchmarks: percentiles and table printing.
//!
//! The benchmarks themselves live in `benches/`; they run real processes (the broker, the
//! reference MCP server) and report every figure next to a baseline measured in the same run,
//! because absolute numbers on shared machines are noise.

use std::time::Duration;

/// The `p`-th percentile (0..=100) of a set of samples, by nearest rank.
pub fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    samples.sort_unstable();
    let rank = ((p / 100.0) * samples.len() as f64).ceil() as usize;
    samples[rank.clamp(1, samples.len()) - 1]
}

/// Microseconds with one decimal, for tables.
pub fn us(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e6)
}

/// Signed difference in microseconds.
pub fn delta_us(a: Duration, b: Duration) -> String {
    format!("{:+.1}", (a.as_secs_f64() - b.as_secs_f64()) * 1e6)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut s: Vec<Duration> = (1..=100).map(Duration::from_micros).collect();
        assert_eq!(percentile(&mut s, 50.0), Duration::from_micros(50));
        assert_eq!(percentile(&mut s, 99.0), Duration::from_micros(99));
        assert_eq!(percentile(&mut s, 100.0), Duration::from_micros(100));
        assert_eq!(percentile(&mut [], 50.0), Duration::ZERO);
    }
}
