//! The policy: every threshold and list of DESIGN §3, with built-in defaults.
//!
//! Parsing from YAML and file handling live in `crate::config`; this file holds the typed policy
//! and its validation, so that tests can build one as a value.

use serde::{Deserialize, Serialize};

use crate::domain::{CATEGORY_COUNT, Category};

/// Enforce verdicts, or compute them and only report (`shadow_action`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    #[default]
    Enforce,
    Shadow,
}

/// How a category escalates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tier {
    /// END-eligible with the short quota (warning on the `severe_warning_turn`-th harmful turn).
    Severe,
    /// END-eligible with the longer quota (`warning_turn`).
    Elevated,
    /// REDIRECT with crisis support; never counted, never ends.
    Crisis,
    /// REDIRECT only; never counted, never ends.
    RedirectOnly,
}

impl Tier {
    /// Precedence when several categories fire on one message.
    pub(super) fn rank(self) -> u8 {
        match self {
            Tier::Severe => 3,
            Tier::Elevated => 2,
            Tier::Crisis => 1,
            Tier::RedirectOnly => 0,
        }
    }
}

/// The `classify` section of the policy file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClassifyConfig {
    /// Tier 3: an external guard model (`classify::external`).
    pub external: crate::classify::external::ExternalConfig,
}

/// The rule for one category.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CategoryRule {
    pub tier: Tier,
    /// The merged score at or above which a message is harmful in this category.
    pub threshold: f32,
}

/// Escalation quotas and decay.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Escalation {
    /// The harmful turn that carries the warning when the episode includes a severe turn.
    pub severe_warning_turn: u8,
    /// The harmful turn that carries the warning otherwise.
    pub warning_turn: u8,
    /// Benign user turns in a row after which counters and the warning reset.
    pub decay_benign_turns: u8,
}

impl Default for Escalation {
    fn default() -> Self {
        Escalation {
            severe_warning_turn: 3,
            warning_turn: 4,
            decay_benign_turns: 6,
        }
    }
}

/// Signal thresholds.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Thresholds {
    /// Self-harm or harm-to-others crisis signal.
    pub crisis: f32,
    /// A lower crisis score that marks the thread `crisis_suspected`: no resources, but nothing
    /// ends it any more (escalation, the model, the user's request). At most `crisis`.
    pub crisis_suspect: f32,
    /// Concern for a third party.
    pub third_party: f32,
    /// "Please end this chat".
    pub end_request: f32,
    /// An affirmative reply confirming a pending end request.
    pub affirmation: f32,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            crisis: 0.5,
            crisis_suspect: 0.3,
            third_party: 0.5,
            end_request: 0.6,
            affirmation: 0.6,
        }
    }
}

/// Which categories in assistant output get REDIRECT (suppress or regenerate).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AssistantOutput {
    pub threshold: f32,
    pub categories: Vec<Category>,
}

impl Default for AssistantOutput {
    fn default() -> Self {
        AssistantOutput {
            threshold: 0.7,
            categories: vec![
                Category::ChildSexualExploitation,
                Category::IndiscriminateWeapons,
                Category::ViolentExtremism,
                Category::ViolentCrime,
                Category::CyberAttack,
                Category::SelfHarm,
            ],
        }
    }
}

/// The text the verdicts carry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Messages {
    pub redirect_harm: String,
    pub redirect_abuse: String,
    pub redirect_crisis: String,
    pub redirect_assistant_output: String,
    pub warning: String,
    /// The user-facing banner shown with a warning (`Redirect.user_notice`).
    pub warning_user_notice: String,
    pub end_confirmation: String,
    pub end_notice: String,
    pub end_notice_user_requested: String,
}

impl Default for Messages {
    fn default() -> Self {
        Messages {
            redirect_harm: "Decline this request without providing any of the harmful content. \
                Do not lecture; briefly say you can't help with that and offer a safe, related \
                alternative if one exists."
                .into(),
            redirect_abuse: "Do not respond in kind. Calmly say you are happy to keep helping \
                if the conversation stays respectful, and return to the user's task."
                .into(),
            redirect_crisis: "Do not provide this. Stay with the user: acknowledge what they \
                are going through, ask whether they are safe right now, and share the crisis \
                resources provided. Do not end or disengage from the conversation."
                .into(),
            redirect_assistant_output: "The previous reply contained harmful content. Do not \
                show it; regenerate a reply that declines that content."
                .into(),
            warning: "Tell the user clearly and calmly that if they keep asking for this, the \
                conversation may be ended."
                .into(),
            warning_user_notice: "If requests like this continue, this conversation may be \
                ended."
                .into(),
            end_confirmation: "The user asked to end this chat. Ask them to confirm, and tell \
                them that ending is permanent for this conversation: they will be able to start \
                a new chat or edit an earlier message, but not continue this one."
                .into(),
            end_notice: "This conversation has been ended because of repeated requests that \
                can't be helped with. You can start a new chat, or edit an earlier message to \
                take the conversation in a different direction."
                .into(),
            end_notice_user_requested: "You ended this conversation. You can start a new \
                chat, or edit an earlier message to continue from there."
                .into(),
        }
    }
}

