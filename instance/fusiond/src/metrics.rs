//! Metrics and health alerts in Prometheus text format, and the HTTP responder for them.
//!
//! This module owns fusiond's metric registry (an explicit `prometheus-client` registry, no
//! globals): the KV command and client metrics it records itself, and the instance's own
//! counters, gauges and latency histograms, one family each (`fusion_redo_commits_total`,
//! `fusion_block_acquisition_seconds{kind}`, ...), copied from
//! [`instance::api::Instance::stats`] at each scrape. Health rules are
//! exported as `fusion_alert{alert,severity}` gauges (1 firing, 0 not), so an operator's
//! Prometheus pages on them with one rule. It must never block the instance: a scrape reads
//! a snapshot of the stats; and the HTTP side reads one bounded request per connection.

use gcs::TransferKind;
use instance::api::Instance;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{DescriptorEncoder, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

type Labels = Vec<(&'static str, String)>;
type HistogramMaker = fn() -> Histogram;

/// The acquisition kinds as exported (`kind` label), with the GCS kind behind each.
pub const KINDS: [(&str, Option<TransferKind>); 5] = [
    ("local", None),
    ("grant", Some(TransferKind::Grant)),
    ("2-way", Some(TransferKind::TwoWay)),
    ("3-way", Some(TransferKind::ThreeWay)),
    ("upgrade", Some(TransferKind::Upgrade)),
];

/// The instance's latency histograms are exported with bucket bounds 2^i ns for i in this
/// range (about 1 µs to 69 s), plus +Inf: the instance's own power-of-two buckets, those
/// below folded into the first.
const EXPORTED_BUCKET_BITS: std::ops::RangeInclusive<u32> = 10..=36;

/// One value of an instance series, as the last refresh read it.
#[derive(Debug, Clone)]
enum Sample {
    Counter(u64),
    Gauge(f64),
    Histogram(Box<gcs::Histogram>),
}

/// One family of the instance's series: its name (without `_total` for counters), help, and
/// a sample per label set.
#[derive(Debug)]
struct Series {
    name: &'static str,
    help: &'static str,
    samples: Vec<(Labels, Sample)>,
}

/// The instance's series as of the last refresh, encoded at each scrape (a collector: the
/// instance keeps its own totals and histograms; copying them is all a scrape needs).
#[derive(Debug, Default)]
struct InstanceSeries {
    series: parking_lot::Mutex<Vec<Series>>,
}

impl Collector for InstanceSeries {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for series in self.series.lock().iter() {
            let Some((_, first)) = series.samples.first() else {
                continue;
            };
            let kind = match first {
                Sample::Counter(_) => MetricType::Counter,
                Sample::Gauge(_) => MetricType::Gauge,
                Sample::Histogram(_) => MetricType::Histogram,
            };
            let mut family = encoder.encode_descriptor(series.name, series.help, None, kind)?;
            for (labels, sample) in &series.samples {
                // An unlabelled series is written bare (`name 1`, not `name{} 1`).
                if labels.is_empty() {
                    encode_sample(&mut family, sample)?;
                } else {
                    encode_sample(&mut family.encode_family(labels)?, sample)?;
                }
            }
        }
        Ok(())
    }
}

fn encode_sample(metric: &mut MetricEncoder, sample: &Sample) -> Result<(), std::fmt::Error> {
    match sample {
        Sample::Counter(n) => metric.encode_counter::<NoLabelSet, _, u64>(n, None),
        Sample::Gauge(v) => metric.encode_gauge(v),
        Sample::Histogram(h) => metric.encode_histogram::<NoLabelSet>(
            h.sum().as_secs_f64(),
            h.count(),
            &exported_buckets(h),
            None,
        ),
    }
}

/// `(upper bound in seconds, count)` per exported bucket (not cumulative), the last +Inf.
fn exported_buckets(h: &gcs::Histogram) -> Vec<(f64, u64)> {
    let (first, last) = (*EXPORTED_BUCKET_BITS.start(), *EXPORTED_BUCKET_BITS.end());
    let mut out: Vec<(f64, u64)> = EXPORTED_BUCKET_BITS
        .map(|bits| ((1u64 << bits) as f64 / 1e9, 0))
        .collect();
    out.push((f64::MAX, 0));
    for (bits, n) in h.buckets() {
        let slot = if bits > last {
            out.len() - 1
        } else {
            bits.saturating_sub(first) as usize
        };
        out[slot].1 += n;
    }
    out
}

/// Builds the instance's series for one refresh.
#[derive(Default)]
struct SeriesBuilder {
    series: Vec<Series>,
}

impl SeriesBuilder {
    fn add(&mut self, name: &'static str, help: &'static str, labels: Labels, sample: Sample) {
        match self.series.iter_mut().find(|s| s.name == name) {
            Some(series) => series.samples.push((labels, sample)),
            None => self.series.push(Series {
                name,
                help,
                samples: vec![(labels, sample)],
            }),
        }
    }

    fn counter(&mut self, name: &'static str, help: &'static str, total: u64) {
        self.add(name, help, Vec::new(), Sample::Counter(total));
    }

    fn gauge(&mut self, name: &'static str, help: &'static str, value: f64) {
        self.add(name, help, Vec::new(), Sample::Gauge(value));
    }

    fn histogram(&mut self, name: &'static str, help: &'static str, h: &gcs::Histogram) {
        self.add(
            name,
            help,
            Vec::new(),
            Sample::Histogram(Box::new(h.clone())),
        );
    }
}

/// The `redo_full` alert warns when this share of the redo thread is in use: the background
/// checkpoint (at `storage.checkpoint_at_redo_percent`, 50% by default) is not keeping up.
pub const REDO_FULL_WARNING: f64 = 0.8;

/// The `redo_full` alert is critical from this share: commits are close to being refused
/// (`redo thread full`).
pub const REDO_FULL_CRITICAL: f64 = 0.9;

/// The severities of the `redo_full` alert firing at `usage` (a share of the thread): none,
/// warning, or warning and critical.
pub fn redo_full_severities(usage: f64) -> impl Iterator<Item = (&'static str, bool)> {
    [
        ("warning", usage >= REDO_FULL_WARNING),
        ("critical", usage >= REDO_FULL_CRITICAL),
    ]
    .into_iter()
}

/// How far back the `transfer_latency` alert looks: a slow minute long ago does not keep it
/// firing.
pub const TRANSFER_ALERT_WINDOW: Duration = Duration::from_secs(60);

/// The transfer kinds the `transfer_latency` alert watches, as INFO names them.
pub const ALERT_KINDS: [(&str, TransferKind); 2] = [
    ("2_way", TransferKind::TwoWay),
    ("3_way", TransferKind::ThreeWay),
];

/// The recent part of cumulative latency histograms (the instance keeps totals since it
/// started): copies of them taken as time goes by, and the difference from the newest copy
/// at least a window old. Copies are kept at most one per `step`, so memory is bounded by
/// `window / step + 2` copies. It reads no clock: callers pass `now`.
#[derive(Debug)]
pub struct LatencyWindow {
    window: Duration,
    step: Duration,
    /// When each copy was taken and the histograms then, oldest first; never empty.
    copies: VecDeque<(Instant, Vec<gcs::Histogram>)>,
}

impl LatencyWindow {
    /// A window over `kinds` histograms that were empty at `now` (so at first it covers
    /// everything since then).
    pub fn new(window: Duration, step: Duration, kinds: usize, now: Instant) -> Self {
        let empty = vec![gcs::Histogram::default(); kinds];
        Self {
            window,
            step: step.max(Duration::from_millis(1)),
            copies: VecDeque::from([(now, empty)]),
        }
    }

    /// Takes the cumulative histograms as they are at `now` and returns what was recorded in
    /// them since the newest copy at least a window old (the window, or a little more when
    /// copies were taken rarely; everything since the start while the window has not passed).
    pub fn observe(&mut self, now: Instant, current: &[gcs::Histogram]) -> Vec<gcs::Histogram> {
        while self
            .copies
            .get(1)
            .is_some_and(|(taken, _)| now.saturating_duration_since(*taken) >= self.window)
        {
            self.copies.pop_front();
        }
        let recent = match self.copies.front() {
            Some((_, base)) => current
                .iter()
                .zip(base)
                .map(|(now, then)| now.since(then))
                .collect(),
            None => current.to_vec(),
        };
        if self
            .copies
            .back()
            .is_none_or(|(taken, _)| now.saturating_duration_since(*taken) >= self.step)
        {
            self.copies.push_back((now, current.to_vec()));
        }
        recent
    }
}

/// Every metric fusiond exports.
#[derive(Debug)]
pub struct Metrics {
    registry: parking_lot::Mutex<Registry>,
    commands: Family<Labels, Counter>,
    command_seconds: Family<Labels, Histogram, HistogramMaker>,
    /// Each command's two series by name, so that counting a command builds no labels (the
    /// families' lookups allocate them): one entry per command name, a fixed set.
    command_series:
        parking_lot::RwLock<std::collections::HashMap<&'static str, (Counter, Histogram)>>,
    clients: Gauge,
    clients_refused: Counter,
    protocol_errors: Counter,
    instance: Arc<InstanceSeries>,
    alerts: Family<Labels, Gauge>,
    transfer_p99_alert: Duration,
    /// The recent 2-way and 3-way transfer latencies the alert judges ([`ALERT_KINDS`]).
    transfers: parking_lot::Mutex<LatencyWindow>,
}

fn command_histogram() -> Histogram {
    // 10 µs to about 10 s.
    Histogram::new(exponential_buckets(1e-5, 2.0, 21))
}

impl Metrics {
    /// A registry with every metric registered. `transfer_p99_alert` is the transfer-latency
    /// bound of the `transfer_latency` alert.
    pub fn new(transfer_p99_alert: Duration) -> Self {
        let mut registry = Registry::default();
        let commands = Family::<Labels, Counter>::default();
        let command_seconds =
            Family::<Labels, Histogram, HistogramMaker>::new_with_constructor(command_histogram);
        let clients = Gauge::default();
        let clients_refused = Counter::default();
        let protocol_errors = Counter::default();
        let instance = Arc::new(InstanceSeries::default());
        let alerts = Family::<Labels, Gauge>::default();
        registry.register(
            "fusion_kv_commands",
            "KV commands executed, by command",
            commands.clone(),
        );
        registry.register(
            "fusion_kv_command_seconds",
            "KV command latency, by command",
            command_seconds.clone(),
        );
        registry.register("fusion_connected_clients", "RESP clients", clients.clone());
        registry.register(
            "fusion_clients_refused",
            "RESP clients refused at maxclients",
            clients_refused.clone(),
        );
        registry.register(
            "fusion_protocol_errors",
            "RESP clients closed for a protocol error or a buffer limit",
            protocol_errors.clone(),
        );
        registry.register_collector(Box::new(Arc::clone(&instance)));
        registry.register(
            "fusion_alert",
            "Health rules: 1 while firing, by alert and severity",
            alerts.clone(),
        );
        Self {
            registry: parking_lot::Mutex::new(registry),
            commands,
            command_seconds,
            command_series: parking_lot::RwLock::default(),
            clients,
            clients_refused,
            protocol_errors,
            instance,
            alerts,
            transfer_p99_alert,
            transfers: parking_lot::Mutex::new(LatencyWindow::new(
                TRANSFER_ALERT_WINDOW,
                TRANSFER_ALERT_WINDOW / 12,
                ALERT_KINDS.len(),
                Instant::now(),
            )),
        }
    }

    /// The p99 of each of [`ALERT_KINDS`] over the last [`TRANSFER_ALERT_WINDOW`] (zero
    /// where none happened), as the `transfer_latency` alert judges them. Called at every
    /// scrape and periodically by the daemon, so the window moves without scrapes too.
    pub fn recent_transfer_p99(&self, stats: &gcs::Metrics) -> [Duration; ALERT_KINDS.len()] {
        let current: Vec<gcs::Histogram> = ALERT_KINDS
            .iter()
            .map(|(_, kind)| stats.latency(*kind).clone())
            .collect();
        let recent = self.transfers.lock().observe(Instant::now(), &current);
        let mut p99 = [Duration::ZERO; ALERT_KINDS.len()];
        for (out, h) in p99.iter_mut().zip(&recent) {
            *out = h.quantile(0.99);
        }
        p99
    }

    /// Records one executed command.
    pub fn command(&self, name: &'static str, latency: Duration) {
        let seconds = latency.as_secs_f64();
        if let Some((count, histogram)) = self.command_series.read().get(name) {
            count.inc();
            histogram.observe(seconds);
            return;
        }
        let labels = vec![("command", name.to_string())];
        let count = self.commands.get_or_create(&labels).clone();
        let histogram = self.command_seconds.get_or_create(&labels).clone();
        count.inc();
        histogram.observe(seconds);
        self.command_series.write().insert(name, (count, histogram));
    }

    /// Sets the number of connected clients.
    pub fn set_connected(&self, n: usize) {
        self.clients.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Counts a client refused at `maxclients`.
    pub fn client_refused(&self) {
        self.clients_refused.inc();
    }

    /// Counts a client closed for a protocol error or a buffer limit.
    pub fn protocol_error(&self) {
        self.protocol_errors.inc();
    }

    fn alert(&self, alert: &str, severity: &str, firing: bool) {
        let labels = vec![
            ("alert", alert.to_string()),
            ("severity", severity.to_string()),
        ];
        self.alerts.get_or_create(&labels).set(i64::from(firing));
    }

    /// Copies the instance's stats into the registry and evaluates the health rules;
    /// returns the alerts firing.
    pub fn refresh(&self, instance: &Instance, configured_members: usize) -> Vec<&'static str> {
        let mut firing = Vec::new();
        let stopped = instance.stopped();
        self.alert("instance_stopped", "critical", stopped.is_some());
        if stopped.is_some() {
            firing.push("instance_stopped");
        }
        let Ok(stats) = instance.stats() else {
            return firing;
        };
        let redo = instance.redo_stats();
        let members_up = stats.members.len();
        let mut out = SeriesBuilder::default();
        for (kind, gcs_kind) in KINDS {
            let count = match gcs_kind {
                None => stats.core.local_grants,
                Some(k) => stats.gcs.count(k),
            };
            let labels: Labels = vec![("kind", kind.to_string())];
            out.add(
                "fusion_block_acquisitions",
                "Block requests of local users granted, by kind",
                labels.clone(),
                Sample::Counter(count),
            );
            if let Some(k) = gcs_kind {
                out.add(
                    "fusion_block_acquisition_seconds",
                    "Request-to-grant latency of block acquisitions, by kind (not local)",
                    labels,
                    Sample::Histogram(Box::new(stats.gcs.latency(k).clone())),
                );
            }
        }
        out.histogram(
            "fusion_flush_wait_seconds",
            "Holder side: a forward received to its block shipped",
            stats.gcs.latency(TransferKind::FlushWait),
        );
        out.histogram(
            "fusion_redo_sync_seconds",
            "Redo syncs: one durable write (write and fdatasync)",
            &redo.sync_latency,
        );
        out.histogram(
            "fusion_lock_wait_seconds",
            "Request-to-grant time of enqueue requests that waited",
            &stats.lock_waits,
        );
        let counters: [(&str, &str, u64); 29] = [
            (
                "fusion_block_grants",
                "Block grants delivered to local users",
                stats.core.grants,
            ),
            (
                "fusion_ges_cache_hits",
                "Enqueues granted from the local lock cache",
                stats.ges.cache_hits,
            ),
            (
                "fusion_ges_redirects",
                "Enqueue requests redirected to a new master",
                stats.ges.redirects,
            ),
            (
                "fusion_ges_deadlocks",
                "Deadlock victims chosen by this instance as coordinator",
                stats.ges.deadlocks,
            ),
            (
                "fusion_ges_rebuilds",
                "Lock directory rebuilds",
                stats.ges.rebuilds,
            ),
            (
                "fusion_gcs_messages_sent",
                "Cache-fusion messages sent",
                stats.gcs.messages_sent,
            ),
            (
                "fusion_gcs_messages_received",
                "Cache-fusion messages received",
                stats.gcs.messages_received,
            ),
            (
                "fusion_gcs_retries",
                "Block requests a master refused for lack of table space",
                stats.gcs.retries,
            ),
            ("fusion_redo_commits", "Commits made durable", redo.commits),
            (
                "fusion_redo_writes",
                "Redo writes (each one write and one fdatasync)",
                redo.writes,
            ),
            (
                "fusion_redo_blocks",
                "4 KiB redo log blocks written",
                redo.blocks,
            ),
            (
                "fusion_redo_full_refusals",
                "Commits refused: the redo thread was full",
                redo.full_refusals,
            ),
            (
                "fusion_cache_hits",
                "Block requests served from this buffer cache",
                stats.core.cache_hits,
            ),
            (
                "fusion_cache_misses",
                "Block requests whose copy was not in this buffer cache",
                stats.core.cache_misses,
            ),
            (
                "fusion_cache_evictions",
                "Clean copies released to make room",
                stats.core.evictions,
            ),
            (
                "fusion_lock_waits",
                "Enqueue requests of local users not granted at once",
                stats.lock_waits.count(),
            ),
            (
                "fusion_lock_timeouts",
                "Enqueue requests of local users that timed out",
                stats.core.lock_timeouts,
            ),
            (
                "fusion_lock_deadlock_victims",
                "Enqueue requests of local users chosen as deadlock victims",
                stats.core.lock_deadlocks,
            ),
            (
                "fusion_ges_enqueue_waits",
                "Enqueue requests this instance, as master, queued behind others",
                stats.ges.waits,
            ),
            (
                "fusion_gcs_blocks_shipped",
                "Block payloads this instance shipped to others",
                stats.gcs.blocks_shipped,
            ),
            (
                "fusion_gcs_ships_held",
                "Ships other instances asked for that cache.ship_hold_us kept back for local users",
                stats.gcs.ships_held,
            ),
            (
                "fusion_gcs_local_grants_in_hold",
                "Local grants of blocks whose ship cache.ship_hold_us kept back",
                stats.gcs.local_hits_in_hold,
            ),
            (
                "fusion_storage_reads",
                "Data block reads",
                stats.storage_reads,
            ),
            (
                "fusion_storage_writes",
                "Data block writes",
                stats.storage_writes,
            ),
            (
                "fusion_reconfigurations",
                "Membership reconfigurations applied",
                stats.cluster.reconfigurations,
            ),
            (
                "fusion_members_suspected",
                "Members suspected of failure",
                stats.cluster.suspected,
            ),
            (
                "fusion_recoveries_started",
                "Instance recoveries started",
                stats.recoveries_started,
            ),
            (
                "fusion_recoveries_done",
                "Instance recoveries completed",
                stats.recoveries_done,
            ),
            (
                "fusion_blocks_recovered",
                "Blocks rebuilt by instance recovery",
                stats.blocks_recovered,
            ),
        ];
        for (name, help, total) in counters {
            out.counter(name, help, total);
        }
        let timing = stats.last_failure;
        let seconds = |d: Option<Duration>| d.map_or(0.0, |d| d.as_secs_f64());
        let gauges: [(&str, &str, f64); 11] = [
            ("fusion_epoch", "The membership epoch", stats.epoch as f64),
            (
                "fusion_members_up",
                "Members of the current epoch",
                members_up as f64,
            ),
            (
                "fusion_members_configured",
                "Members configured",
                configured_members as f64,
            ),
            (
                "fusion_redo_used_bytes",
                "Redo thread in use (checkpoint to end, and reserved)",
                redo.used_bytes as f64,
            ),
            (
                "fusion_redo_size_bytes",
                "Redo thread size",
                redo.thread_bytes as f64,
            ),
            (
                "fusion_redo_usage_ratio",
                "Share of the redo thread in use (0..1)",
                redo.usage(),
            ),
            (
                "fusion_checkpoint_age_seconds",
                "Age of the oldest redo past the checkpoint",
                redo.checkpoint_age.as_secs_f64(),
            ),
            (
                "fusion_blocks_mastered",
                "Blocks whose GCS master state lives here",
                stats.core.mastered_blocks as f64,
            ),
            (
                "fusion_last_failure_suspected_to_reconfigured_seconds",
                "Last failure handled here: first suspicion to new epoch (0 before any)",
                seconds(timing.suspected_to_reconfigured),
            ),
            (
                "fusion_last_failure_reconfigured_to_served_seconds",
                "Last failure handled here: new epoch to blocks served again (0 before any)",
                seconds(timing.reconfigured_to_served),
            ),
            (
                "fusion_last_failure_reconfigured_to_recovered_seconds",
                "Last failure handled here: new epoch to recovery complete (0 before any)",
                seconds(timing.reconfigured_to_recovered),
            ),
        ];
        for (name, help, value) in gauges {
            out.gauge(name, help, value);
        }
        let frames = stats.core.frames;
        for (state, n) in [
            ("all", frames.frames),
            ("free", frames.free),
            ("current", frames.current),
            ("dirty", frames.dirty),
            ("past_image", frames.past_images),
        ] {
            out.add(
                "fusion_cache_frames",
                "Buffer cache frames, by state",
                vec![("state", state.to_string())],
                Sample::Gauge(f64::from(n)),
            );
        }
        *self.instance.series.lock() = out.series;
        let rules = [
            ("member_down", "critical", members_up < configured_members),
            (
                "recovery_running",
                "warning",
                stats.recoveries_started > stats.recoveries_done
                    || stats.gcs_rebuilding
                    || stats.ges_rebuilding,
            ),
            (
                "transfer_latency",
                "warning",
                self.recent_transfer_p99(&stats.gcs)
                    .iter()
                    .any(|p99| *p99 > self.transfer_p99_alert),
            ),
        ];
        for (alert, severity, on) in rules.into_iter().chain(
            redo_full_severities(redo.usage()).map(|(severity, on)| ("redo_full", severity, on)),
        ) {
            self.alert(alert, severity, on);
            if on && !firing.contains(&alert) {
                firing.push(alert);
            }
        }
        firing
    }

    /// The registry in Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry.lock());
        out
    }
}

