//! Counters for `/metrics`, in the Prometheus text format: requests by
//! route, method and status with a latency histogram (time to the
//! response head), NAR bytes sent, narinfo hits and misses, uploads.
//!
//! Kept to atomics and one short-held lock; it must not slow a request.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;

use crate::CacheServer;

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 10] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.5, 2.5, 10.0,
];

#[derive(Default)]
struct Series {
    count: u64,
    seconds: f64,
    buckets: [u64; BUCKETS.len()],
}

/// The cache's counters.
#[derive(Default)]
pub(crate) struct Metrics {
    requests: Mutex<BTreeMap<(&'static str, &'static str, u16), Series>>,
    pub(crate) nar_bytes: AtomicU64,
    pub(crate) narinfo_hits: AtomicU64,
    pub(crate) narinfo_misses: AtomicU64,
    pub(crate) uploads_accepted: AtomicU64,
    pub(crate) uploads_rejected: AtomicU64,
}

/// The route a path belongs to (a fixed set, so labels stay few).
fn route_of(path: &str) -> &'static str {
    if path.starts_with("/nar/") {
        "nar"
    } else if path.starts_with("/log/") {
        "log"
    } else if path.ends_with(".narinfo") {
        "narinfo"
    } else if path.ends_with(".ls") {
        "ls"
    } else {
        match path {
            "/nix-cache-info" => "nix-cache-info",
            "/metrics" => "metrics",
            "/health" => "health",
            _ => "other",
        }
    }
}

impl Metrics {
    fn record(&self, route: &'static str, method: &'static str, status: u16, seconds: f64) {
        let Ok(mut map) = self.requests.lock() else {
            return;
        };
        let s = map.entry((route, method, status)).or_default();
        s.count += 1;
        s.seconds += seconds;
        for (i, bound) in BUCKETS.iter().enumerate() {
            if seconds <= *bound {
                s.buckets[i] += 1;
            }
        }
    }

    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// The Prometheus text exposition.
    pub(crate) fn render(&self) -> String {
        let mut out = String::new();
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "# HELP cairn_http_requests_total Requests answered, by route, method and status.\n\
             # TYPE cairn_http_requests_total counter"
        );
        let map = match self.requests.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        for ((route, method, status), s) in map.iter() {
            let _ = writeln!(
                out,
                "cairn_http_requests_total{{route=\"{route}\",method=\"{method}\",status=\"{status}\"}} {}",
                s.count
            );
        }
        let _ = writeln!(
            out,
            "# HELP cairn_http_request_duration_seconds Time to the response head.\n\
             # TYPE cairn_http_request_duration_seconds histogram"
        );
        for ((route, method, status), s) in map.iter() {
            let labels = format!("route=\"{route}\",method=\"{method}\",status=\"{status}\"");
            for (bound, n) in BUCKETS.iter().zip(s.buckets) {
                let _ = writeln!(
                    out,
                    "cairn_http_request_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {n}"
                );
            }
            let _ = writeln!(
                out,
                "cairn_http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}\n\
                 cairn_http_request_duration_seconds_sum{{{labels}}} {}\n\
                 cairn_http_request_duration_seconds_count{{{labels}}} {}",
                s.count, s.seconds, s.count
            );
        }
        drop(map);
        for (name, help, value) in [
            (
                "cairn_http_nar_bytes_sent_total",
                "NAR bytes sent (after compression).",
                get(&self.nar_bytes),
            ),
            (
                "cairn_http_narinfo_hits_total",
                "narinfo requests for paths the store has.",
                get(&self.narinfo_hits),
            ),
            (
                "cairn_http_narinfo_misses_total",
                "narinfo requests for paths it lacks.",
                get(&self.narinfo_misses),
            ),
            (
                "cairn_http_uploads_accepted_total",
                "NAR and narinfo uploads accepted.",
                get(&self.uploads_accepted),
            ),
            (
                "cairn_http_uploads_rejected_total",
                "NAR and narinfo uploads refused.",
                get(&self.uploads_rejected),
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
            );
        }
        out
    }
}

/// Middleware: counts each request and times it to its response head.
pub(crate) async fn track(State(server): State<CacheServer>, req: Request, next: Next) -> Response {
    let route = route_of(req.uri().path());
    // A fixed set of labels: any token is a valid method, and each new
    // label would be a new series kept forever.
    let method = match req.method().as_str() {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "PUT" => "PUT",
        _ => "other",
    };
    let started = Instant::now();
    let response = next.run(req).await;
    server.inner.metrics.record(
        route,
        method,
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    response
}
