//! Policy files: parsing, validation with errors that name the file, line and field, and hot
//! reload on SIGHUP or on change.
//!
//! The built-in policy (`Policy::default()`) needs no file. A reloaded file is validated in full
//! before it replaces the running policy; a bad one is rejected and the old policy stays.
//! Reloads travel on a `tokio::sync::watch` channel, as linkerd's policies do.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use crate::classify::external::Overrides;
use crate::policy::Policy;

/// A policy file that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The YAML did not parse, or a field had the wrong type or name.
    #[error("{origin}:{line}:{column}: {field}: {message}")]
    Parse {
        origin: String,
        line: usize,
        column: usize,
        field: String,
        message: String,
    },
    /// The external tier, with the command line's `--external-*` settings laid over the
    /// file's, is invalid.
    #[error("{field}: {message} (with the --external-* flags)")]
    Flags { field: String, message: String },
    /// The YAML parsed but a value is out of range.
    #[error("{origin}:{line}: {field}: {message}")]
    Invalid {
        origin: String,
        line: usize,
        field: String,
        message: String,
    },
}

/// Parses and validates a policy from YAML text; `origin` names it in errors.
pub fn parse_policy(yaml: &str, origin: &str) -> Result<Policy, ConfigError> {
    if yaml.trim().is_empty() {
        return Ok(Policy::default());
    }
    let de = serde_yaml::Deserializer::from_str(yaml);
    let policy: Policy = serde_path_to_error::deserialize(de).map_err(|e| {
        let field = match e.path().to_string() {
            p if p == "." => "(top level)".to_string(),
            p => p,
        };
        let inner = e.into_inner();
        let (line, column) = inner
            .location()
            .map(|l| (l.line(), l.column()))
            .unwrap_or((1, 1));
        // serde_yaml appends " at line L column C"; the prefix already says where.
        let message = inner.to_string();
        let message = match message.find(" at line ") {
            Some(i) => message[..i].to_string(),
            None => message,
        };
        ConfigError::Parse {
            origin: origin.to_string(),
            line,
            column,
            field,
            message,
        }
    })?;
    policy.compile().map_err(|e| ConfigError::Invalid {
        origin: origin.to_string(),
        line: line_of(yaml, &e.field),
        field: e.field,
        message: e.message,
    })
}

/// The line where the last key of a dotted field path appears (1 if not found).
fn line_of(yaml: &str, field: &str) -> usize {
    let key = field
        .rsplit('.')
        .next()
        .unwrap_or(field)
        .split('[')
        .next()
        .unwrap_or(field);
    yaml.lines()
        .position(|l| l.trim_start().starts_with(&format!("{key}:")))
        .map(|i| i + 1)
        .unwrap_or(1)
}

/// Reads, parses and validates a policy file.
pub fn load_policy(path: &Path) -> Result<Policy, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        path: path.display().to_string(),
        source,
    })?;
    parse_policy(&text, &path.display().to_string())
}

/// `load_policy`, with the command line's external-tier settings laid over the file's and the
/// result validated again (a bad flag is named as `command line`).
pub fn load_policy_with(path: &Path, overrides: &Overrides) -> Result<Policy, ConfigError> {
    let mut policy = load_policy(path)?;
    with_overrides(&mut policy, overrides)?;
    Ok(policy)
}

/// Lays `overrides` over `policy`'s external tier and validates it again.
pub fn with_overrides(policy: &mut Policy, overrides: &Overrides) -> Result<(), ConfigError> {
    overrides.apply(&mut policy.classify.external);
    policy
        .classify
        .external
        .validate()
        .map_err(|(field, message)| ConfigError::Flags { field, message })
}

/// Reloads the policy file on SIGHUP, or when its modification time changes.
pub struct Reloader {
    path: PathBuf,
    overrides: Overrides,
    tx: watch::Sender<Arc<Policy>>,
    poll: Duration,
    metrics: Option<Arc<crate::telemetry::Metrics>>,
}

impl Reloader {
    /// A reloader for `path` publishing on `tx`; polls the file's mtime every `poll`.
    pub fn new(path: PathBuf, tx: watch::Sender<Arc<Policy>>, poll: Duration) -> Reloader {
        Reloader {
            path,
            overrides: Overrides::default(),
            tx,
            poll,
            metrics: None,
        }
    }

    /// Lays the command line's external-tier settings over every reloaded file.
    pub fn with_overrides(mut self, overrides: Overrides) -> Reloader {
        self.overrides = overrides;
        self
    }

