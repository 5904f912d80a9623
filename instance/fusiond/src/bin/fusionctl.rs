//! `fusionctl`: operator commands for a Fusion cluster.
//!
//! `create` formats shared storage for a new cluster; `status` asks every instance of the
//! cluster over RESP and prints members, epoch, who is up, transfers by kind, redo space and
//! sync latency, buffer cache, enqueue waits, blocks mastered, recovery progress and the
//! alerts firing, exiting non-zero when the cluster is not
//! healthy; `gen-secret` writes a new cluster secret readable by its owner only.
//!
//! It owns argument parsing and messages; the work is in `instance::format` and in the
//! instances themselves (`INFO`). It must never destroy data without `--force`.

use clap::{Parser, Subcommand};
use fusiond::metrics::redo_full_severities;
use instance::config::InstanceConfig;
use instance::format::{self, ClusterSpec, DEFAULT_BLOCK_SIZE, DEFAULT_REDO_THREAD_SIZE};
use instance::storage::{self, StorageOptions};
use interconnect::ClusterId;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// `println!` that gives up quietly when stdout is closed (`fusionctl status | head`):
/// `println!` panics on a broken pipe, and Rust programs ignore SIGPIPE.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

/// Operator commands for a Fusion cluster.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Format shared storage for a new cluster.
    Create {
        /// Shared storage: a regular file (created if missing) or a block device.
        #[arg(long)]
        path: PathBuf,
        /// The cluster's id (decimal, or hex with 0x).
        #[arg(long, value_parser = parse_cluster_id)]
        cluster_id: u64,
        /// Most instances in the cluster, 1..=64 (one slot and redo thread each).
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..=64))]
        instances: u16,
        /// Bytes to format, e.g. 1GiB, 512MiB, 10G; default: the whole file or device.
        #[arg(long, value_parser = parse_size)]
        size: Option<u64>,
        /// Data block size, a power of two in 4096..=32768.
        #[arg(long, value_parser = parse_block_size, default_value_t = DEFAULT_BLOCK_SIZE)]
        block_size: u32,
        /// Redo thread size per instance, at least 4MiB.
        #[arg(long, value_parser = parse_size, default_value_t = DEFAULT_REDO_THREAD_SIZE)]
        redo_size: u64,
        /// Overwrite storage that holds a cluster or other data.
        #[arg(long)]
        force: bool,
    },
    /// Ask every instance of the cluster how it is; exit 1 when the cluster is not healthy.
    Status {
        /// Any instance's configuration file (it lists every member).
        #[arg(long)]
        config: PathBuf,
    },
    /// Write a new cluster secret (hex of random bytes) to a file only its owner can read.
    GenSecret {
        /// The file to create.
        #[arg(long)]
        out: PathBuf,
        /// Random bytes in the secret, at least 32.
        #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u16).range(32..=4096))]
        bytes: u16,
        /// Replace an existing file.
        #[arg(long)]
        force: bool,
    },
}

/// `1GiB`, `512MiB`, `64k`, `4096`: binary units (k/K/KiB = 1024, M/MiB, G/GiB, T/TiB).
fn parse_size(value: &str) -> Result<u64, String> {
    let bad = || format!("{value:?} is not a size such as 1GiB, 512MiB or 4096");
    let split = value
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(value.len());
    let (digits, unit) = value.split_at(split);
    let number: u64 = digits.parse().map_err(|_| bad())?;
    let shift = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return Err(bad()),
    };
    number.checked_mul(1u64 << shift).ok_or_else(bad)
}

fn parse_cluster_id(value: &str) -> Result<u64, String> {
    let parsed = match value
        .strip_prefix("0x")
        .or_else(|| value.strip_prefix("0X"))
    {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => value.parse(),
    };
    parsed.map_err(|_| format!("{value:?} is not a number (decimal, or hex with 0x)"))
}

fn parse_block_size(value: &str) -> Result<u32, String> {
    parse_size(value)
        .ok()
        .and_then(|n| u32::try_from(n).ok())
        .filter(|n| n.is_power_of_two() && format::BLOCK_SIZE_RANGE.contains(n))
        .ok_or_else(|| format!("{value:?} is not a power of two in 4096..=32768"))
}

