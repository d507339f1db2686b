//! A node's configuration: one TOML file per node (`roam node --config FILE`).
//!
//! Every key has a default, so an empty file is a valid config: a node named after
//! the host, listening on a random TCP port of every interface, finding peers with
//! mDNS, keeping checkpoints in memory, serving its control API on 127.0.0.1:7070.
//! Unknown keys are refused (`deny_unknown_fields`), and errors name the file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Port of the control API when the config does not say.
pub const DEFAULT_API_PORT: u16 = 7070;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// Name shown to operators and accepted wherever a node is named (`roam run --node`).
    pub name: String,
    /// Mesh listen addresses (multiaddrs).
    pub listen: Vec<String>,
    /// Peers dialled at start and whenever the node has no connection left.
    pub bootstrap: Vec<String>,
    /// Find peers on the LAN with mDNS.
    pub mdns: bool,
    /// Pre-shared swarm key (64 hex digits) or a path to a libp2p key file. Nodes with
    /// different keys cannot talk. Empty: the built-in development key (a warning says so).
    pub swarm_key: String,
    /// File holding this node's identity (created on first start). Empty: a fresh
    /// identity on every start.
    pub identity_file: String,
    /// Control API address (127.0.0.1 only unless you mean it). Empty: no API.
    pub api: String,
    /// Checkpoint store directory. Empty: in memory.
    pub store_dir: String,
    /// Byte budget of the in-memory store (or the disk store's limit).
    pub store_mib: u64,
    /// Chunk size of job state in KiB (power of two, 4..=16384): the unit of
    /// deduplication, dirty tracking and transfer. Smaller chunks make the last copy
    /// of a move smaller for jobs that write a little everywhere; larger ones make
    /// manifests smaller. The Wasm host's dirty-tracking granule must divide it.
    pub chunk_kib: u32,
    /// Relative speed of this node (1.0 = the reference machine); placement divides a
    /// job's remaining work by it.
    pub speed: f64,
    pub migration: MigrationConfig,
    pub jobs: JobDefaults,
    pub placement: PlacementConfig,
    pub sched: SchedConfig,
    /// Crash recovery: checkpoint replicas, failure detection (`recovery` crate).
    pub recovery: recovery::RecoveryConfig,
}

/// Who gets this node's CPU: node-bound periodic jobs at fixed priorities, and the
/// migrating jobs behind one aperiodic server (`executor` crate, `sched` core).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SchedConfig {
    /// "off": every job gets an ordinary thread and the OS shares the CPUs. "sporadic"
    /// (or "polling"): migrating jobs run one at a time behind that server, at most
    /// `budget_ms` per `period_ms`, so they cannot delay the node-bound tasks.
    pub server: String,
    /// The server's budget Cs.
    pub budget_ms: f64,
    /// The server's period Ts.
    pub period_ms: f64,
    /// The server's fixed priority (a larger number wins).
    pub priority: u32,
    /// Migrating jobs sharing the server take turns of this much CPU.
    pub quantum_ms: f64,
    /// How late a preempted job may stop, counted by admission (jobs stop at their next
    /// yield point, tens of µs after the request).
    pub overrun_allowance_ms: f64,
    /// `SCHED_FIFO` priority of the job threads (1..=98; the dispatcher one above);
    /// 0 = ordinary threads.
    pub realtime_priority: i32,
    /// Node-bound periodic tasks, admitted at start by response-time analysis.
    pub task: Vec<TaskConfig>,
}

/// A node-bound periodic task: a WASI guest that writes one stdout line per instance.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TaskConfig {
    pub name: String,
    /// Path of the module (.wasm or .wat).
    pub module: String,
    #[serde(default)]
    pub args: Vec<String>,
    pub period_ms: f64,
    /// Relative deadline; absent = the period.
    #[serde(default)]
    pub deadline_ms: Option<f64>,
    /// Worst-case execution time of one instance (what admission assumes).
    pub wcet_ms: f64,
    pub priority: u32,
}

impl Default for SchedConfig {
    fn default() -> Self {
        SchedConfig {
            server: "off".into(),
            budget_ms: 4.0,
            period_ms: 10.0,
            priority: 10,
            quantum_ms: 5.0,
            overrun_allowance_ms: 0.5,
            realtime_priority: 0,
            task: Vec::new(),
        }
    }
}

/// Milliseconds (config) to the scheduler's microseconds.
pub fn us(ms: f64) -> sched::Time {
    (ms * 1000.0).round().max(0.0) as sched::Time
}

impl SchedConfig {
    pub fn enabled(&self) -> bool {
        self.server != "off"
    }