/// The whole policy. `Policy::default()` is the built-in policy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Policy {
    /// Reported in every verdict as `policy_version`.
    pub version: String,
    pub mode: Mode,
    /// Share of threads (by a hash of the thread key) the policy applies to, 0 to 100.
    pub rollout_percent: f32,
    /// Glob patterns of models the policy is enabled for. Each entry but `*` also names a
    /// welfare label: an event's model is counted under the first entry it matches, else
    /// under `other`.
    pub models: Vec<String>,
    /// Rule per category; categories left out keep their default.
    pub categories: std::collections::BTreeMap<Category, CategoryRule>,
    pub escalation: Escalation,
    pub thresholds: Thresholds,
    pub assistant_output: AssistantOutput,
    pub messages: Messages,
    /// Include message text in decision-log records. Off by default: privacy first.
    pub log_content: bool,
    /// Classifier settings beyond the built-in tiers: the external tier.
    pub classify: ClassifyConfig,
    #[serde(skip)]
    pub(crate) compiled: Compiled,
}

/// Models named for welfare figures at most (the state's model slot has 5 bits; 0 is `other`).
pub const WELFARE_LABELS: usize = super::MODEL_SLOTS - 1;

/// Derived lookups, rebuilt by `Policy::compile`.
#[derive(Clone, Debug, Default)]
pub(crate) struct Compiled {
    rules: Option<[CategoryRule; CATEGORY_COUNT]>,
    models: Vec<glob::Pattern>,
    all_models: bool,
    /// The welfare labels: the `models` entries but `*` (and `other`), first 31, deduplicated.
    welfare: Vec<(String, glob::Pattern)>,
}

impl PartialEq for Compiled {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

/// A policy that fails validation.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("{field}: {message}")]
pub struct PolicyError {
    /// The offending field, as a dotted path.
    pub field: String,
    pub message: String,
}

fn err(field: impl Into<String>, message: impl Into<String>) -> PolicyError {
    PolicyError {
        field: field.into(),
        message: message.into(),
    }
}

/// The default rule of each category (DESIGN §3 severity tiers).
pub fn default_rule(category: Category) -> CategoryRule {
    let (tier, threshold) = match category {
        Category::ChildSexualExploitation
        | Category::IndiscriminateWeapons
        | Category::ViolentExtremism => (Tier::Severe, 0.5),
        Category::ViolentCrime | Category::CyberAttack | Category::Abuse => (Tier::Elevated, 0.6),
        Category::Hate | Category::Sexual => (Tier::RedirectOnly, 0.6),
        Category::SelfHarm | Category::HarmToOthers => (Tier::Crisis, 0.5),
    };
    CategoryRule { tier, threshold }
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            version: "builtin-1".into(),
            mode: Mode::Enforce,
            rollout_percent: 100.0,
            models: vec!["*".into()],
            categories: Default::default(),
            escalation: Escalation::default(),
            thresholds: Thresholds::default(),
            assistant_output: AssistantOutput::default(),
            messages: Messages::default(),
            log_content: false,
            classify: ClassifyConfig::default(),
            compiled: Compiled::default(),
        }
        .compile()
        .expect("the built-in policy is valid")
    }
}