/// Most bytes of an HTTP request read.
const MAX_HTTP_REQUEST: usize = 8 << 10;

/// Serves `GET /metrics` on `listener` on a background thread. `render` builds the body.
pub fn serve_http(
    listener: TcpListener,
    render: Arc<dyn Fn() -> String + Send + Sync>,
) -> std::io::Result<SocketAddr> {
    let bound = listener.local_addr()?;
    std::thread::Builder::new()
        .name("metrics-http".into())
        .spawn(move || {
            for stream in listener.incoming() {
                match stream {
                    Ok(stream) => {
                        if let Err(e) = answer(stream, render.as_ref()) {
                            tracing::debug!(error = %e, "metrics request failed");
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "metrics accept failed"),
                }
            }
        })?;
    Ok(bound)
}

/// One request per connection: reads the request head (bounded, with a timeout) and
/// answers.
fn answer(
    mut stream: TcpStream,
    render: &(dyn Fn() -> String + Send + Sync),
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut head = Vec::new();
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&chunk[..n]);
        if head.len() > MAX_HTTP_REQUEST {
            return stream.write_all(b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    }
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let mut parts = line.split(|&b| b == b' ');
    let (method, path) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    let (status, content_type, body) = if method != b"GET" {
        (
            "405 Method Not Allowed",
            "text/plain",
            "only GET\n".to_string(),
        )
    } else if path == b"/metrics" || path.starts_with(b"/metrics?") {
        (
            "200 OK",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            render(),
        )
    } else {
        ("404 Not Found", "text/plain", "try /metrics\n".to_string())
    };
    let header = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(header.as_bytes())?;
    stream.write_all(body.as_bytes())
}

/// The `# Fusion` section of `INFO`: epoch, members, block transfers by kind with latency
/// quantiles in microseconds (and the recent p99s the `transfer_latency` alert judges), redo
/// (fullness, sync latency, checkpoint age), buffer cache, enqueue waits, blocks mastered and
/// recovery counters. The demo and `fusionctl status` read it over RESP.
pub fn info_section(instance: &Instance, configured_members: usize, metrics: &Metrics) -> String {
    let mut out = String::from("# Fusion\r\n");
    out.push_str(&format!("instance:{}\r\n", instance.id().index()));
    if let Some(reason) = instance.stopped() {
        out.push_str(&format!(
            "stopped:{}\r\n",
            reason.replace(['\r', '\n'], " ")
        ));
    }
    let Ok(stats) = instance.stats() else {
        return out;
    };
    let redo = instance.redo_stats();
    let up = stats.members.len();
    out.push_str(&format!(
        "epoch:{}\r\nmembers_configured:{configured_members}\r\nmembers_up:{up}\r\nmembers:{}\r\n",
        stats.epoch,
        crate::timeline::member_list(stats.members)
    ));
    for (kind, gcs_kind) in KINDS {
        let key = kind.replace('-', "_");
        match gcs_kind {
            None => out.push_str(&format!(
                "transfer_{key}:count={},p50_us=0,p99_us=0,p999_us=0\r\n",
                stats.core.local_grants
            )),
            Some(k) => out.push_str(&format!(
                "transfer_{key}:{}\r\n",
                latency_fields(stats.gcs.latency(k))
            )),
        }
    }
    // What the `transfer_latency` alert judges: the p99s of the last minute.
    out.push_str(&format!(
        "transfer_recent_p99_us:window_s={}",
        TRANSFER_ALERT_WINDOW.as_secs()
    ));
    for ((kind, _), p99) in ALERT_KINDS
        .iter()
        .zip(metrics.recent_transfer_p99(&stats.gcs))
    {
        out.push_str(&format!(",{kind}={}", p99.as_micros()));
    }
    out.push_str("\r\n");
    let timing = stats.last_failure;
    let ms = |d: Option<Duration>| d.map_or(-1, |d| i64::try_from(d.as_millis()).unwrap_or(-1));
    out.push_str(&format!(
        "redo_commits:{}\r\nredo_writes:{}\r\nredo_blocks:{}\r\nstorage_reads:{}\r\n\
         storage_writes:{}\r\nreconfigurations:{}\r\nrecoveries_started:{}\r\n\
         recoveries_done:{}\r\nblocks_recovered:{}\r\nrecovery_running:{}\r\n\
         last_failure_suspected_to_reconfigured_ms:{}\r\n\
         last_failure_reconfigured_to_served_ms:{}\r\n\
         last_failure_reconfigured_to_recovered_ms:{}\r\n\
         redo_used_bytes:{}\r\nredo_size_bytes:{}\r\nredo_used_percent:{:.1}\r\n\
         redo_sync:{}\r\nredo_full_refusals:{}\r\ncheckpoint_age_ms:{}\r\n\
         cache_hits:{}\r\ncache_misses:{}\r\ncache_evictions:{}\r\nblocks_mastered:{}\r\n\
         lock_waits:{}\r\nlock_timeouts:{}\r\nlock_deadlock_victims:{}\r\n\
         ges_enqueue_waits:{}\r\n",
        redo.commits,
        redo.writes,
        redo.blocks,
        stats.storage_reads,
        stats.storage_writes,
        stats.cluster.reconfigurations,
        stats.recoveries_started,
        stats.recoveries_done,
        stats.blocks_recovered,
        u8::from(
            stats.recoveries_started > stats.recoveries_done
                || stats.gcs_rebuilding
                || stats.ges_rebuilding
        ),
        ms(timing.suspected_to_reconfigured),
        ms(timing.reconfigured_to_served),
        ms(timing.reconfigured_to_recovered),
        redo.used_bytes,
        redo.thread_bytes,
        // Rounded down, so a reader's thresholds (fusionctl's alerts) never fire early.
        (redo.usage() * 1000.0).floor() / 10.0,
        latency_fields(&redo.sync_latency),
        redo.full_refusals,
        redo.checkpoint_age.as_millis(),
        stats.core.cache_hits,
        stats.core.cache_misses,
        stats.core.evictions,
        stats.core.mastered_blocks,
        latency_fields(&stats.lock_waits),
        stats.core.lock_timeouts,
        stats.core.lock_deadlocks,
        stats.ges.waits,
    ));
    if let Ok(events) = instance.events() {
        out.push_str(&crate::timeline::info_lines(&events));
    }
    out
}

/// `count=N,p50_us=N,p99_us=N,p999_us=N`, as INFO shows a latency histogram.
fn latency_fields(h: &gcs::Histogram) -> String {
    format!(
        "count={},p50_us={},p99_us={},p999_us={}",
        h.count(),
        h.quantile(0.5).as_micros(),
        h.quantile(0.99).as_micros(),
        h.quantile(0.999).as_micros()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn histogram(values: &[(Duration, usize)]) -> gcs::Histogram {
        let mut h = gcs::Histogram::default();
        for &(value, n) in values {
            for _ in 0..n {
                h.record(value);
            }
        }
        h
    }

    #[test]
    fn a_slow_minute_long_ago_leaves_the_window() {
        let start = Instant::now();
        let at = |s: u64| start + Duration::from_secs(s);
        let mut window =
            LatencyWindow::new(Duration::from_secs(60), Duration::from_secs(5), 1, start);
        let slow = Duration::from_millis(200);
        let fast = Duration::from_micros(100);
        // The first minute is slow: the window sees it.
        let mut total = histogram(&[(slow, 1000)]);
        for s in (5..=60).step_by(5) {
            let recent = window.observe(at(s), std::slice::from_ref(&total));
            assert!(
                recent[0].quantile(0.99) >= Duration::from_millis(100),
                "at {s} s"
            );
        }
        // Then transfers are fast; the cumulative p99 stays slow for ever ...
        for s in (65..=200).step_by(5) {
            total = {
                let mut h = total.clone();
                for _ in 0..1000 {
                    h.record(fast);
                }
                h
            };
            let recent = window.observe(at(s), std::slice::from_ref(&total));
            if s >= 130 {
                // ... but a minute later the window holds only the fast ones.
                assert_eq!(recent[0].count(), 12_000, "at {s} s");
                assert!(
                    recent[0].quantile(0.99) < Duration::from_millis(1),
                    "at {s} s"
                );
            }
        }
        assert!(total.quantile(0.99) >= Duration::from_millis(100));
        // Copies are bounded by the window over the step.
        assert!(window.copies.len() <= 60 / 5 + 2, "{}", window.copies.len());
    }

    #[test]
    fn rare_looks_cover_at_least_the_window() {
        let start = Instant::now();
        let mut window =
            LatencyWindow::new(Duration::from_secs(60), Duration::from_secs(5), 1, start);
        let slow = histogram(&[(Duration::from_millis(200), 10)]);
        let recent = window.observe(start + Duration::from_secs(10), std::slice::from_ref(&slow));
        assert_eq!(recent[0].count(), 10);
        // Nothing new for ten minutes: the window is empty, not the slow values again.
        let recent = window.observe(
            start + Duration::from_secs(600),
            std::slice::from_ref(&slow),
        );
        assert_eq!(recent[0].count(), 0);
        assert_eq!(recent[0].quantile(0.99), Duration::ZERO);
    }
}