fn create(path: PathBuf, spec: ClusterSpec, force: bool) -> Result<(), String> {
    let layout = format::create(&path, &spec, force).map_err(|e| e.to_string())?;
    let info = storage::open(&path, &StorageOptions::default())
        .map(|s| s.info().to_string())
        .unwrap_or_else(|e| format!("(cannot reopen: {e})"));
    out!(
        "created cluster {} on {} (storage identity {})\n  storage I/O: {}\n  block size {} bytes, {} data blocks at offset {:#x}\n  {} instance slots; redo threads of {} MiB at offset {:#x}",
        layout.cluster_id,
        path.display(),
        layout.storage_id,
        info,
        layout.block_size,
        layout.data_blocks,
        layout.data_offset,
        layout.max_instances,
        layout.redo_thread_size >> 20,
        layout.redo_offset,
    );
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    let result = match args.command {
        Command::Create {
            path,
            cluster_id,
            instances,
            size,
            block_size,
            redo_size,
            force,
        } => {
            let mut spec = ClusterSpec::new(ClusterId(cluster_id), instances, size);
            spec.block_size = block_size;
            spec.redo_thread_size = redo_size;
            create(path, spec, force).map(|()| ExitCode::SUCCESS)
        }
        Command::Status { config } => status(&config),
        Command::GenSecret { out, bytes, force } => {
            gen_secret(&out, bytes.into(), force).map(|()| ExitCode::SUCCESS)
        }
    };
    match result {
        Ok(code) => code,
        Err(message) => {
            eprintln!("fusionctl: {message}");
            ExitCode::from(2)
        }
    }
}

fn gen_secret(out: &std::path::Path, bytes: usize, force: bool) -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut random = vec![0u8; bytes];
    getrandom::fill(&mut random).map_err(|e| format!("no randomness: {e}"))?;
    // Hex: the file is text, and a raw trailing newline byte would be dropped on load.
    let mut text: String = random.iter().map(|b| format!("{b:02x}")).collect();
    text.push('\n');
    let mut options = std::fs::OpenOptions::new();
    options.write(true).mode(0o600);
    if force {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    let mut file = options.open(out).map_err(|e| {
        format!(
            "{}: {e}{}",
            out.display(),
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                " (use --force to replace it)"
            } else {
                ""
            }
        )
    })?;
    // An existing file keeps its mode on open: make it private before writing.
    use std::os::unix::fs::PermissionsExt;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("{}: {e}", out.display()))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| format!("{}: {e}", out.display()))?;
    out!(
        "wrote a {}-byte secret to {} (mode 0600)",
        bytes,
        out.display()
    );
    Ok(())
}

/// How long `status` waits for one instance.
const ASK_TIMEOUT: Duration = Duration::from_secs(5);
/// Most bytes of an `INFO` reply read.
const MAX_INFO: usize = 1 << 20;

/// Asks `address` for `INFO clients fusion` (after `AUTH` if a password is set); its `key:value` lines.
fn ask(address: SocketAddr, password: Option<&[u8]>) -> Result<BTreeMap<String, String>, String> {
    let stream = TcpStream::connect_timeout(&address, ASK_TIMEOUT).map_err(ask_error)?;
    stream
        .set_read_timeout(Some(ASK_TIMEOUT))
        .map_err(ask_error)?;
    let mut writer = stream.try_clone().map_err(ask_error)?;
    let mut reader = BufReader::new(stream);
    let mut request = Vec::new();
    if let Some(p) = password {
        request.extend_from_slice(format!("*2\r\n$4\r\nAUTH\r\n${}\r\n", p.len()).as_bytes());
        request.extend_from_slice(p);
        request.extend_from_slice(b"\r\n");
    }
    // Not the keyspace section, which counts keys by scanning them.
    request.extend_from_slice(b"*3\r\n$4\r\nINFO\r\n$7\r\nclients\r\n$6\r\nfusion\r\n");
    writer.write_all(&request).map_err(ask_error)?;
    let mut line = String::new();
    if password.is_some() {
        reader.read_line(&mut line).map_err(ask_error)?;
        if !line.starts_with("+OK") {
            return Err(format!("AUTH refused: {}", line.trim_end()));
        }
        line.clear();
    }
    reader.read_line(&mut line).map_err(ask_error)?;
    let len: usize = line
        .trim_end()
        .strip_prefix('$')
        .and_then(|n| n.parse().ok())
        .filter(|n| *n <= MAX_INFO)
        .ok_or_else(|| format!("unexpected reply {:?}", line.trim_end()))?;
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body).map_err(ask_error)?;
    Ok(String::from_utf8_lossy(&body)
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_string(), v.trim_end().to_string()))
        .collect())
}

