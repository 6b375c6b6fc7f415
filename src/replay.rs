//! `threadwarden replay FILE.jsonl`: conversations through the same engine as the server, one
//! verdict per event, as a table or JSON lines.
//!
//! Format: one JSON object per line; blank lines and lines starting with `#` are skipped.
//! `{"thread": "t1", "role": "user", "text": "..."}`; roles: `user`, `assistant` (with optional
//! `refused`, `end_requested`), `confirm_end`, `fork` (with `parent` and `after_turn`). Optional on
//! any line: `tenant`, `locale`, `model`, `event_id` (default: the line number), `signals`
//! (`[{"category": "abuse", "score": 0.9}]`), and `expect` (an action: the replay fails if the
//! verdict's action differs, which makes a conversation file a test).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;
use tokio::sync::watch;

use crate::api::convert::category_to_pb;
use crate::api::engine::Engine;
use crate::api::pb;
use crate::classify::Classifier;
use crate::config::{self, ConfigError};
use crate::crisis::Directory;
use crate::domain::Category;
use crate::policy::Policy;
use crate::state::{StoreConfig, ThreadStore};

/// Why a replay failed.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}: {message}")]
    Line {
        path: String,
        line: usize,
        message: String,
    },
    #[error("{0} verdict(s) differed from `expect`")]
    Expectations(usize),
}

impl ReplayError {
    /// True when the input (policy or file) is malformed.
    pub fn is_usage(&self) -> bool {
        matches!(self, ReplayError::Config(_) | ReplayError::Line { .. })
    }
}

/// One line of a replay file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Line {
    pub thread: String,
    pub role: Role,
    #[serde(default)]
    pub text: String,
    #[serde(default)]
    pub refused: bool,
    #[serde(default)]
    pub end_requested: bool,
    #[serde(default)]
    pub parent: String,
    #[serde(default)]
    pub after_turn: u32,
    #[serde(default)]
    pub tenant: String,
    #[serde(default)]
    pub locale: String,
    #[serde(default)]
    pub model: String,
    #[serde(default)]
    pub event_id: Option<String>,
    #[serde(default)]
    pub signals: Vec<LineSignal>,
    #[serde(default)]
    pub expect: Option<String>,
}

/// The role of a replay line.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    User,
    Assistant,
    ConfirmEnd,
    Fork,
}

/// A caller signal on a replay line.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LineSignal {
    pub category: Category,
    pub score: f32,
}

impl Line {
    /// The wire event this line stands for.
    pub fn to_event(&self, default_id: String) -> pb::ConversationEvent {
        use pb::conversation_event::Payload;
        let payload = match self.role {
            Role::User => Payload::UserMessage(pb::UserMessage {
                text: self.text.clone(),
            }),
            Role::Assistant => Payload::AssistantMessage(pb::AssistantMessage {
                text: self.text.clone(),
                refused: self.refused,
                end_conversation_requested: self.end_requested,
            }),
            Role::ConfirmEnd => Payload::ConfirmEnd(pb::ConfirmEnd {}),
            Role::Fork => Payload::Fork(pb::ForkThread {
                parent_thread_id: self.parent.clone(),
                after_turn: self.after_turn,
            }),
        };
        pb::ConversationEvent {
            event_id: self.event_id.clone().unwrap_or(default_id),
            thread_id: self.thread.clone(),
            tenant_id: self.tenant.clone(),
            model: self.model.clone(),
            locale: self.locale.clone(),
            payload: Some(payload),
            signals: self
                .signals
                .iter()
                .map(|s| pb::Signal {
                    category: category_to_pb(s.category) as i32,
                    score: s.score,
                    source: "replay".into(),
                })
                .collect(),
            traceparent: String::new(),
        }
    }
}

/// An engine with the built-in parts and the given policy, for offline use.
pub fn offline_engine(policy: Policy) -> Engine {
    let (_tx, rx) = watch::channel(Arc::new(policy));
    Engine::new(
        ThreadStore::new(StoreConfig::default()),
        Classifier::shared(),
        rx,
        Arc::new(Directory::builtin()),
        crate::api::engine::Sinks::quiet(0),
    )
}

fn name(value: i32, f: impl Fn(i32) -> Option<&'static str>) -> String {
    f(value).unwrap_or("?").to_string()
}

