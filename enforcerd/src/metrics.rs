//! Prometheus metrics: what the daemon decided and reported, what the kernel counted, and the
//! state of the profiles, served as OpenMetrics text on `GET /metrics` (docs/metrics.md).
//!
//! Two kinds of values live here:
//! - the daemon's own counters and gauges ([`Metrics::decision`], [`Metrics::reported`],
//!   [`Metrics::profiles_loaded`], ...), prometheus-client metrics updated in place;
//! - the kernel's counters, totals the kernel keeps per CPU and the daemon reads about once a
//!   second ([`Metrics::kernel`]). They are not ours to increment: the last snapshot is kept
//!   whole and a [`Collector`] encodes it at scrape time as constant counters, so one scrape
//!   always shows one snapshot (the per-hook identity in docs/metrics.md holds across its
//!   series).
//!
//! Encoding is prometheus-client's OpenMetrics text encoder; nothing here formats exposition
//! text by hand.

use std::convert::Infallible;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::{Registry, Unit};

/// Prefix of every metric name.
const PREFIX: &str = "enforcerd";

/// Content type of the exposition (OpenMetrics text 1.0.0, as prometheus-client encodes it).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The path the endpoint serves.
pub const PATH: &str = "/metrics";

/// Connections served at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 32;

/// How long a client may take to send a request's headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Per-hook totals of the kernel's per-CPU counters (exact; read from the kernel by the daemon).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelHookCounts {
    pub allowed: u64,
    pub denied: u64,
    pub killed: u64,
    pub audited: u64,
    pub dropped: u64,
    pub aggregated: u64,
}

/// A snapshot the daemon takes about once a second.
#[derive(Clone, Debug, Default)]
pub struct KernelSnapshot {
    /// (hook name: "exec" | "file" | "connect", counts)
    pub hooks: Vec<(&'static str, KernelHookCounts)>,
    /// Bytes of decision records waiting in the BPF ring buffer, and its size.
    pub ringbuf_used_bytes: u64,
    pub ringbuf_size_bytes: u64,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    hook: String,
    decision: String,
    profile: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HookLabels {
    hook: String,
}

/// Hooks whose reported-records series exist (at 0) from the start, so that `rate()` sees the
/// first increment and the per-hook identity has all its terms before the first record.
const HOOKS: [&str; 3] = ["exec", "file", "connect"];

/// The daemon's metrics and their registry. `Send + Sync`: share it in an `Arc`.
pub struct Metrics {
    registry: Registry,
    decisions: Family<DecisionLabels, Counter>,
    reported: Family<HookLabels, Counter>,
    profiles_loaded: Gauge<u64, AtomicU64>,
    profile_errors: Counter,
    reloads: Counter,
    kernel: Arc<KernelCollector>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix(PREFIX);
        let decisions = Family::<DecisionLabels, Counter>::default();
        let reported = Family::<HookLabels, Counter>::default();
        let profiles_loaded = Gauge::<u64, AtomicU64>::default();
        let profile_errors = Counter::default();
        let reloads = Counter::default();
        let kernel = Arc::new(KernelCollector::default());

        // `register` appends the full stop to the help text.
        registry.register(
            "decisions",
            "Decisions the daemon reported (decision deny, kill or audit), by hook, decision \
             and profile; a summary of N identical decisions the kernel folded counts N",
            decisions.clone(),
        );
        registry.register(
            "events_reported",
            "Decision records the daemon read from the kernel ring buffer, by hook",
            reported.clone(),
        );
        registry.register(
            "profiles_loaded",
            "Profiles currently enforced",
            profiles_loaded.clone(),
        );
        registry.register(
            "profile_errors",
            "Profile files refused (bad signature, invalid content, ...), which are then not \
             enforced; the daemon log says which and why",
            profile_errors.clone(),
        );
        registry.register(
            "reloads",
            "Profile reloads performed (start, SIGHUP, change in the profile directory)",
            reloads.clone(),
        );
        registry.register_collector(Box::new(Arc::clone(&kernel)));

        for hook in HOOKS {
            drop(reported.get_or_create(&HookLabels {
                hook: hook.to_owned(),
            }));
        }

        Metrics {
            registry,
            decisions,
            reported,
            profiles_loaded,
            profile_errors,
            reloads,
            kernel,
        }
    }

    /// A decision line was reported: `count` decisions (1 for a single decision, N for a summary of N folded repeats).
    pub fn decision(&self, hook: &str, decision: &str, profile: &str, count: u64) {
        let labels = DecisionLabels {
            hook: hook.to_owned(),
            decision: decision.to_owned(),
            profile: profile.to_owned(),
        };
        self.decisions.get_or_create(&labels).inc_by(count);
    }

    /// One decision record was read from the kernel's ring buffer.
    pub fn reported(&self, hook: &str) {
        let labels = HookLabels {
            hook: hook.to_owned(),
        };
        self.reported.get_or_create(&labels).inc();
    }

    /// Replace the kernel counter values with this snapshot (they are monotonic totals kept by the kernel).
    pub fn kernel(&self, snapshot: &KernelSnapshot) {
        let mut last = self
            .kernel
            .last
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match last.as_mut() {
            Some(last) => last.clone_from(snapshot),
            None => *last = Some(snapshot.clone()),
        }
    }

    /// Profiles currently enforced.
    pub fn profiles_loaded(&self, n: u64) {
        self.profiles_loaded.set(n);
    }

    /// Profile files refused (bad signature, bad content, ...) — add n.
    pub fn profile_errors(&self, n: u64) {
        self.profile_errors.inc_by(n);
    }

    /// Reloads performed (start, SIGHUP, directory change) — add one.
    pub fn reload(&self) {
        self.reloads.inc();
    }

    /// The exposition text.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail, and neither can the encoders of our metrics; should
        // one ever, the text lacks its `# EOF` and Prometheus rejects the scrape.
        if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            tracing::error!(error = %e, "metrics: encoding failed");
        }
        text
    }
}