/// What went wrong asking an instance: a read or connect that timed out says so (a paused or
/// overloaded instance accepts the connection but does not answer).
fn ask_error(e: std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => format!(
            "no answer within {} s: paused, overloaded or not fusiond",
            ASK_TIMEOUT.as_secs()
        ),
        _ => e.to_string(),
    }
}

/// The transfer kinds as `INFO` names them.
const KINDS: [&str; 5] = ["local", "grant", "2_way", "3_way", "upgrade"];

fn status(path: &std::path::Path) -> Result<ExitCode, String> {
    let config = InstanceConfig::load(path).map_err(|e| e.to_string())?;
    let mut members: Vec<_> = config.peers.clone();
    members.push(config.local.clone());
    members.sort_by_key(|m| m.id);
    let configured = members.len();
    let password = config
        .serve
        .requirepass
        .as_ref()
        .map(|p| p.as_bytes().to_vec());
    let bound = config.serve.transfer_p99_alert;
    out!(
        "cluster {:016x}: {configured} members configured",
        config.cluster_id.0
    );
    let mut alerts: Vec<String> = Vec::new();
    let mut epochs = Vec::new();
    let addresses: Vec<SocketAddr> = members
        .iter()
        .map(|member| {
            member.resp.unwrap_or_else(|| {
                if member.id == config.local.id
                    && let Some(r) = config.resp_listen
                {
                    return r;
                }
                SocketAddr::new(member.address.ip(), 6379 + member.id.as_u16())
            })
        })
        .collect();
    // Every instance at once: a paused one costs the ask timeout once, not once each.
    let answers: Vec<Result<BTreeMap<String, String>, String>> = std::thread::scope(|scope| {
        let asks: Vec<_> = addresses
            .iter()
            .map(|&address| {
                let password = password.as_deref();
                scope.spawn(move || ask(address, password))
            })
            .collect();
        asks.into_iter()
            .map(|a| a.join().unwrap_or_else(|_| Err("the ask failed".into())))
            .collect()
    });
    for ((member, &address), answer) in members.iter().zip(&addresses).zip(answers) {
        let info = match answer {
            Ok(info) => info,
            Err(e) => {
                out!("instance {}: unreachable at {address} ({e})", member.id);
                alerts.push(format!(
                    "member_down (critical): instance {} unreachable",
                    member.id
                ));
                continue;
            }
        };
        let get = |k: &str| info.get(k).cloned().unwrap_or_else(|| "?".into());
        let epoch = get("epoch");
        epochs.push(epoch.clone());
        out!(
            "instance {}: up at {address}, epoch {epoch}, members up {}/{}, clients {}",
            member.id,
            get("members_up"),
            get("members_configured"),
            get("connected_clients"),
        );
        if let Some(reason) = info.get("stopped") {
            alerts.push(format!(
                "instance_stopped (critical): instance {}: {reason}",
                member.id
            ));
        }
        let mut transfers = String::from("  transfers:");
        for kind in KINDS {
            let fields: BTreeMap<&str, &str> = info
                .get(&format!("transfer_{kind}"))
                .map(|v| v.split(',').filter_map(|f| f.split_once('=')).collect())
                .unwrap_or_default();
            let count = fields.get("count").copied().unwrap_or("?");
            // Latencies of a kind that never happened say nothing.
            if kind == "local" || count == "0" {
                transfers.push_str(&format!(" {} {count};", kind.replace('_', "-")));
                continue;
            }
            let p50 = fields.get("p50_us").copied().unwrap_or("?");
            let p99 = fields.get("p99_us").copied().unwrap_or("?");
            transfers.push_str(&format!(
                " {} {count} (p50 {p50} us, p99 {p99} us);",
                kind.replace('_', "-")
            ));
        }
        // The alert judges the last minute's p99s, not those since the instance started.
        let recent: BTreeMap<&str, &str> = info
            .get("transfer_recent_p99_us")
            .map(|v| v.split(',').filter_map(|f| f.split_once('=')).collect())
            .unwrap_or_default();
        for kind in ["2_way", "3_way"] {
            if let Some(p99) = recent.get(kind)
                && p99.parse::<u128>().is_ok_and(|p| p > bound.as_micros())
            {
                alerts.push(format!(
                    "transfer_latency (warning): instance {} {kind} p99 {p99} us above {} us in the last minute",
                    member.id,
                    bound.as_micros()
                ));
            }
        }
        out!("{}", transfers.trim_end_matches(';'));
        let latency = |key: &str| -> String {
            let fields: BTreeMap<&str, &str> = info
                .get(key)
                .map(|v| v.split(',').filter_map(|f| f.split_once('=')).collect())
                .unwrap_or_default();
            let field = |f: &str| fields.get(f).copied().unwrap_or("?").to_string();
            format!(
                "{} (p50 {} us, p99 {} us)",
                field("count"),
                field("p50_us"),
                field("p99_us")
            )
        };
        out!(
            "  redo: {}% of {} bytes used, checkpoint age {} ms, {} commits in {} writes ({} log \
             blocks), syncs {}, {} commits refused full; storage: {} reads, {} writes",
            get("redo_used_percent"),
            get("redo_size_bytes"),
            get("checkpoint_age_ms"),
            get("redo_commits"),
            get("redo_writes"),
            get("redo_blocks"),
            latency("redo_sync"),
            get("redo_full_refusals"),
            get("storage_reads"),
            get("storage_writes"),
        );
        out!(
            "  cache: {} hits, {} misses, {} evictions; blocks mastered {}; enqueue waits {}, \
             {} conflicts queued here, {} timeouts, {} deadlock victims",
            get("cache_hits"),
            get("cache_misses"),
            get("cache_evictions"),
            get("blocks_mastered"),
            latency("lock_waits"),
            get("ges_enqueue_waits"),
            get("lock_timeouts"),
            get("lock_deadlock_victims"),
        );
        if let Ok(percent) = get("redo_used_percent").parse::<f64>() {
            for (severity, on) in redo_full_severities(percent / 100.0) {
                if on {
                    alerts.push(format!(
                        "redo_full ({severity}): instance {} redo thread {percent}% full",
                        member.id
                    ));
                }
            }
        }
        // INFO says -1 for a step that has not happened (no failure handled yet).
        let step = |key: &str| match get(key).as_str() {
            "-1" => "-".to_string(),
            ms => format!("{ms} ms"),
        };
        let last_failure = if get("last_failure_suspected_to_reconfigured_ms") == "-1"
            && get("last_failure_reconfigured_to_recovered_ms") == "-1"
        {
            "none".to_string()
        } else {
            format!(
                "suspected→reconfigured {}, →served {}, →recovered {}",
                step("last_failure_suspected_to_reconfigured_ms"),
                step("last_failure_reconfigured_to_served_ms"),
                step("last_failure_reconfigured_to_recovered_ms"),
            )
        };
        out!(
            "  recovery: {} started, {} done, {} blocks rebuilt, running {}; last failure: \
             {last_failure}",
            get("recoveries_started"),
            get("recoveries_done"),
            get("blocks_recovered"),
            if get("recovery_running") == "1" {
                "yes"
            } else {
                "no"
            },
        );
        if get("recovery_running") == "1" {
            alerts.push(format!(
                "recovery_running (warning): instance {}",
                member.id
            ));
        }
        if get("members_up") != configured.to_string() {
            alerts.push(format!(
                "member_down (critical): instance {} sees {} of {configured} members up",
                member.id,
                get("members_up")
            ));
        }
    }
    epochs.sort();
    epochs.dedup();
    if epochs.len() > 1 {
        alerts.push(format!(
            "epoch_mismatch (warning): instances report epochs {epochs:?}"
        ));
    }
    if alerts.is_empty() {
        out!("healthy: no alerts");
        Ok(ExitCode::SUCCESS)
    } else {
        out!("alerts:");
        for alert in &alerts {
            out!("  {alert}");
        }
        Ok(ExitCode::FAILURE)
    }
}