fn short(a: i32) -> String {
    name(a, |v| pb::Action::try_from(v).ok().map(|a| a.as_str_name()))
        .trim_start_matches("ACTION_")
        .to_string()
}

/// Replays `path`, printing a verdict per event.
pub fn run(path: &Path, policy: Option<&Path>, as_json: bool) -> Result<(), ReplayError> {
    let policy = match policy {
        Some(p) => config::load_policy(p)?,
        None => Policy::default(),
    };
    let engine = offline_engine(policy);
    let io = |source| ReplayError::Io {
        path: path.display().to_string(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    if !as_json {
        println!(
            "{:>4}  {:<10} {:>4}  {:<12} {:<9} {:<17} {:<7} {:<15} text",
            "line", "thread", "turn", "role", "action", "reason", "warning", "crisis"
        );
    }
    let mut mismatches = 0;
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let n = i + 1;
        let line = line.map_err(io)?;
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let parsed: Line = serde_json::from_str(trimmed).map_err(|e| ReplayError::Line {
            path: path.display().to_string(),
            line: n,
            message: e.to_string(),
        })?;
        let event = parsed.to_event(format!("line-{n}"));
        let result = engine.decide(&event);
        let (action, summary) = match &result {
            Ok(d) => (short(d.verdict.action), d.verdict.clone()),
            Err(e) => (format!("ERROR {}", e.code()), pb::Verdict::default()),
        };
        let ok = parsed
            .expect
            .as_ref()
            .is_none_or(|want| want.eq_ignore_ascii_case(&action));
        if !ok {
            mismatches += 1;
        }
        if as_json {
            let out = match &result {
                Ok(d) => serde_json::json!({
                    "line": n, "thread": parsed.thread, "role": format!("{:?}", parsed.role).to_lowercase(),
                    "action": action,
                    "reason": name(d.verdict.reason, |v| pb::Reason::try_from(v).ok().map(|r| r.as_str_name())),
                    "warning": d.verdict.redirect.as_ref().is_some_and(|r| r.warning),
                    "crisis": d.verdict.crisis.as_ref().map(|c| name(c.kind, |v| pb::CrisisKind::try_from(v).ok().map(|k| k.as_str_name()))),
                    "end_confirmation_required": d.verdict.end_confirmation_required,
                    "end_denied": d.verdict.end_denied,
                    "turn": d.verdict.thread.as_ref().map(|t| t.turn),
                    "harmful_turns": d.verdict.thread.as_ref().map(|t| t.harmful_turns),
                    "expect_ok": ok,
                }),
                Err(e) => {
                    serde_json::json!({"line": n, "thread": parsed.thread, "error": {"code": e.code(), "message": e.to_string()}, "expect_ok": ok})
                }
            };
            println!("{out}");
            continue;
        }
        let reason = name(summary.reason, |v| {
            pb::Reason::try_from(v).ok().map(|r| r.as_str_name())
        })
        .trim_start_matches("REASON_")
        .to_lowercase();
        let warning = summary.redirect.as_ref().is_some_and(|r| r.warning);
        let crisis = summary
            .crisis
            .as_ref()
            .map(|c| {
                name(c.kind, |v| {
                    pb::CrisisKind::try_from(v).ok().map(|k| k.as_str_name())
                })
            })
            .unwrap_or_default()
            .trim_start_matches("CRISIS_KIND_")
            .to_lowercase();
        let mut notes = String::new();
        if summary.end_confirmation_required {
            notes.push_str(" [confirm?]");
        }
        if summary.end_denied {
            notes.push_str(&format!(" [end denied: {}]", summary.end_denied_detail));
        }
        if !ok {
            notes.push_str(&format!(
                " [EXPECTED {}]",
                parsed.expect.as_deref().unwrap_or("")
            ));
        }
        let text: String = parsed.text.chars().take(40).collect();
        println!(
            "{n:>4}  {:<10} {:>4}  {:<12} {:<9} {:<17} {:<7} {:<15} {text}{notes}",
            parsed.thread.chars().take(10).collect::<String>(),
            summary.thread.as_ref().map(|t| t.turn).unwrap_or(0),
            format!("{:?}", parsed.role).to_lowercase(),
            action,
            reason,
            if warning { "yes" } else { "" },
            crisis,
        );
    }
    if mismatches > 0 {
        return Err(ReplayError::Expectations(mismatches));
    }
    Ok(())
}
