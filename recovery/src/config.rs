//! The knobs of crash recovery, in one flat table so a node config can embed
//! it as `[recovery]` (deny_unknown_fields, every key defaulted) and every
//! module reads the same validated values.

use serde::{Deserialize, Serialize};

/// `[recovery]` of a node config. Defaults suit a LAN with the node's
/// 500 ms heartbeat: a silent peer is suspected after three missed beats and
/// declared dead after eight.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RecoveryConfig {
    /// How many peers hold a copy of each job's checkpoints (besides its owner).
    pub replicas: usize,
    /// A peer not heard from for this long is suspected: it no longer counts
    /// towards an owner's majority (the owner pauses its jobs).
    pub suspect_after_ms: u64,
    /// A peer not heard from for this long is dead: its jobs may be recovered.
    /// Must exceed `suspect_after_ms`; the difference is the safety margin
    /// between an isolated owner pausing and the majority resuming its jobs.
    pub dead_after_ms: u64,
    /// Shortest period between two checkpoint copies of one job.
    pub min_period_ms: u64,
    /// Longest period between two checkpoint copies of one job (the most work
    /// a crash can cost when the link keeps up).
    pub max_period_ms: u64,
    /// Share of a link's bandwidth that replication may use (0 < share <= 1).
    pub link_share: f64,
    /// Fixed cost of one copy regardless of its size: capture pause, manifest,
    /// round trip.
    pub copy_overhead_ms: u64,
}

impl Default for RecoveryConfig {
    fn default() -> Self {
        RecoveryConfig {
            replicas: 2,
            suspect_after_ms: 1500,
            dead_after_ms: 4000,
            min_period_ms: 250,
            max_period_ms: 10_000,
            link_share: 0.2,
            copy_overhead_ms: 20,
        }
    }
}

/// An invalid value, with the key it belongs to.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("`{key}`: {message}")]
pub struct ConfigError {
    pub key: &'static str,
    pub message: String,
}

impl RecoveryConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key, message: String| Err(ConfigError { key, message });
        // 0 turns replication (and with it recovery) off.
        if self.replicas > 16 {
            return bad("replicas", format!("{} is not in 0..=16", self.replicas));
        }
        if self.suspect_after_ms == 0 {
            return bad("suspect_after_ms", "must be positive".into());
        }
        if self.dead_after_ms <= self.suspect_after_ms {
            return bad(
                "dead_after_ms",
                format!(
                    "{} must exceed suspect_after_ms ({})",
                    self.dead_after_ms, self.suspect_after_ms
                ),
            );
        }
        if self.min_period_ms == 0 || self.min_period_ms > self.max_period_ms {
            return bad(
                "min_period_ms",
                format!(
                    "{} must be positive and at most max_period_ms ({})",
                    self.min_period_ms, self.max_period_ms
                ),
            );
        }
        if !(self.link_share > 0.0 && self.link_share <= 1.0) {
            return bad(
                "link_share",
                format!("{} is not in (0, 1]", self.link_share),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid_and_empty_table_is_default() {
        RecoveryConfig::default().validate().unwrap();
        let c: RecoveryConfig = toml::from_str("").unwrap();
        assert_eq!(c, RecoveryConfig::default());
        assert!(toml::from_str::<RecoveryConfig>("replica = 3").is_err());
    }

    #[test]
    fn each_bad_value_names_its_key() {
        let d = RecoveryConfig::default;
        for (c, key) in [
            (
                RecoveryConfig {
                    replicas: 17,
                    ..d()
                },
                "replicas",
            ),
            (
                RecoveryConfig {
                    dead_after_ms: 1500,
                    ..d()
                },
                "dead_after_ms",
            ),
            (
                RecoveryConfig {
                    suspect_after_ms: 0,
                    ..d()
                },
                "suspect_after_ms",
            ),
            (
                RecoveryConfig {
                    min_period_ms: 20_000,
                    ..d()
                },
                "min_period_ms",
            ),
            (
                RecoveryConfig {
                    link_share: f64::NAN,
                    ..d()
                },
                "link_share",
            ),
            (
                RecoveryConfig {
                    link_share: 1.5,
                    ..d()
                },
                "link_share",
            ),
        ] {
            assert_eq!(c.validate().unwrap_err().key, key);
        }
    }
}
