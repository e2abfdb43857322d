//! Latency summaries: exact percentiles over every recorded sample.
//!
//! A bench run records at most a few million samples, so keeping them all and sorting once is
//! cheaper to trust than a histogram's bucket arithmetic, and its percentiles are exact.

use std::time::Duration;

use serde::Serialize;

/// Percentiles of a set of durations, in whole microseconds (JSON keeps them exact; people see
/// milliseconds through [`Millis`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub(crate) struct Latency {
    pub samples: usize,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

/// Microseconds printed as milliseconds with three decimals (`1.234`), without floating point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Millis(pub u64);

impl std::fmt::Display for Millis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{:03}", self.0 / 1000, self.0 % 1000)
    }
}

impl Latency {
    /// The summary of `samples` (microseconds); `None` when there are none.
    pub(crate) fn of(mut samples: Vec<u64>) -> Option<Self> {
        if samples.is_empty() {
            return None;
        }
        samples.sort_unstable();
        Some(Self {
            samples: samples.len(),
            p50_us: nearest_rank(&samples, 50),
            p90_us: nearest_rank(&samples, 90),
            p99_us: nearest_rank(&samples, 99),
            max_us: *samples.last().unwrap_or(&0),
        })
    }
}

/// The nearest-rank percentile of sorted, non-empty `samples`: the smallest value with at least
/// `percent`% of the samples at or below it.
fn nearest_rank(sorted: &[u64], percent: usize) -> u64 {
    let rank = (percent * sorted.len()).div_ceil(100).max(1);
    sorted[rank - 1]
}

/// `count` per second over `elapsed`, as a whole number.
pub(crate) fn per_second(count: usize, elapsed: Duration) -> u64 {
    let micros = elapsed.as_micros().max(1);
    u64::try_from(count as u128 * 1_000_000 / micros).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let latency = Latency::of((1..=100).rev().collect()).unwrap();
        assert_eq!(latency.samples, 100);
        assert_eq!(
            (
                latency.p50_us,
                latency.p90_us,
                latency.p99_us,
                latency.max_us
            ),
            (50, 90, 99, 100)
        );

        let single = Latency::of(vec![7]).unwrap();
        assert_eq!((single.p50_us, single.p99_us, single.max_us), (7, 7, 7));

        // 1,000 samples: p99 is the 990th smallest, not the largest.
        let latency = Latency::of((1..=1000).collect()).unwrap();
        assert_eq!(latency.p99_us, 990);
        assert!(Latency::of(Vec::new()).is_none());
    }

    #[test]
    fn milliseconds_print_exactly() {
        assert_eq!(Millis(1_234).to_string(), "1.234");
        assert_eq!(Millis(5).to_string(), "0.005");
        assert_eq!(Millis(25_000).to_string(), "25.000");
    }

    #[test]
    fn rates_are_whole_events_per_second() {
        assert_eq!(per_second(10_000, Duration::from_secs(2)), 5_000);
        assert_eq!(per_second(3, Duration::from_millis(1_500)), 2);
        assert_eq!(per_second(0, Duration::ZERO), 0);
    }
}