    /// Counts reloads in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<crate::telemetry::Metrics>) -> Reloader {
        self.metrics = Some(metrics);
        self
    }

    /// Loads the file and publishes it if valid; logs and keeps the old policy if not.
    pub fn reload(&self) -> bool {
        let ok = self.try_reload();
        if let Some(m) = &self.metrics {
            m.reload(ok);
        }
        ok
    }

    fn try_reload(&self) -> bool {
        match load_policy_with(&self.path, &self.overrides) {
            Ok(policy) => {
                let version = policy.version.clone();
                self.tx.send_replace(Arc::new(policy));
                tracing::info!(policy_version = %version, "policy reloaded");
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "policy reload rejected; keeping the running policy");
                false
            }
        }
    }

    fn mtime(&self) -> Option<SystemTime> {
        std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok()
    }

    /// Runs until the task is dropped.
    pub async fn run(self) {
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; reloading on change only");
                None
            }
        };
        let mut last = self.mtime();
        let mut tick = tokio::time::interval(self.poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let signalled = tokio::select! {
                _ = tick.tick() => false,
                Some(_) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
            };
            let now = self.mtime();
            if signalled || now != last {
                last = now;
                self.reload();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Category;
    use crate::policy::{Mode, Tier};

    #[test]
    fn external_errors_name_the_field_and_line() {
        let e = parse_policy(
            "version: v1\nclassify:\n  external:\n    when: sometimes\n",
            "p.yaml",
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("p.yaml:4:"), "{e}");
        assert!(e.contains("classify.external.when"), "{e}");
        let e = parse_policy(
            "version: v1\nclassify:\n  external:\n    url: http://x:1\n    kind: llama-guard\n    model: m\n    timeout: 0s\n",
            "p.yaml",
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("p.yaml:7: classify.external.timeout"), "{e}");
        let e = parse_policy(
            "version: v1\nclassify:\n  external:\n    url: ftp://x\n",
            "p.yaml",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("classify.external.url"), "{e}");
        let e = parse_policy(
            "version: v1\nclassify:\n  external:\n    categories: { S1: nonsense }\n",
            "p.yaml",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("unknown target"), "{e}");
        let ok = parse_policy(
            "version: v1\nclassify:\n  external:\n    kind: llama-guard\n    url: http://127.0.0.1:8000\n    model: m\n    categories: { S2: violent_crime, S11: crisis_self }\n",
            "p.yaml",
        )
        .unwrap();
        let x = &ok.classify.external;
        assert!(x.enabled());
        assert_eq!(
            x.target("S2"),
            Some(crate::classify::external::Target::Category(
                Category::ViolentCrime
            ))
        );
        assert_eq!(x.target("S99"), None);
    }

    #[test]
    fn empty_file_is_the_builtin_policy() {
        assert_eq!(parse_policy("", "p.yaml").unwrap(), Policy::default());
    }

    #[test]
    fn the_example_policy_is_valid_and_equals_the_defaults() {
        let text = include_str!("../../examples/policy.yaml");
        let p = parse_policy(text, "examples/policy.yaml").unwrap();
        let d = Policy::default();
        assert_eq!(p.escalation, d.escalation);
        assert_eq!(p.classify, d.classify);
        assert_eq!(p.thresholds, d.thresholds);
        for c in Category::ALL {
            assert_eq!(p.category(c), d.category(c), "{c:?}");
        }
    }

    #[test]
    fn fields_parse() {
        let p = parse_policy(
            "version: v7\nmode: shadow\nrollout_percent: 10\nmodels: ['claude-*']\n\
             categories:\n  hate: {tier: elevated, threshold: 0.8}\n",
            "p.yaml",
        )
        .unwrap();
        assert_eq!(p.version, "v7");
        assert_eq!(p.mode, Mode::Shadow);
        assert!(p.model_enabled("claude-opus") && !p.model_enabled("gpt"));
        assert_eq!(p.category(Category::Hate).tier, Tier::Elevated);
    }

    #[test]
    fn errors_name_file_line_and_field() {
        let e = parse_policy("version: v1\nescalation:\n  warning_turn: many\n", "p.yaml")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("p.yaml:3:"), "{e}");
        assert!(e.contains("escalation.warning_turn"), "{e}");

        let e = parse_policy("version: v1\nthresholdz: {}\n", "p.yaml")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("p.yaml:2:") && e.contains("thresholdz"),
            "{e}"
        );

        let e = parse_policy("version: v1\nthresholds:\n  crisis: 1.5\n", "p.yaml")
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "p.yaml:3: thresholds.crisis: 1.5 is not a score between 0 and 1"
        );

        let e = parse_policy(
            "categories:\n  nonsense: {tier: severe, threshold: 0.5}\n",
            "p.yaml",
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("p.yaml:2:") && e.contains("nonsense"), "{e}");

        let e = parse_policy("version: [unclosed\n", "p.yaml")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("p.yaml:"), "{e}");
    }

    #[tokio::test]
    async fn reload_keeps_the_old_policy_on_a_bad_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.yaml");
        std::fs::write(&path, "version: one\n").unwrap();
        let (tx, rx) = watch::channel(Arc::new(load_policy(&path).unwrap()));
        let r = Reloader::new(path.clone(), tx, Duration::from_secs(60));
        std::fs::write(&path, "version: two\n").unwrap();
        assert!(r.reload());
        assert_eq!(rx.borrow().version, "two");
        std::fs::write(&path, "version: three\nmode: sometimes\n").unwrap();
        assert!(!r.reload());
        assert_eq!(rx.borrow().version, "two");
    }
}