// The daemon shares one `Metrics` between its tasks and the server thread.
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<Metrics>();
};

/// The kernel's counters as of the last snapshot; encoded at scrape time. Nothing is exposed
/// before the first snapshot (no kernel data is not the same as zero).
#[derive(Debug, Default)]
struct KernelCollector {
    last: Mutex<Option<KernelSnapshot>>,
}

impl Collector for KernelCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(snapshot) = last.as_ref() else {
            return Ok(());
        };
        // Help texts written here get no automatic full stop.
        if !snapshot.hooks.is_empty() {
            let mut family = encoder.encode_descriptor(
                "kernel_decisions",
                "Decisions the kernel programs made, by hook and decision (allow, deny, kill, \
                 audit), as the kernel counts them: every decision, including those whose \
                 record was folded into a summary or dropped.",
                None,
                MetricType::Counter,
            )?;
            for (hook, c) in &snapshot.hooks {
                for (decision, value) in [
                    ("allow", c.allowed),
                    ("deny", c.denied),
                    ("kill", c.killed),
                    ("audit", c.audited),
                ] {
                    let labels = [("hook", *hook), ("decision", decision)];
                    ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
                }
            }
            per_hook(
                &mut encoder,
                "events_aggregated",
                "Decisions the kernel folded into a summary of identical decisions instead of \
                 writing a record, by hook; the summaries reach the report as lines with a count.",
                &snapshot.hooks,
                |c| c.aggregated,
            )?;
            per_hook(
                &mut encoder,
                "events_dropped",
                "Decision records lost because the kernel ring buffer was full, by hook; the \
                 decisions took effect but were never reported. Should stay 0.",
                &snapshot.hooks,
                |c| c.dropped,
            )?;
        }
        let used = encoder.encode_descriptor(
            "ringbuf_used",
            "Bytes of decision records waiting in the kernel ring buffer for the daemon to read \
             them; records are dropped when it is full.",
            Some(&Unit::Bytes),
            MetricType::Gauge,
        )?;
        ConstGauge::new(snapshot.ringbuf_used_bytes).encode(used)?;
        let size = encoder.encode_descriptor(
            "ringbuf_size",
            "Size of the kernel ring buffer for decision records.",
            Some(&Unit::Bytes),
            MetricType::Gauge,
        )?;
        ConstGauge::new(snapshot.ringbuf_size_bytes).encode(size)?;
        Ok(())
    }
}

