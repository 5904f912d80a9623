//! `fusiond --config FILE`: runs one Fusion instance and serves its KV layer over RESP and
//! its metrics over HTTP, until SIGTERM or SIGINT, when it checkpoints and leaves the
//! cluster cleanly.
//!
//! It owns process start-up and shut-down: arguments, logging, the order in which the
//! instance, the KV layer and the services start and stop. The work is in the library.

use clap::Parser;
use fusiond::commands::{Engine, EngineConfig, ServerInfo};
use fusiond::metrics::{Metrics, TRANSFER_ALERT_WINDOW, info_section, serve_http};
use fusiond::server::{ClientLimits, Clients, serve};
use fusiond::store::{KvStore, Store};
use instance::api::{Instance, StartOptions};
use instance::config::{InstanceConfig, ServeConfig};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// Runs one Fusion instance: RESP on `[serve] resp`, Prometheus metrics on `[serve] metrics`.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The instance's configuration file.
    #[arg(long)]
    config: PathBuf,
    /// Check the configuration file, print what it says, and exit.
    #[arg(long)]
    check_config: bool,
}

/// Base of the default RESP port: instance N listens on 127.0.0.1:(6379 + N).
const DEFAULT_RESP_PORT: u16 = 6379;
/// Keys one sweep step examines (about 2,500 a second at the default `expiry_sweep_ms`).
const SWEEP_EXAMINE: usize = 256;
/// How long shut-down waits for clients to finish their current command.
const DRAIN: Duration = Duration::from_secs(10);

