//! What the benches share: a median timer and a time format.

use std::time::{Duration, Instant};

/// The median of `iterations` timed calls of `op`, after a tenth as many warm-up calls.
pub fn median(iterations: usize, mut op: impl FnMut()) -> Duration {
    for _ in 0..iterations / 10 {
        op();
    }
    let mut times: Vec<Duration> = (0..iterations.max(1))
        .map(|_| {
            let started = Instant::now();
            op();
            started.elapsed()
        })
        .collect();
    times.sort();
    times[times.len() / 2]
}

/// Microseconds below 10 ms, milliseconds above.
pub fn format_time(t: Duration) -> String {
    if t < Duration::from_millis(10) {
        format!("{:.1} µs", t.as_secs_f64() * 1e6)
    } else {
        format!("{:.1} ms", t.as_secs_f64() * 1e3)
    }
}