/// Encodes one kernel counter with a `hook` label.
fn per_hook(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    hooks: &[(&'static str, KernelHookCounts)],
    value: impl Fn(&KernelHookCounts) -> u64,
) -> Result<(), fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (hook, c) in hooks {
        let labels = [("hook", *hook)];
        ConstCounter::new(value(c)).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// Binds `addr` now (so a bad address is an error the caller can report before it says "ready"),
/// then serves `GET /metrics` (200 with the exposition text and prometheus-client's OpenMetrics content type)
/// on a dedicated thread named "metrics" with its own current-thread tokio runtime; any other path is 404,
/// any other method 405. Returns the bound address (addr may use port 0).
pub fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> std::io::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind(addr)?;
    let bound = listener.local_addr()?;
    listener.set_nonblocking(true)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()?;
    // Register the socket with this runtime's reactor here, so a failure is the caller's error.
    let listener = {
        let _in_runtime = runtime.enter();
        tokio::net::TcpListener::from_std(listener)?
    };
    std::thread::Builder::new()
        .name("metrics".to_owned())
        .spawn(move || runtime.block_on(accept_loop(listener, metrics)))?;
    Ok(bound)
}

async fn accept_loop(listener: tokio::net::TcpListener, metrics: Arc<Metrics>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    loop {
        // Never closed; the permit is held for the connection's lifetime.
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _peer)) => stream,
            Err(e) => {
                // E.g. out of file descriptors: wait rather than spin.
                tracing::warn!(error = %e, "metrics: accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let metrics = Arc::clone(&metrics);
        let connection = http.serve_connection(
            TokioIo::new(stream),
            service_fn(move |request: Request<Incoming>| {
                let response = respond(&metrics, &request);
                async move { Ok::<_, Infallible>(response) }
            }),
        );
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "metrics: connection ended with an error");
            }
            drop(slot);
        });
    }
}

fn respond(metrics: &Metrics, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    if request.uri().path() != PATH {
        return plain(StatusCode::NOT_FOUND, "not found\n");
    }
    if request.method() != Method::GET {
        let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET"));
        return response;
    }
    let mut response = Response::new(Full::new(Bytes::from(metrics.encode())));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    response
}