    /// The server, as the core takes it (`None` when off).
    pub fn server_spec(&self) -> Option<sched::ServerSpec> {
        let spec = match self.server.as_str() {
            "sporadic" => {
                sched::ServerSpec::sporadic(us(self.budget_ms), us(self.period_ms), self.priority)
            }
            "polling" => {
                sched::ServerSpec::polling(us(self.budget_ms), us(self.period_ms), self.priority)
            }
            _ => return None,
        };
        Some(spec.with_overrun_allowance(us(self.overrun_allowance_ms)))
    }

    /// The core's view of a configured task.
    pub fn task_spec(t: &TaskConfig) -> sched::TaskSpec {
        let spec = sched::TaskSpec::periodic(&t.name, us(t.wcet_ms), us(t.period_ms), t.priority);
        match t.deadline_ms {
            Some(d) => spec.with_deadline(us(d)),
            None => spec,
        }
    }

    fn validate(&self) -> Result<(), (&'static str, String)> {
        if !matches!(self.server.as_str(), "off" | "sporadic" | "polling") {
            return Err((
                "sched.server",
                format!(
                    "{:?}: expected \"off\", \"sporadic\" or \"polling\"",
                    self.server
                ),
            ));
        }
        let ms = |v: f64| v.is_finite() && v > 0.0 && v <= 3_600_000.0;
        if !ms(self.period_ms) || !ms(self.budget_ms) || self.budget_ms > self.period_ms {
            return Err((
                "sched.budget_ms",
                format!(
                    "budget {} ms and period {} ms: need 0 < budget <= period",
                    self.budget_ms, self.period_ms
                ),
            ));
        }
        if !ms(self.quantum_ms) {
            return Err(("sched.quantum_ms", "must be > 0".into()));
        }
        if !(self.overrun_allowance_ms.is_finite() && self.overrun_allowance_ms >= 0.0) {
            return Err(("sched.overrun_allowance_ms", "must be >= 0".into()));
        }
        if !(0..=98).contains(&self.realtime_priority) {
            return Err(("sched.realtime_priority", "must be 0..=98".into()));
        }
        if !self.task.is_empty() && !self.enabled() {
            return Err((
                "sched.task",
                "node-bound tasks need a server: set sched.server = \"sporadic\"".into(),
            ));
        }
        for t in &self.task {
            if t.name.is_empty() || t.name.len() > sched::MAX_NAME {
                return Err(("sched.task.name", format!("{:?}: 1-128 characters", t.name)));
            }
            if t.module.is_empty() {
                return Err(("sched.task.module", format!("task {}: empty path", t.name)));
            }
            let deadline = t.deadline_ms.unwrap_or(t.period_ms);
            if !ms(t.period_ms) || !ms(t.wcet_ms) || !ms(deadline) || t.wcet_ms > deadline {
                return Err((
                    "sched.task.wcet_ms",
                    format!(
                        "task {}: need 0 < wcet ({}) <= deadline ({deadline}), period > 0",
                        t.name, t.wcet_ms
                    ),
                ));
            }
        }
        if self.task.len() > sched::MAX_TASKS {
            return Err(("sched.task", format!("at most {} tasks", sched::MAX_TASKS)));
        }
        Ok(())
    }
}

/// How the node decides where jobs run.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PlacementConfig {
    /// "rule": a draining node moves its jobs to the least loaded peer, an overloaded
    /// one sheds a job. "admm": the swarm solves the placement together (decentralised
    /// ADMM over gossip) and moves what the agreed placement says; draining still
    /// uses the rule.
    pub mode: String,
    /// Jobs this node can take at once (its share of the sporadic server, in jobs).
    pub capacity: f64,
    /// Work a job is assumed to have left, in seconds at speed 1.
    pub job_work_s: f64,
    /// A new round at least this often (and whenever the set of jobs changes).
    pub round_every_ms: u64,
}

impl Default for PlacementConfig {
    fn default() -> Self {
        PlacementConfig {
            mode: "rule".into(),
            capacity: 4.0,
            job_work_s: 10.0,
            round_every_ms: 5_000,
        }
    }
}

/// How this node moves jobs away.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MigrationConfig {
    /// Most pre-copy rounds; 0 = pure stop-and-copy.
    pub max_rounds: u32,
    /// Downtime the final stop-and-copy should fit in.
    pub downtime_target_ms: u64,
    /// Compression of chunks on the wire: "auto" (chosen from the measured bandwidth
    /// and spare CPU), "none", or "zstd:LEVEL".
    pub compression: String,
    /// Give up a migration whose peer is silent for this long (the job stays here).
    pub reply_timeout_ms: u64,
    /// Heartbeat period (gossip of this node's jobs and load).
    pub heartbeat_ms: u64,
    /// How memory moves: "auto" (from the measured dirty rate and bandwidth),
    /// "pre-copy", "post-copy" or "hybrid". Post-copy needs userfaultfd; without it
    /// every move is pre-copy.
    pub mode: String,
    /// Pre-copy rounds of a hybrid move before it switches to post-copy.
    pub hybrid_rounds: u32,
}

