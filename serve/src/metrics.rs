//! What `GET /metrics` reports, in Prometheus' text format: requests by route and status
//! code, errors by code, request latency and batch size histograms, images scored, and
//! whether the model is ready.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// Latency buckets, in seconds.
const LATENCY: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Batch size buckets.
const BATCH: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

/// The server's counters.
#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
    latency: Mutex<BTreeMap<&'static str, Histogram>>,
    batches: Mutex<Option<Histogram>>,
    images: AtomicU64,
    /// Whether the model is loaded and warmed.
    pub ready: AtomicBool,
}

struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, value: f64) {
        for (bound, count) in self.bounds.iter().zip(&mut self.counts) {
            if value <= *bound {
                *count += 1;
            }
        }
        self.sum += value;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (bound, count) in self.bounds.iter().zip(&self.counts) {
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {count}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.count
        );
        let braces = |s: &str| {
            if s.is_empty() {
                String::new()
            } else {
                format!("{{{s}}}")
            }
        };
        let _ = writeln!(out, "{name}_sum{} {}", braces(labels), self.sum);
        let _ = writeln!(out, "{name}_count{} {}", braces(labels), self.count);
    }
}

impl Metrics {
    /// Counts a request to `route` answered with `code` after `elapsed`.
    pub fn request(&self, route: &'static str, code: u16, elapsed: Duration) {
        *self
            .requests
            .lock()
            .expect("metrics lock")
            .entry((route, code))
            .or_default() += 1;
        if route == "infer" || route == "predictions" {
            self.latency
                .lock()
                .expect("metrics lock")
                .entry(route)
                .or_insert_with(|| Histogram::new(LATENCY))
                .observe(elapsed.as_secs_f64());
        }
    }

    /// Counts one forward pass over `n` images.
    pub fn batch(&self, n: usize) {
        self.batches
            .lock()
            .expect("metrics lock")
            .get_or_insert_with(|| Histogram::new(BATCH))
            .observe(n as f64);
        self.images.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let requests = self.requests.lock().expect("metrics lock").clone();
        out.push_str("# HELP kiln_serve_requests_total Requests answered, by route and status code.\n# TYPE kiln_serve_requests_total counter\n");
        for ((route, code), n) in &requests {
            let _ = writeln!(
                out,
                "kiln_serve_requests_total{{route=\"{route}\",code=\"{code}\"}} {n}"
            );
        }
        let mut errors: BTreeMap<u16, u64> = BTreeMap::new();
        for ((_, code), n) in &requests {
            if *code >= 400 {
                *errors.entry(*code).or_default() += n;
            }
        }
        out.push_str("# HELP kiln_serve_errors_total Requests answered with an error, by status code.\n# TYPE kiln_serve_errors_total counter\n");
        for (code, n) in errors {
            let _ = writeln!(out, "kiln_serve_errors_total{{code=\"{code}\"}} {n}");
        }
        out.push_str("# HELP kiln_serve_request_duration_seconds Time to answer an inference request.\n# TYPE kiln_serve_request_duration_seconds histogram\n");
        for (route, histogram) in self.latency.lock().expect("metrics lock").iter() {
            histogram.render(
                &mut out,
                "kiln_serve_request_duration_seconds",
                &format!("route=\"{route}\""),
            );
        }
        out.push_str("# HELP kiln_serve_batch_size Images in each forward pass.\n# TYPE kiln_serve_batch_size histogram\n");
        self.batches
            .lock()
            .expect("metrics lock")
            .get_or_insert_with(|| Histogram::new(BATCH))
            .render(&mut out, "kiln_serve_batch_size", "");
        let _ = write!(
            out,
            "# HELP kiln_serve_images_total Images scored.\n# TYPE kiln_serve_images_total counter\nkiln_serve_images_total {}\n\
             # HELP kiln_serve_ready Whether the model is loaded and warmed.\n# TYPE kiln_serve_ready gauge\nkiln_serve_ready {}\n",
            self.images.load(Ordering::Relaxed),
            u8::from(self.ready.load(Ordering::Relaxed))
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_cumulative_buckets() {
        let m = Metrics::default();
        m.request("infer", 200, Duration::from_millis(3));
        m.request("infer", 400, Duration::from_millis(30));
        m.batch(3);
        let text = m.render();
        assert!(text.contains("kiln_serve_requests_total{route=\"infer\",code=\"200\"} 1"));
        assert!(text.contains("kiln_serve_errors_total{code=\"400\"} 1"));
        assert!(text.contains(
            "kiln_serve_request_duration_seconds_bucket{route=\"infer\",le=\"0.005\"} 1"
        ));
        assert!(
            text.contains(
                "kiln_serve_request_duration_seconds_bucket{route=\"infer\",le=\"+Inf\"} 2"
            )
        );
        assert!(text.contains("kiln_serve_batch_size_bucket{le=\"2\"} 0"));
        assert!(text.contains("kiln_serve_batch_size_bucket{le=\"4\"} 1"));
        assert!(text.contains("kiln_serve_images_total 3"));
    }
}