fn plain(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::io::{Read, Write};

    /// The samples of an exposition: series (name and labels, as written) -> value.
    fn samples(text: &str) -> BTreeMap<String, String> {
        text.lines()
            .filter(|line| !line.starts_with('#') && !line.is_empty())
            .map(|line| {
                let (series, value) = line.rsplit_once(' ').expect("a sample line has a value");
                (series.to_owned(), value.to_owned())
            })
            .collect()
    }

    fn value(text: &str, series: &str) -> Option<String> {
        samples(text).get(series).cloned()
    }

    fn snapshot() -> KernelSnapshot {
        KernelSnapshot {
            hooks: vec![
                (
                    "exec",
                    KernelHookCounts {
                        allowed: 100,
                        denied: 2,
                        killed: 1,
                        audited: 0,
                        dropped: 0,
                        aggregated: 0,
                    },
                ),
                (
                    "file",
                    KernelHookCounts {
                        allowed: 5000,
                        denied: 40,
                        killed: 0,
                        audited: 7,
                        dropped: 3,
                        aggregated: 30,
                    },
                ),
            ],
            ringbuf_used_bytes: 4096,
            ringbuf_size_bytes: 1 << 20,
        }
    }

    #[test]
    fn daemon_counters_carry_their_labels_and_values() {
        let m = Metrics::new();
        m.decision("file", "deny", "web", 1);
        m.decision("file", "deny", "web", 2);
        m.decision("exec", "kill", "db", 1);
        m.decision("connect", "audit", "web", 5);
        m.reported("file");
        m.reported("file");
        m.reported("exec");
        m.profiles_loaded(4);
        m.profile_errors(2);
        m.profile_errors(1);
        m.reload();
        m.reload();
        let text = m.encode();
        let s = samples(&text);
        let expect = [
            (
                r#"enforcerd_decisions_total{hook="file",decision="deny",profile="web"}"#,
                "3",
            ),
            (
                r#"enforcerd_decisions_total{hook="exec",decision="kill",profile="db"}"#,
                "1",
            ),
            (
                r#"enforcerd_decisions_total{hook="connect",decision="audit",profile="web"}"#,
                "5",
            ),
            (r#"enforcerd_events_reported_total{hook="file"}"#, "2"),
            (r#"enforcerd_events_reported_total{hook="exec"}"#, "1"),
            (r#"enforcerd_events_reported_total{hook="connect"}"#, "0"),
            ("enforcerd_profiles_loaded", "4"),
            ("enforcerd_profile_errors_total", "3"),
            ("enforcerd_reloads_total", "2"),
        ];
        for (series, want) in expect {
            assert_eq!(
                s.get(series).map(String::as_str),
                Some(want),
                "{series} in\n{text}"
            );
        }
        assert_eq!(
            s.len(),
            expect.len(),
            "no other samples before a kernel snapshot:\n{text}"
        );
        for line in [
            "# TYPE enforcerd_decisions counter",
            "# TYPE enforcerd_events_reported counter",
            "# TYPE enforcerd_profiles_loaded gauge",
            "# TYPE enforcerd_profile_errors counter",
            "# TYPE enforcerd_reloads counter",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
        assert!(
            text.lines()
                .any(|l| l.starts_with("# HELP enforcerd_events_reported Decision records")),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn kernel_counters_are_the_last_snapshot() {
        let m = Metrics::new();
        assert!(!m.encode().contains("enforcerd_kernel_decisions"));
        assert!(!m.encode().contains("enforcerd_ringbuf"));

        m.kernel(&snapshot());
        let text = m.encode();
        let expect = [
            (
                r#"enforcerd_kernel_decisions_total{hook="exec",decision="allow"}"#,
                "100",
            ),
            (
                r#"enforcerd_kernel_decisions_total{hook="exec",decision="deny"}"#,
                "2",
            ),
            (
                r#"enforcerd_kernel_decisions_total{hook="exec",decision="kill"}"#,
                "1",
            ),
            (
                r#"enforcerd_kernel_decisions_total{hook="exec",decision="audit"}"#,
                "0",
            ),
            (
                r#"enforcerd_kernel_decisions_total{hook="file",decision="allow"}"#,
                "5000",
            ),
            (
                r#"enforcerd_kernel_decisions_total{hook="file",decision="deny"}"#,
                "40",
            ),
            (
                r#"enforcerd_kernel_decisions_total{hook="file",decision="kill"}"#,
                "0",
            ),
            (
                r#"enforcerd_kernel_decisions_total{hook="file",decision="audit"}"#,
                "7",
            ),
            (r#"enforcerd_events_aggregated_total{hook="exec"}"#, "0"),
            (r#"enforcerd_events_aggregated_total{hook="file"}"#, "30"),
            (r#"enforcerd_events_dropped_total{hook="exec"}"#, "0"),
            (r#"enforcerd_events_dropped_total{hook="file"}"#, "3"),
            ("enforcerd_ringbuf_used_bytes", "4096"),
            ("enforcerd_ringbuf_size_bytes", "1048576"),
        ];
        for (series, want) in expect {
            assert_eq!(
                value(&text, series).as_deref(),
                Some(want),
                "{series} in\n{text}"
            );
        }
        for line in [
            "# TYPE enforcerd_kernel_decisions counter",
            "# TYPE enforcerd_events_aggregated counter",
            "# TYPE enforcerd_events_dropped counter",
            "# TYPE enforcerd_ringbuf_used_bytes gauge",
            "# UNIT enforcerd_ringbuf_used_bytes bytes",
            "# TYPE enforcerd_ringbuf_size_bytes gauge",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
        // Each family is described once, before its samples.
        assert_eq!(
            text.matches("# TYPE enforcerd_kernel_decisions ").count(),
            1
        );
        assert!(text.ends_with("# EOF\n"), "{text}");

        // A later snapshot replaces the values rather than adding to them.
        let mut later = snapshot();
        later.hooks[1].1.denied = 41;
        later.hooks.push((
            "connect",
            KernelHookCounts {
                denied: 9,
                ..KernelHookCounts::default()
            },
        ));
        later.ringbuf_used_bytes = 0;
        m.kernel(&later);
        let text = m.encode();
        let expect = [
            (
                r#"enforcerd_kernel_decisions_total{hook="file",decision="deny"}"#,
                "41",
            ),
            (
                r#"enforcerd_kernel_decisions_total{hook="exec",decision="deny"}"#,
                "2",
            ),
            (
                r#"enforcerd_kernel_decisions_total{hook="connect",decision="deny"}"#,
                "9",
            ),
            (r#"enforcerd_events_dropped_total{hook="connect"}"#, "0"),
            ("enforcerd_ringbuf_used_bytes", "0"),
        ];
        for (series, want) in expect {
            assert_eq!(
                value(&text, series).as_deref(),
                Some(want),
                "{series} in\n{text}"
            );
        }
    }

    #[test]
    fn label_values_are_escaped() {
        let m = Metrics::new();
        m.decision("file", "deny", "we\"b\\x\ny", 1);
        let text = m.encode();
        assert_eq!(
            value(
                &text,
                r#"enforcerd_decisions_total{hook="file",decision="deny",profile="we\"b\\x\ny"}"#
            )
            .as_deref(),
            Some("1"),
            "{text}"
        );
    }

    /// One HTTP/1.1 request on a fresh connection: (status line, headers, body).
    fn request(addr: SocketAddr, method: &str, path: &str) -> (String, String, String) {
        let mut stream = std::net::TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("set timeout");
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )
        .expect("write request");
        let mut response = String::new();
        stream.read_to_string(&mut response).expect("read response");
        let (head, body) = response.split_once("\r\n\r\n").expect("a head and a body");
        let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
        (
            status.to_owned(),
            headers.to_ascii_lowercase(),
            body.to_owned(),
        )
    }

    #[test]
    fn serves_get_metrics_and_nothing_else() {
        let metrics = Arc::new(Metrics::new());
        metrics.decision("file", "deny", "web", 3);
        metrics.kernel(&snapshot());
        let addr = serve(
            "127.0.0.1:0".parse().expect("an address"),
            Arc::clone(&metrics),
        )
        .expect("serve");
        assert_ne!(addr.port(), 0);

        let (status, headers, body) = request(addr, "GET", "/metrics");
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert!(
            headers.contains(&format!("content-type: {CONTENT_TYPE}")),
            "{headers}"
        );
        assert_eq!(
            value(
                &body,
                r#"enforcerd_decisions_total{hook="file",decision="deny",profile="web"}"#
            )
            .as_deref(),
            Some("3"),
            "{body}"
        );
        assert!(body.ends_with("# EOF\n"), "{body}");

        // Scrapes see updates.
        metrics.reload();
        let (_, _, body) = request(addr, "GET", "/metrics?x=1");
        assert_eq!(
            value(&body, "enforcerd_reloads_total").as_deref(),
            Some("1")
        );

        let (status, _, _) = request(addr, "GET", "/");
        assert_eq!(status, "HTTP/1.1 404 Not Found");
        let (status, _, _) = request(addr, "GET", "/metrics/x");
        assert_eq!(status, "HTTP/1.1 404 Not Found");
        let (status, headers, _) = request(addr, "POST", "/metrics");
        assert_eq!(status, "HTTP/1.1 405 Method Not Allowed");
        assert!(headers.contains("allow: get"), "{headers}");
    }

    #[test]
    fn serve_reports_a_bad_address() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = taken.local_addr().expect("address");
        let err = serve(addr, Arc::new(Metrics::new())).expect_err("address in use");
        assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
    }
}
