//! What the multi-process tests share: an instance as a `fusion-node node` process driven
//! line by line (the protocol is in that binary's `node` doc), the cluster setup, and the
//! checks of counters against committed and acknowledged increments.
//!
//! Deadlines are generous (CI shares two noisy cores); nothing here measures time.

#![allow(dead_code, clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

pub const DEMO: &str = env!("CARGO_BIN_EXE_fusion-node");
pub const DEADLINE: Duration = Duration::from_secs(240);

pub struct Node {
    pub id: usize,
    pub child: Child,
    pub stdin: ChildStdin,
    lines: Receiver<String>,
    /// Every line read so far.
    pub seen: Vec<String>,
}

impl Node {
    /// `fusion-node node CONFIG`, in the namespace `netns` if given; its stderr is appended
    /// to `instance-<id>.stderr` beside the config.
    pub fn start(id: usize, config: &Path, netns: Option<&str>) -> Self {
        let command = match netns {
            Some(name) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", name, DEMO]);
                c
            }
            None => Command::new(DEMO),
        };
        Self::spawn(id, config, command)
    }

    /// `fusion-node node CONFIG` with group id `gid` (still user root): what a firewall
    /// rule can tell its packets by (`meta skgid`).
    pub fn start_in_group(id: usize, config: &Path, gid: u32) -> Self {
        use std::os::unix::process::CommandExt;
        let mut command = Command::new(DEMO);
        command.gid(gid);
        Self::spawn(id, config, command)
    }

    fn spawn(id: usize, config: &Path, mut command: Command) -> Self {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(config.with_file_name(format!("instance-{id}.stderr")))
            .unwrap();
        let mut child = command
            .arg("node")
            .arg(config)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            id,
            child,
            stdin,
            lines,
            seen: Vec::new(),
        }
    }

    /// The next line, or why there is none.
    pub fn next_line(&mut self, timeout: Duration) -> Result<String, RecvTimeoutError> {
        let line = self.lines.recv_timeout(timeout)?;
        self.seen.push(line.clone());
        Ok(line)
    }

    /// The next line starting with `prefix`; a `failed` line before it fails the test.
    pub fn expect(&mut self, prefix: &str) -> String {
        loop {
            let line = self.next_line(DEADLINE).unwrap_or_else(|e| {
                panic!(
                    "instance {}: no {prefix:?} line within {DEADLINE:?} ({e:?})",
                    self.id
                )
            });
            assert!(
                !line.starts_with("failed"),
                "instance {} failed: {line}",
                self.id
            );
            if line.starts_with(prefix) {
                return line;
            }
        }
    }

    pub fn ask(&mut self, command: &str, answer: &str) -> String {
        writeln!(self.stdin, "{command}").unwrap();
        self.expect(answer)
    }

    /// Asks `command` and parses the number after the answer's first word.
    pub fn number(&mut self, command: &str, answer: &str) -> u64 {
        let line = self.ask(command, answer);
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    /// `status` → its epoch.
    pub fn epoch(&mut self) -> u64 {
        let line = self.ask("status", "status");
        let mut words = line.split_whitespace();
        assert_eq!(words.nth(1), Some("epoch"), "odd status line: {line}");
        words.next().unwrap().parse().unwrap()
    }

    /// `status` → the members of the newest reconfiguration it applied (empty: none).
    pub fn members(&mut self) -> Vec<usize> {
        let line = self.ask("status", "status");
        let list = line
            .split(" members ")
            .nth(1)
            .unwrap_or_else(|| panic!("odd status line: {line}"));
        list.split(',').filter_map(|m| m.parse().ok()).collect()
    }

    /// Waits until the instance stops by itself: its `failed` line (if it gets to say one)
    /// and its exit status.
    pub fn expect_stop(&mut self, timeout: Duration) -> (Option<String>, ExitStatus) {
        let deadline = Instant::now() + timeout;
        let mut failed = None;
        while failed.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_line(left) {
                Ok(line) if line.starts_with("failed") => failed = Some(line),
                Ok(_) => {}
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => panic!(
                    "instance {} did not stop within {timeout:?}; its last lines: {:?}",
                    self.id,
                    self.seen
                        .iter()
                        .rev()
                        .take(5)
                        .map(|l| l.chars().take(100).collect::<String>())
                        .collect::<Vec<_>>()
                ),
            }
        }
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (failed, status);
            }
            assert!(
                Instant::now() < deadline,
                "instance {} said {failed:?} but did not exit within {timeout:?}",
                self.id
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A shared file with `blocks` data blocks and one configuration per instance in `dir`
/// (`fusion-node setup`, with `extra` options); returns the configurations.
pub fn setup(dir: &Path, transport: &str, blocks: u64, extra: &[&str]) -> Vec<PathBuf> {
    let out = Command::new(DEMO)
        .args(["setup", "--dir"])
        .arg(dir)
        .args(["--transport", transport, "--blocks", &blocks.to_string()])
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "setup failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(PathBuf::from)
        .collect()
}

/// The port instance `id` listens on, from a configuration's member list.
pub fn listen_port(config: &Path, id: usize) -> u16 {
    let text = std::fs::read_to_string(config).unwrap();
    let line = text
        .lines()
        .find(|l| l.contains(&format!("{{ id = {id}, address = ")))
        .unwrap_or_else(|| panic!("{}: no member {id}", config.display()));
    let address = line.split('"').nth(1).unwrap();
    address.rsplit_once(':').unwrap().1.parse().unwrap()
}

/// Points a configuration's shared storage at `storage`.
pub fn set_storage(config: &Path, storage: &Path) {
    let text = std::fs::read_to_string(config).unwrap();
    let mut replaced = 0;
    let lines: Vec<String> = text
        .lines()
        .map(|l| {
            if l.starts_with("path = ") {
                replaced += 1;
                format!("path = {:?}", storage.display().to_string())
            } else {
                l.to_string()
            }
        })
        .collect();
    assert_eq!(replaced, 1, "{}: not one storage path", config.display());
    std::fs::write(config, lines.join("\n") + "\n").unwrap();
}

/// Starts an instance per configuration (none in a namespace) and waits until all are ready.
pub fn start_all(configs: &[PathBuf]) -> Vec<Node> {
    let mut nodes: Vec<Node> = configs
        .iter()
        .enumerate()
        .map(|(id, c)| Node::start(id, c, None))
        .collect();
    for node in &mut nodes {
        node.expect("ready");
    }
    nodes
}

/// Every instance runs the committed-increment workload: `threads` threads for `seconds`, 4
/// hot blocks among `blocks`, seeded by its id.
pub fn run_all(nodes: &mut [Node], seconds: u64, threads: u64, blocks: u64) {
    for (id, node) in nodes.iter_mut().enumerate() {
        writeln!(node.stdin, "run {seconds} {threads} 4 {blocks} {}", id + 1).unwrap();
    }
}

/// `kill -9` of the instance, and waits for it to be gone.
pub fn kill(node: &mut Node) {
    node.child.kill().unwrap();
    node.child.wait().unwrap();
}

/// Checkpoints every instance, then has all leave; each must exit cleanly.
pub fn stop_all(mut nodes: Vec<Node>) {
    for node in &mut nodes {
        node.ask("checkpoint", "checkpointed");
    }
    for node in &mut nodes {
        writeln!(node.stdin, "exit").unwrap();
    }
    for node in &mut nodes {
        let status = node.child.wait().unwrap();
        assert!(status.success(), "an instance exited with {status}");
    }
}

/// `contents B=V ...` as counters indexed by block (0..=blocks).
pub fn values(contents: &str, blocks: u64) -> Vec<u64> {
    let mut values = vec![0u64; blocks as usize + 1];
    for pair in contents.split_whitespace().skip(1) {
        let (block, value) = pair.split_once('=').unwrap();
        values[block.parse::<usize>().unwrap()] = value.parse().unwrap();
    }
    values
}

/// Adds a `counts B=N ...` line to `committed`.
pub fn add_counts(committed: &mut [u64], counts: &str) {
    for pair in counts.split_whitespace().skip(1) {
        let (block, n) = pair.split_once('=').unwrap();
        committed[block.parse::<usize>().unwrap()] += n.parse::<u64>().unwrap();
    }
}

/// Acknowledged increments per block, from every instance's acknowledgement log in `dir`.
pub fn acked(dir: &Path, blocks: u64) -> Vec<u64> {
    let mut acked = vec![0u64; blocks as usize + 1];
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if name.starts_with("acks-") {
            for line in std::fs::read_to_string(&path).unwrap().lines() {
                acked[line.parse::<usize>().unwrap()] += 1;
            }
        }
    }
    acked
}

/// Every acknowledged increment is in the contents; at most `in_flight` increments more
/// (committed by a killed or stopped instance before it wrote the acknowledgement).
/// Returns how many more.
pub fn check_contents(contents: &str, acked: &[u64], in_flight: u64) -> u64 {
    let blocks = acked.len() as u64 - 1;
    let mut extra = 0;
    for (block, (&value, &acked)) in values(contents, blocks).iter().zip(acked).enumerate() {
        assert!(
            value >= acked,
            "block {block}: counter {value} lost acknowledged increments ({acked})"
        );
        extra += value - acked;
    }
    assert!(
        extra <= in_flight,
        "{extra} increments more than acknowledged (at most {in_flight} in flight)"
    );
    extra
}