impl Policy {
    /// Validates the policy and builds its lookups. Every error names its field.
    pub fn compile(mut self) -> Result<Policy, PolicyError> {
        if self.version.trim().is_empty() {
            return Err(err("version", "must not be empty"));
        }
        if !(0.0..=100.0).contains(&self.rollout_percent) {
            return Err(err("rollout_percent", "must be between 0 and 100"));
        }
        let e = &self.escalation;
        if e.severe_warning_turn == 0 || e.warning_turn == 0 {
            return Err(err("escalation", "warning turns must be at least 1"));
        }
        if e.decay_benign_turns == 0 {
            return Err(err("escalation.decay_benign_turns", "must be at least 1"));
        }
        // Fork snapshots keep counters up to 63; quotas and decay must stay below.
        for (field, v) in [
            ("escalation.severe_warning_turn", e.severe_warning_turn),
            ("escalation.warning_turn", e.warning_turn),
            ("escalation.decay_benign_turns", e.decay_benign_turns),
        ] {
            if v > 32 {
                return Err(err(field, format!("{v} is above the maximum of 32")));
            }
        }
        let unit = |field: &str, v: f32| -> Result<(), PolicyError> {
            if (0.0..=1.0).contains(&v) {
                Ok(())
            } else {
                Err(err(field, format!("{v} is not a score between 0 and 1")))
            }
        };
        self.classify
            .external
            .validate()
            .map_err(|(field, message)| err(field, message))?;
        let t = &self.thresholds;
        unit("thresholds.crisis", t.crisis)?;
        unit("thresholds.crisis_suspect", t.crisis_suspect)?;
        if t.crisis_suspect > t.crisis {
            return Err(err(
                "thresholds.crisis_suspect",
                format!(
                    "{} is above thresholds.crisis ({}): suspicion must come before certainty",
                    t.crisis_suspect, t.crisis
                ),
            ));
        }
        unit("thresholds.third_party", t.third_party)?;
        unit("thresholds.end_request", t.end_request)?;
        unit("thresholds.affirmation", t.affirmation)?;
        unit(
            "assistant_output.threshold",
            self.assistant_output.threshold,
        )?;
        let mut rules = Category::ALL.map(default_rule);
        for (category, rule) in &self.categories {
            let field = format!("categories.{}", category.name());
            unit(&format!("{field}.threshold"), rule.threshold)?;
            // The crisis exemption is not configurable away: these categories never END.
            let crisis_only = matches!(category, Category::SelfHarm | Category::HarmToOthers);
            if crisis_only && rule.tier != Tier::Crisis {
                return Err(err(
                    format!("{field}.tier"),
                    "must be `crisis`: never ended",
                ));
            }
            if !crisis_only && rule.tier == Tier::Crisis {
                return Err(err(
                    format!("{field}.tier"),
                    "only self_harm and harm_to_others",
                ));
            }
            rules[category.index()] = *rule;
        }
        let mut models = Vec::with_capacity(self.models.len());
        for (i, m) in self.models.iter().enumerate() {
            let pattern = glob::Pattern::new(m)
                .map_err(|e| err(format!("models[{i}]"), format!("bad glob {m:?}: {e}")))?;
            models.push(pattern);
        }
        for (name, text) in [
            ("redirect_harm", &self.messages.redirect_harm),
            ("end_notice", &self.messages.end_notice),
            ("warning", &self.messages.warning),
        ] {
            if text.trim().is_empty() {
                return Err(err(format!("messages.{name}"), "must not be empty"));
            }
        }
        let mut welfare: Vec<(String, glob::Pattern)> = Vec::new();
        for (entry, pattern) in self.models.iter().zip(&models) {
            let named = entry != "*" && entry != "other";
            if named && !welfare.iter().any(|(e, _)| e == entry) && welfare.len() < WELFARE_LABELS {
                welfare.push((entry.clone(), pattern.clone()));
            }
        }
        self.compiled = Compiled {
            rules: Some(rules),
            all_models: self.models.iter().any(|m| m == "*"),
            models,
            welfare,
        };
        Ok(self)
    }

    /// The rule of one category.
    pub fn category(&self, category: Category) -> CategoryRule {
        match &self.compiled.rules {
            Some(rules) => rules[category.index()],
            None => default_rule(category),
        }
    }

    /// True if the policy is on for this model.
    pub fn model_enabled(&self, model: &str) -> bool {
        self.compiled.all_models || self.compiled.models.iter().any(|p| p.matches(model))
    }

    /// The welfare label of a model: the first `models` entry (other than `*`) it matches, as
    /// written; `None` stands for `other`. Never the event's own string: the set is bounded.
    pub fn welfare_label(&self, model: &str) -> Option<&str> {
        self.compiled
            .welfare
            .iter()
            .find(|(_, p)| p.matches(model))
            .map(|(e, _)| e.as_str())
    }

    /// Every welfare label the policy names, in its order (`other` is implied).
    pub fn welfare_labels(&self) -> impl Iterator<Item = &str> {
        self.compiled.welfare.iter().map(|(e, _)| e.as_str())
    }

    /// True if this thread falls inside the rollout percentage.
    pub fn in_rollout(&self, thread_hash: u64) -> bool {
        if self.rollout_percent >= 100.0 {
            return true;
        }
        let bucket = (thread_hash % 10_000) as f32;
        bucket < self.rollout_percent * 100.0
    }
}
