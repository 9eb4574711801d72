//! Latency samples and their percentiles.

use std::time::Duration;

#[derive(Default, Clone)]
pub struct Latencies(Vec<u64>);

impl Latencies {
    pub fn record(&mut self, latency: Duration) {
        self.0.push(latency.as_micros() as u64);
    }

    pub fn extend(&mut self, other: Latencies) {
        self.0.extend(other.0);
    }

    /// p50, p90, p99, p99.9 and the maximum, in milliseconds (nearest rank).
    pub fn percentiles(&mut self) -> Option<[f64; 5]> {
        if self.0.is_empty() {
            return None;
        }
        self.0.sort_unstable();
        let at = |q: f64| {
            let rank = ((q * self.0.len() as f64).ceil() as usize).clamp(1, self.0.len());
            self.0[rank - 1] as f64 / 1000.0
        };
        Some([at(0.50), at(0.90), at(0.99), at(0.999), at(1.0)])
    }

    pub fn summary(&mut self) -> String {
        match self.percentiles() {
            Some([p50, p90, p99, p999, max]) => format!(
                "p50 {p50:.2} ms, p90 {p90:.2} ms, p99 {p99:.2} ms, p99.9 {p999:.2} ms, max {max:.2} ms"
            ),
            None => "no samples".into(),
        }
    }
}
