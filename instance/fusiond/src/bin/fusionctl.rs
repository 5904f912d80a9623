//! `fusionctl`: operator commands for a Fusion cluster's shared storage.
//!
//! Today: `create` formats shared storage for a new cluster. Later: cluster status (members,
//! epoch, masters, transfer counts, redo and recovery progress).
//!
//! It owns argument parsing and messages; the work is in `instance::format`. It must never
//! destroy data without `--force`.

use instance::format::{self, ClusterSpec, DEFAULT_BLOCK_SIZE, DEFAULT_REDO_THREAD_SIZE};
use instance::storage::{self, StorageOptions};
use interconnect::ClusterId;
use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "\
usage: fusionctl create --path PATH --cluster-id N --instances N [--size SIZE]
                        [--block-size BYTES] [--redo-size SIZE] [--force]

  --path PATH        shared storage: a regular file (created if missing) or a block device
  --cluster-id N     the cluster's id (decimal, or hex with 0x)
  --instances N      most instances in the cluster, 1..=64 (one slot and redo thread each)
  --size SIZE        bytes to format, e.g. 1GiB, 512MiB, 10G; default: the whole file/device
  --block-size BYTES data block size, a power of two in 4096..=32768 (default 8192)
  --redo-size SIZE   redo thread size per instance, at least 4MiB (default 64MiB)
  --force            overwrite storage that holds a cluster or other data";

/// A command line that cannot be run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
enum ArgError {
    #[error("{0}")]
    Usage(String),
    #[error("{flag}: {value:?} is not {expected}")]
    Value {
        flag: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("{0} is required")]
    Missing(&'static str),
}

/// `1GiB`, `512MiB`, `64k`, `4096`: binary units (k/K/KiB = 1024, M/MiB, G/GiB, T/TiB).
fn parse_size(flag: &'static str, value: &str) -> Result<u64, ArgError> {
    let bad = || ArgError::Value {
        flag,
        value: value.to_string(),
        expected: "a size such as 1GiB, 512MiB or 4096",
    };
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

fn parse_u64(flag: &'static str, value: &str, expected: &'static str) -> Result<u64, ArgError> {
    let bad = || ArgError::Value {
        flag,
        value: value.to_string(),
        expected,
    };
    match value
        .strip_prefix("0x")
        .or_else(|| value.strip_prefix("0X"))
    {
        Some(hex) => u64::from_str_radix(hex, 16).map_err(|_| bad()),
        None => value.parse().map_err(|_| bad()),
    }
}

#[derive(Debug)]
struct CreateArgs {
    path: PathBuf,
    spec: ClusterSpec,
    force: bool,
}

fn parse_create(args: &[String]) -> Result<CreateArgs, ArgError> {
    let mut path = None;
    let mut cluster_id = None;
    let mut instances = None;
    let mut size = None;
    let mut block_size = DEFAULT_BLOCK_SIZE;
    let mut redo_size = DEFAULT_REDO_THREAD_SIZE;
    let mut force = false;
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let (name, inline) = match flag.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (flag.as_str(), None),
        };
        if name == "--force" {
            force = true;
            continue;
        }
        let mut value = |flag: &'static str| {
            inline
                .clone()
                .or_else(|| it.next().cloned())
                .ok_or_else(|| ArgError::Usage(format!("{flag} needs a value")))
        };
        match name {
            "--path" => path = Some(PathBuf::from(value("--path")?)),
            "--cluster-id" => {
                cluster_id = Some(parse_u64(
                    "--cluster-id",
                    &value("--cluster-id")?,
                    "a number",
                )?)
            }
            "--instances" => {
                let v = value("--instances")?;
                let n = parse_u64("--instances", &v, "a number of instances in 1..=64")?;
                instances = Some(
                    u16::try_from(n)
                        .ok()
                        .filter(|n| (1..=64).contains(n))
                        .ok_or(ArgError::Value {
                            flag: "--instances",
                            value: v,
                            expected: "a number of instances in 1..=64",
                        })?,
                );
            }
            "--size" => size = Some(parse_size("--size", &value("--size")?)?),
            "--block-size" => {
                let v = value("--block-size")?;
                let n = parse_size("--block-size", &v)?;
                block_size = u32::try_from(n)
                    .ok()
                    .filter(|n| n.is_power_of_two() && format::BLOCK_SIZE_RANGE.contains(n))
                    .ok_or(ArgError::Value {
                        flag: "--block-size",
                        value: v,
                        expected: "a power of two in 4096..=32768",
                    })?;
            }
            "--redo-size" => redo_size = parse_size("--redo-size", &value("--redo-size")?)?,
            other => return Err(ArgError::Usage(format!("unknown option {other:?}"))),
        }
    }
    let mut spec = ClusterSpec::new(
        ClusterId(cluster_id.ok_or(ArgError::Missing("--cluster-id"))?),
        instances.ok_or(ArgError::Missing("--instances"))?,
        size,
    );
    spec.block_size = block_size;
    spec.redo_thread_size = redo_size;
    Ok(CreateArgs {
        path: path.ok_or(ArgError::Missing("--path"))?,
        spec,
        force,
    })
}

fn create(args: &[String]) -> Result<(), String> {
    let args = parse_create(args).map_err(|e| format!("{e}\n\n{USAGE}"))?;
    let layout = format::create(&args.path, &args.spec, args.force).map_err(|e| e.to_string())?;
    let info = storage::open(&args.path, &StorageOptions::default())
        .map(|s| s.info().to_string())
        .unwrap_or_else(|e| format!("(cannot reopen: {e})"));
    println!(
        "created cluster {} on {}\n  storage I/O: {}\n  block size {} bytes, {} data blocks at offset {:#x}\n  {} instance slots; redo threads of {} MiB at offset {:#x}",
        layout.cluster_id,
        args.path.display(),
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
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("create") => create(&args[1..]),
        Some("-h" | "--help" | "help") => {
            println!("{USAGE}");
            Ok(())
        }
        Some(other) => Err(format!("unknown command {other:?}\n\n{USAGE}")),
        None => Err(USAGE.to_string()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("fusionctl: {message}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Vec<String> {
        line.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_size("--size", "1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_size("--size", "512m").unwrap(), 512 << 20);
        assert_eq!(parse_size("--size", "4096").unwrap(), 4096);
        assert!(parse_size("--size", "1.5G").is_err());
        assert!(parse_size("--size", "GiB").is_err());
        assert!(parse_size("--size", "99999999999T").is_err());
    }

    #[test]
    fn create_arguments_are_checked() {
        let ok = parse_create(&args(
            "--path /x --cluster-id 0x10 --instances 3 --size 1GiB",
        ))
        .unwrap();
        assert_eq!(ok.spec.cluster_id, ClusterId(16));
        assert_eq!(ok.spec.max_instances, 3);
        assert_eq!(ok.spec.size, Some(1 << 30));
        assert!(!ok.force);
        assert!(matches!(
            parse_create(&args("--path /x --cluster-id 1 --instances 65")),
            Err(ArgError::Value {
                flag: "--instances",
                ..
            })
        ));
        assert!(matches!(
            parse_create(&args(
                "--path /x --cluster-id 1 --instances 3 --block-size 6000"
            )),
            Err(ArgError::Value {
                flag: "--block-size",
                ..
            })
        ));
        assert!(matches!(
            parse_create(&args("--cluster-id 1 --instances 3")),
            Err(ArgError::Missing("--path"))
        ));
        assert!(matches!(
            parse_create(&args("--bogus")),
            Err(ArgError::Usage(_))
        ));
    }
}
