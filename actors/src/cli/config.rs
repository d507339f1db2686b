//! `roam config --default` (a full, commented config holding every default) and
//! `roam config --check FILE` (validate one; errors name the file, line and key).
//!
//! The commented config *is* `configs/node.toml`, compiled in, with its example name
//! replaced by the default (the host name): one text to keep up to date, and a test
//! checks that it parses back to `NodeConfig::default()`.

use std::path::{Path, PathBuf};

use actors::node::config::ConfigError;
use actors::node::NodeConfig;
use clap::{ArgGroup, Args};

/// `configs/node.toml`, every key with its default and what it does.
const EXAMPLE: &str = include_str!("../../../configs/node.toml");

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("what").required(true).args(["default", "check"])))]
pub struct ConfigArgs {
    /// Print a full, commented config holding every default (name: this host's name).
    #[arg(long)]
    pub default: bool,
    /// Validate a config file: exit 0 if a node would start with it, else print the
    /// problem (file, line, key) and exit 1.
    #[arg(long, value_name = "FILE")]
    pub check: Option<PathBuf>,
}

/// The commented default config.
pub fn default_text() -> String {
    let name = NodeConfig::default().name;
    // A JSON string literal is a valid TOML basic string.
    let quoted = serde_json::to_string(&name).unwrap_or_else(|_| "\"roam\"".into());
    let mut out = String::with_capacity(EXAMPLE.len());
    let mut done = false;
    for line in EXAMPLE.lines() {
        if !done && line.starts_with("name = ") {
            out.push_str(&format!("name = {quoted}"));
            done = true;
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

/// The 1-based line where `key` ("table.leaf" or "leaf") is set in `text`, if it is.
fn key_line(text: &str, key: &str) -> Option<usize> {
    let (table, leaf) = key.rsplit_once('.').unwrap_or(("", key));
    let mut current = String::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if let Some(h) = line.strip_prefix('[').and_then(|h| h.split(']').next()) {
            current = h.trim().to_string();
            continue;
        }
        let Some((k, _)) = line.split_once('=') else {
            continue;
        };
        let k = k.trim().trim_matches('"');
        if (current == table && k == leaf) || (current.is_empty() && k == key) {
            return Some(i + 1);
        }
    }
    None
}

/// The line an invalid value sits on: the key's, or for addresses (one error for
/// `listen` and `bootstrap`) the first line holding the bad address.
fn value_line(text: &str, key: &str, message: &str) -> Option<usize> {
    if key == "listen/bootstrap" {
        let bad = message.split('"').nth(1).filter(|b| !b.is_empty());
        if let Some(bad) = bad {
            if let Some(i) = text.lines().position(|l| l.contains(bad)) {
                return Some(i + 1);
            }
        }
        return key_line(text, "listen").or_else(|| key_line(text, "bootstrap"));
    }
    key_line(text, key)
}

/// Loads a node config; a value error also names its line (TOML errors already do).
pub fn load(path: &Path) -> anyhow::Result<NodeConfig> {
    match NodeConfig::load(path) {
        Ok(c) => Ok(c),
        Err(ConfigError::Invalid { path, key, message }) => {
            let line = std::fs::read_to_string(&path)
                .ok()
                .and_then(|t| value_line(&t, &key, &message));
            match line {
                Some(n) => anyhow::bail!("{}: line {n}: `{key}`: {message}", path.display()),
                None => anyhow::bail!("{}: `{key}`: {message}", path.display()),
            }
        }
        Err(e) => Err(e.into()),
    }
}

pub fn run(a: ConfigArgs) -> anyhow::Result<i32> {
    use std::io::Write as _;
    if a.default {
        std::io::stdout()
            .lock()
            .write_all(default_text().as_bytes())?;
        return Ok(0);
    }
    let Some(path) = a.check else {
        anyhow::bail!("say --default or --check FILE");
    };
    match load(&path) {
        Ok(cfg) => {
            println!("{}: ok (node {:?})", path.display(), cfg.name);
            Ok(0)
        }
        Err(e) => {
            eprintln!("roam: {e:#}");
            Ok(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_text_is_the_example_but_for_the_name() {
        let text = default_text();
        let cfg = NodeConfig::parse(&text, Path::new("default")).expect("parses");
        assert_eq!(cfg, NodeConfig::default());
        let differ: Vec<(&str, &str)> = text
            .lines()
            .zip(EXAMPLE.lines())
            .filter(|(a, b)| a != b)
            .collect();
        assert_eq!(differ.len(), 1, "{differ:?}");
        assert!(differ[0].1.starts_with("name = "));
        assert_eq!(text.lines().count(), EXAMPLE.lines().count());
    }

    #[test]
    fn key_lines() {
        let t =
            "name = \"a\"\nspeed = 0\n[migration]\n# x\nmax_rounds = 99\n[jobs]\nmax_rounds = 1\n";
        assert_eq!(key_line(t, "speed"), Some(2));
        assert_eq!(key_line(t, "migration.max_rounds"), Some(5));
        assert_eq!(key_line(t, "jobs.max_rounds"), Some(7));
        assert_eq!(key_line(t, "migration.heartbeat_ms"), None);
        let t = "listen = [\"/ip4/0.0.0.0/tcp/0\"]\nbootstrap = [\n  \"nope\",\n]\n";
        assert_eq!(
            value_line(t, "listen/bootstrap", "\"nope\" is not a multiaddr"),
            Some(3)
        );
    }
}