/// Limits every job on this node gets unless it asks for less.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct JobDefaults {
    pub memory_limit_mib: u64,
    /// Largest module accepted by `roam run`.
    pub max_module_mib: u64,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            name: default_name(),
            listen: vec!["/ip4/0.0.0.0/tcp/0".into()],
            bootstrap: Vec::new(),
            mdns: true,
            swarm_key: String::new(),
            identity_file: String::new(),
            api: format!("127.0.0.1:{DEFAULT_API_PORT}"),
            store_dir: String::new(),
            store_mib: 1024,
            chunk_kib: 64,
            speed: 1.0,
            migration: MigrationConfig::default(),
            jobs: JobDefaults::default(),
            placement: PlacementConfig::default(),
            sched: SchedConfig::default(),
            recovery: recovery::RecoveryConfig::default(),
        }
    }
}

impl Default for MigrationConfig {
    fn default() -> Self {
        MigrationConfig {
            max_rounds: 8,
            downtime_target_ms: 5,
            compression: "auto".into(),
            reply_timeout_ms: 3_000,
            heartbeat_ms: 500,
            mode: "auto".into(),
            hybrid_rounds: 2,
        }
    }
}

impl Default for JobDefaults {
    fn default() -> Self {
        JobDefaults {
            memory_limit_mib: 1024,
            max_module_mib: 64,
        }
    }
}

fn default_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "roam".into())
}

/// A config that could not be read or is invalid. The message names the file, and
/// for TOML errors the line and key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: `{key}`: {message}")]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
}

/// How the wire compression is chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompressionChoice {
    Auto,
    None,
    Zstd(i32),
}