fn main() -> ExitCode {
    let args = Args::parse();
    instance::logging::log_to_stderr("info");
    let config = match InstanceConfig::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::from(2);
        }
    };
    let resp = resp_address(&config);
    let payload = instance::format::payload_len(config.cache.block_size);
    let kv_config = match kv_config(&config.serve, payload) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("{}: {e}", config.file.display());
            return ExitCode::from(2);
        }
    };
    if args.check_config {
        println!(
            "{}: instance {} of cluster {:016x}, {} members, storage {}, transport {:?}, \
             resp {resp}, metrics {}, requirepass {}, maxclients {}, lease {} ms, I/O bound {} ms, \
             disk heartbeat every {} ms (still after {} ms), keys up to {} bytes, values up to {} \
             bytes, {} keys written and {} read per transaction, lock wait {} ms",
            config.file.display(),
            config.local.id,
            config.cluster_id.0,
            config.peers.len() + 1,
            config.storage.display(),
            config.transport.kind(),
            config
                .metrics_listen
                .map_or_else(|| "off".to_string(), |a| a.to_string()),
            if config.serve.requirepass.is_some() {
                "set"
            } else {
                "off"
            },
            config.serve.maxclients,
            config.failure.lease.as_millis(),
            config.failure.io_timeout.as_millis(),
            config.failure.disk_interval.as_millis(),
            config.failure.disk_timeout.as_millis(),
            config.serve.max_key_bytes,
            config.serve.max_value_bytes,
            kv_config.max_keys_per_txn,
            kv_config.max_reads_per_txn,
            kv_config.lock_timeout.as_millis(),
        );
        return ExitCode::SUCCESS;
    }
    match run(config, resp, kv_config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// The KV layer's limits from `[serve]`, checked for blocks with `payload` bytes.
fn kv_config(serve: &ServeConfig, payload: usize) -> Result<kv::KvConfig, String> {
    let config = kv::KvConfig {
        // A key of max_key_bytes is stored with its database (a 1024-byte key was refused).
        max_key_len: serve
            .max_key_bytes
            .saturating_add(fusiond::value::KEY_PREFIX),
        // A string of max_value_bytes is stored with its type and expiry.
        max_value_len: serve.max_value_bytes.saturating_add(fusiond::value::HEADER),
        max_keys_per_txn: serve.max_keys_per_transaction,
        max_reads_per_txn: serve.max_reads_per_transaction,
        lock_timeout: serve.lock_wait,
        ..kv::KvConfig::default()
    };
    config.check(payload).map_err(|e| {
        format!(
            "[serve] max_key_bytes {} (stored with {} byte more), max_value_bytes {} \
             (at most {}), max_keys_per_transaction {}: {e}",
            serve.max_key_bytes,
            fusiond::value::KEY_PREFIX,
            serve.max_value_bytes,
            kv::KvConfig::MOST_VALUE_LEN - fusiond::value::HEADER,
            serve.max_keys_per_transaction
        )
    })?;
    Ok(config)
}

/// Opens the KV layer over the started `instance` and serves RESP (and metrics): the engine,
/// the connected clients and the metrics the main loop goes on with.
fn serve_instance(
    instance: &Arc<Instance>,
    kv_config: kv::KvConfig,
    serve_config: &ServeConfig,
    members: usize,
    resp_listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    resp: SocketAddr,
) -> Result<Serving, String> {
    let store =
        Arc::new(KvStore::open(instance.clone(), kv_config).map_err(|e| format!("kv: {e}"))?);
    let clients = Arc::new(Clients::default());
    let metrics = Arc::new(Metrics::new(serve_config.transfer_p99_alert));
    let store_info = Arc::downgrade(&store);
    let engine = Arc::new(Engine::new(
        store,
        EngineConfig {
            requirepass: serve_config
                .requirepass
                .as_ref()
                .map(|p| p.as_bytes().to_vec()),
            max_reply_bytes: serve_config.client_buffer_bytes,
            maxclients: serve_config.maxclients,
            idle_timeout_secs: serve_config.idle_timeout.map_or(0, |t| t.as_secs()),
        },
        Arc::new(InstanceInfo {
            instance: Arc::downgrade(instance),
            store: store_info,
            members,
            clients: clients.clone(),
            metrics: metrics.clone(),
        }),
    ));
    if let Some(listener) = metrics_listener {
        let weak = Arc::downgrade(instance);
        let m = metrics.clone();
        let bound = serve_http(
            listener,
            Arc::new(move || {
                if let Some(i) = weak.upgrade() {
                    m.refresh(&i, members);
                }
                m.encode()
            }),
        )
        .map_err(|e| format!("metrics: {e}"))?;
        tracing::info!(address = %bound, "serving metrics");
    }
    let bound = serve(
        resp_listener,
        engine.clone(),
        ClientLimits {
            maxclients: serve_config.maxclients,
            io_threads: serve_config.io_threads,
            idle_timeout: serve_config.idle_timeout,
            buffer_bytes: serve_config.client_buffer_bytes,
        },
        clients.clone(),
        metrics.clone(),
        serve_config.requirepass.is_some(),
    )
    .map_err(|e| format!("resp on {resp}: {e}"))?;
    tracing::info!(address = %bound, "serving RESP");
    Ok(Serving {
        engine,
        clients,
        metrics,
    })
}

/// What [`serve_instance`] started.
struct Serving {
    engine: Arc<Engine<KvStore>>,
    clients: Arc<Clients>,
    metrics: Arc<Metrics>,
}

/// fusiond cannot serve after the instance started (`why`): it leaves the cluster cleanly
/// (checkpoint, slot marked down) so the others need no recovery, and returns `why`.
fn leave(instance: Arc<Instance>, why: String) -> String {
    match Arc::try_unwrap(instance) {
        Ok(instance) => {
            if let Err(e) = instance.shutdown() {
                tracing::warn!(error = %e, "leaving the cluster failed");
            }
        }
        Err(_) => tracing::warn!("the instance is still in use; exiting without leaving"),
    }
    why
}

fn resp_address(config: &InstanceConfig) -> SocketAddr {
    config.resp_listen.unwrap_or_else(|| {
        let port = DEFAULT_RESP_PORT.saturating_add(config.local.id.as_u16());
        SocketAddr::from((Ipv4Addr::LOCALHOST, port))
    })
}

struct InstanceInfo {
    instance: Weak<Instance>,
    store: Weak<KvStore>,
    members: usize,
    clients: Arc<Clients>,
    metrics: Arc<Metrics>,
}

impl ServerInfo for InstanceInfo {
    fn info(&self) -> String {
        let mut out = self
            .instance
            .upgrade()
            .map(|i| info_section(&i, self.members, &self.metrics))
            .unwrap_or_default();
        if let Some(store) = self.store.upgrade() {
            let s = store.stats();
            out.push_str(&format!(
                "kv_commits:{}\r\nkv_retries:{}\r\nkv_lock_timeouts:{}\r\nkv_deadlocks:{}\r\n",
                s.commits, s.retries, s.lock_timeouts, s.deadlocks
            ));
        }
        out
    }
    fn connected_clients(&self) -> usize {
        self.clients.connected()
    }
    fn save(&self) -> Result<(), String> {
        let instance = self.instance.upgrade().ok_or("the instance stopped")?;
        instance.checkpoint().map_err(|e| e.to_string())
    }
}

fn run(config: InstanceConfig, resp: SocketAddr, kv_config: kv::KvConfig) -> Result<(), String> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, stop.clone())
            .map_err(|e| format!("cannot handle signal {signal}: {e}"))?;
    }
    let members = config.peers.len() + 1;
    let serve_config = config.serve.clone();
    let metrics_listen = config.metrics_listen;
    let id = config.local.id;
    // Bound before the instance starts: a port in use stops fusiond before it joins the
    // cluster (joining and then leaving would make the others reconfigure twice).
    let resp_listener = TcpListener::bind(resp).map_err(|e| format!("resp on {resp}: {e}"))?;
    let metrics_listener = metrics_listen
        .map(|address| TcpListener::bind(address).map_err(|e| format!("metrics on {address}: {e}")))
        .transpose()?;
    let started = Instant::now();
    // A stop asked for while the instance looks for its cluster ends the process at once.
    // The entry may wait up to the connect timeout (a network cut, a wrong address: 60 s),
    // and finishing it would join the cluster only to leave it again (two reconfigurations).
    // Ending an entry is what a kill -9 of it is, which the members handle: its slot says
    // entering, and nothing of this life is a member yet.
    let entering = Arc::new(AtomicBool::new(true));
    {
        let (stop, entering) = (stop.clone(), entering.clone());
        std::thread::Builder::new()
            .name("fusiond-entry-stop".into())
            .spawn(move || {
                while entering.load(Ordering::Relaxed) {
                    if stop.load(Ordering::Relaxed) {
                        tracing::info!(
                            "stop asked for while looking for the cluster: exiting without joining"
                        );
                        std::process::exit(0);
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            })
            .map_err(|e| format!("cannot watch for a stop while starting: {e}"))?;
    }
    let options = StartOptions {
        spin: config.serve.spin,
        ..StartOptions::default()
    };
    let instance = Instance::start_with(config, options).map_err(|e| format!("start: {e}"));
    entering.store(false, Ordering::Relaxed);
    let instance = Arc::new(instance?);
    tracing::info!(instance = %id, elapsed_ms = started.elapsed().as_millis() as u64, "instance started");
    // A failure from here on leaves the cluster cleanly: the others need no recovery.
    let Serving {
        engine,
        clients,
        metrics,
    } = match serve_instance(
        &instance,
        kv_config,
        &serve_config,
        members,
        resp_listener,
        metrics_listener,
        resp,
    ) {
        Ok(serving) => serving,
        Err(e) => {
            // The instance may have stopped meanwhile (fenced, voted out, its lease lapsed
            // while it started): then that is why serving failed, and what to report.
            let why = match instance.stopped() {
                Some(reason) => format!("the instance stopped: {reason} ({e})"),
                None => e,
            };
            return Err(leave(instance, why));
        }
    };

    let sweep_every = serve_config.expiry_sweep;
    let mut next_sweep = sweep_every.map(|every| Instant::now() + every);
    let mut next_sample = Instant::now() + TRANSFER_ALERT_WINDOW / 12;
    while !stop.load(Ordering::Relaxed) {
        if let Some(reason) = instance.stopped() {
            clients.stop();
            return Err(format!("the instance stopped: {reason}"));
        }
        if Instant::now() >= next_sample {
            // The transfer-latency window moves without scrapes too.
            if let Ok(stats) = instance.stats() {
                metrics.recent_transfer_p99(&stats.gcs);
            }
            next_sample = Instant::now() + TRANSFER_ALERT_WINDOW / 12;
        }
        if let (Some(every), Some(due)) = (sweep_every, next_sweep)
            && Instant::now() >= due
        {
            match engine.sweep_expired(SWEEP_EXAMINE) {
                Ok(0) => {}
                Ok(n) => tracing::debug!(removed = n, "expired keys swept"),
                Err(e) => {
                    tracing::warn!(error = %KvStore::error_message(&e), "expiry sweep failed")
                }
            }
            next_sweep = Some(Instant::now() + every);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    tracing::info!("stopping: closing clients, checkpointing, leaving the cluster");
    clients.stop();
    let deadline = Instant::now() + DRAIN;
    while (clients.connected() > 0 || Arc::strong_count(&engine) > 1) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    if let Err(e) = instance.checkpoint() {
        tracing::warn!(error = %e, "checkpoint failed");
    }
    drop(engine);
    match Arc::try_unwrap(instance) {
        Ok(instance) => instance.shutdown().map_err(|e| format!("shutdown: {e}"))?,
        Err(_) => tracing::warn!("clients still hold the instance; exiting without leaving"),
    }
    tracing::info!("stopped");
    Ok(())
}