impl NodeConfig {
    pub fn load(path: &Path) -> Result<NodeConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        NodeConfig::parse(&text, path)
    }

    /// Parses and validates `text` (read from `path`, used in messages).
    pub fn parse(text: &str, path: &Path) -> Result<NodeConfig, ConfigError> {
        let cfg: NodeConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        cfg.validate(path)?;
        Ok(cfg)
    }

    pub fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let bad = |key: &str, message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            key: key.to_string(),
            message,
        };
        if self.name.is_empty()
            || self.name.len() > 64
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        {
            return Err(bad(
                "name",
                format!(
                    "{:?} must be 1-64 characters of a-z, A-Z, 0-9, '-', '_', '.'",
                    self.name
                ),
            ));
        }
        for a in self.listen.iter().chain(&self.bootstrap) {
            if a.parse::<mesh::Multiaddr>().is_err() {
                return Err(bad("listen/bootstrap", format!("{a:?} is not a multiaddr")));
            }
        }
        if !self.api.is_empty() && self.api.parse::<SocketAddr>().is_err() {
            return Err(bad(
                "api",
                format!("{:?} is not an address like 127.0.0.1:7070", self.api),
            ));
        }
        if self.placement.mode != "rule" && self.placement.mode != "admm" {
            return Err(bad(
                "placement.mode",
                format!("{:?}: expected \"rule\" or \"admm\"", self.placement.mode),
            ));
        }
        let p = &self.placement;
        let positive = |v: f64| v.is_finite() && v > 0.0;
        if !positive(p.capacity) || !positive(p.job_work_s) || p.round_every_ms < 100 {
            return Err(bad(
                "placement",
                "capacity and job_work_s must be > 0, round_every_ms >= 100".into(),
            ));
        }
        if !(self.speed.is_finite() && self.speed > 0.0) {
            return Err(bad("speed", format!("{} must be > 0", self.speed)));
        }
        if !(4..=16384).contains(&self.chunk_kib) || !self.chunk_kib.is_power_of_two() {
            return Err(bad(
                "chunk_kib",
                format!("{} must be a power of two in 4..=16384", self.chunk_kib),
            ));
        }
        if self.store_mib == 0 {
            return Err(bad("store_mib", "must be > 0".into()));
        }
        if self.migration.max_rounds > migrate::MAX_ROUNDS {
            return Err(bad(
                "migration.max_rounds",
                format!(
                    "{} exceeds {}",
                    self.migration.max_rounds,
                    migrate::MAX_ROUNDS
                ),
            ));
        }
        if self.migration.reply_timeout_ms < 1000 {
            return Err(bad(
                "migration.reply_timeout_ms",
                "must be at least 1000 (fetch progress comes every 150 ms)".into(),
            ));
        }
        if self.migration.heartbeat_ms < 50 {
            return Err(bad("migration.heartbeat_ms", "must be at least 50".into()));
        }
        self.compression()
            .map_err(|m| bad("migration.compression", m))?;
        parse_move_mode(&self.migration.mode).map_err(|m| bad("migration.mode", m))?;
        if !(1..=migrate::MAX_ROUNDS).contains(&self.migration.hybrid_rounds) {
            return Err(bad(
                "migration.hybrid_rounds",
                format!("must be 1..={}", migrate::MAX_ROUNDS),
            ));
        }
        self.sched.validate().map_err(|(k, m)| bad(k, m))?;
        self.recovery
            .validate()
            .map_err(|e| bad(&format!("recovery.{}", e.key), e.message))?;
        Ok(())
    }

    /// `[migration] mode` as the migration core takes it.
    pub fn move_mode(&self) -> migrate::RequestedMode {
        parse_move_mode(&self.migration.mode).unwrap_or_default()
    }

    pub fn compression(&self) -> Result<CompressionChoice, String> {
        let c = self.migration.compression.trim();
        match c {
            "auto" => Ok(CompressionChoice::Auto),
            "none" => Ok(CompressionChoice::None),
            _ => {
                let level = c
                    .strip_prefix("zstd:")
                    .and_then(|l| l.parse::<i32>().ok())
                    .filter(|l| (1..=19).contains(l))
                    .ok_or_else(|| {
                        format!("{c:?}: expected \"auto\", \"none\" or \"zstd:LEVEL\" (1-19)")
                    })?;
                Ok(CompressionChoice::Zstd(level))
            }
        }
    }

    pub fn api_addr(&self) -> Option<SocketAddr> {
        self.api.parse().ok()
    }

    /// A config for a node of an in-process swarm (tests, `roam demo`): loopback only,
    /// no mDNS, API on a free port, checkpoints in memory.
    pub fn local(name: &str) -> NodeConfig {
        NodeConfig {
            name: name.into(),
            listen: vec!["/ip4/127.0.0.1/tcp/0".into()],
            mdns: false,
            api: "127.0.0.1:0".into(),
            ..NodeConfig::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<NodeConfig, ConfigError> {
        NodeConfig::parse(s, Path::new("n.toml"))
    }

    #[test]
    fn empty_file_is_the_default() {
        assert_eq!(parse("").unwrap(), NodeConfig::default());
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let e = parse("name = \"a\"\n[migration]\nmax_roundz = 3\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("n.toml"), "{e}");
        assert!(e.contains("max_roundz"), "{e}");
        assert!(e.contains("line 3"), "{e}");
    }

    #[test]
    fn bad_values_name_the_key() {
        for (text, key) in [
            ("name = \"a b\"", "name"),
            ("speed = 0.0", "speed"),
            ("api = \"localhost\"", "api"),
            (
                "[migration]\ncompression = \"lz4\"",
                "migration.compression",
            ),
            ("[migration]\nmax_rounds = 1000", "migration.max_rounds"),
            ("listen = [\"tcp/1\"]", "listen"),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(key), "{text}: {e}");
        }
        assert!(parse("speed = \"fast\"")
            .unwrap_err()
            .to_string()
            .contains("speed"));
    }

    #[test]
    fn compression_choices() {
        let mut c = NodeConfig::default();
        c.migration.compression = "zstd:7".into();
        assert_eq!(c.compression(), Ok(CompressionChoice::Zstd(7)));
        c.migration.compression = "none".into();
        assert_eq!(c.compression(), Ok(CompressionChoice::None));
        c.migration.compression = "zstd:0".into();
        assert!(c.compression().is_err());
    }
}

#[cfg(test)]
mod example_config {
    use super::*;

    /// `configs/node.toml` documents every key; it must parse and name every field.
    #[test]
    fn shipped_example_parses_and_covers_every_key() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/node.toml");
        let cfg = NodeConfig::load(&path).expect("configs/node.toml parses");
        assert_eq!(cfg.name, "node1");
        let text = std::fs::read_to_string(&path).expect("read");
        let default = toml::to_string(&NodeConfig::default()).expect("serialise");
        for line in default.lines() {
            if let Some((key, _)) = line.split_once(" = ") {
                assert!(
                    text.contains(&format!("{key} = ")),
                    "configs/node.toml does not document `{key}`"
                );
            }
        }
    }
}

/// "auto", "pre-copy", "post-copy" or "hybrid" (also `roam migrate --mode`).
pub fn parse_move_mode(s: &str) -> Result<migrate::RequestedMode, String> {
    use migrate::{MoveMode, RequestedMode};
    match s.trim() {
        "auto" => Ok(RequestedMode::Auto),
        "pre-copy" | "precopy" => Ok(RequestedMode::Fixed(MoveMode::PreCopy)),
        "post-copy" | "postcopy" => Ok(RequestedMode::Fixed(MoveMode::PostCopy)),
        "hybrid" => Ok(RequestedMode::Fixed(MoveMode::Hybrid)),
        other => Err(format!(
            "{other:?}: expected \"auto\", \"pre-copy\", \"post-copy\" or \"hybrid\""
        )),
    }
}
