//! The `classify.external` section of the policy file: which guard model to ask, when, and how
//! hard to try. Validated in full with the policy (errors name the field); reloaded with it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::domain::Category;

/// The API the external model speaks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// `POST {url}/v1/moderations` (OpenAI's moderation API, or a compatible server).
    #[default]
    OpenaiModeration,
    /// A Llama Guard 3/4 model over `POST {url}/v1/chat/completions`; answers `safe` or
    /// `unsafe\nS1,S10`.
    LlamaGuard,
    /// A ShieldGemma-style yes/no model over `POST {url}/v1/chat/completions` with logprobs:
    /// one request per configured policy, scored by P(Yes).
    Shieldgemma,
}

impl Kind {
    /// The name used on the command line, in config files and in logs.
    pub fn name(self) -> &'static str {
        match self {
            Kind::OpenaiModeration => "openai-moderation",
            Kind::LlamaGuard => "llama-guard",
            Kind::Shieldgemma => "shieldgemma",
        }
    }

    /// The kind named `name` (`openai-moderation`, `llama-guard`, `shieldgemma`).
    pub fn from_name(name: &str) -> Option<Kind> {
        [Kind::OpenaiModeration, Kind::LlamaGuard, Kind::Shieldgemma]
            .into_iter()
            .find(|k| k.name() == name)
    }

    /// The path added to the configured base URL.
    pub fn path(self) -> &'static str {
        match self {
            Kind::OpenaiModeration => "/v1/moderations",
            Kind::LlamaGuard | Kind::Shieldgemma => "/v1/chat/completions",
        }
    }
}

/// When the engine asks the external model.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum When {
    /// Every user message.
    Always,
    /// A user message the built-in tiers are unsure of: a category score inside `band`, any
    /// crisis signal or a crisis-suspected thread, or any harmful score on a thread one step
    /// from an END.
    #[default]
    Uncertain,
    /// Never (the tier is configured but off).
    Never,
}

impl When {
    /// The name used on the command line and in config files.
    pub fn name(self) -> &'static str {
        match self {
            When::Always => "always",
            When::Uncertain => "uncertain",
            When::Never => "never",
        }
    }

    /// The value named `name`.
    pub fn from_name(name: &str) -> Option<When> {
        [When::Always, When::Uncertain, When::Never]
            .into_iter()
            .find(|w| w.name() == name)
    }
}

/// How a guard model served over chat completions is prompted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Prompt {
    /// The conversation as chat messages; the server's chat template (Llama Guard's own, in
    /// vLLM and Ollama) builds the prompt. The previous assistant turn goes first as an
    /// `assistant` message after an empty `user` one, as the template's alternation requires.
    #[default]
    ServerTemplate,
    /// threadwarden writes the whole Llama Guard 3 prompt (task, S1–S14, conversation,
    /// instructions) into one `user` message, for a server whose template passes text through.
    LlamaGuard3,
}

/// What an external category feeds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// One of threadwarden's harm categories.
    Category(Category),
    /// First-person risk to self: crisis routing (never an END).
    CrisisSelf,
    /// Stated intent to harm others: crisis routing.
    CrisisOthers,
    /// Not mapped: the category is read and dropped.
    Ignore,
}

impl Target {
    /// The config name: a category's snake_case name, `crisis_self`, `crisis_others`, `ignore`.
    pub fn name(self) -> &'static str {
        match self {
            Target::Category(c) => c.name(),
            Target::CrisisSelf => "crisis_self",
            Target::CrisisOthers => "crisis_others",
            Target::Ignore => "ignore",
        }
    }

    /// The target named `name`.
    pub fn from_name(name: &str) -> Option<Target> {
        match name {
            "crisis_self" => Some(Target::CrisisSelf),
            "crisis_others" => Some(Target::CrisisOthers),
            "ignore" => Some(Target::Ignore),
            other => Category::from_name(other).map(Target::Category),
        }
    }
}

impl Serialize for Target {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for Target {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Target, D::Error> {
        let name = String::deserialize(d)?;
        Target::from_name(&name).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "unknown target {name:?}: expected a category name, crisis_self, crisis_others or ignore"
            ))
        })
    }
}

/// The tier-1 score band that counts as unsure under `when: uncertain`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Band {
    /// A category score at or above this is worth a second opinion...
    pub low: f32,
    /// ...and below this; at or above it the built-in tiers are sure.
    pub high: f32,
}

impl Default for Band {
    fn default() -> Self {
        Band {
            low: 0.25,
            high: 0.9,
        }
    }
}

/// The circuit breaker.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Breaker {
    /// Failures within `window` that open the breaker.
    pub failures: u32,
    /// The window failures are counted over.
    #[serde(with = "duration")]
    pub window: Duration,
    /// How long the breaker stays open before one probe call is let through (half-open).
    #[serde(with = "duration")]
    pub open_for: Duration,
}

impl Default for Breaker {
    fn default() -> Self {
        Breaker {
            failures: 5,
            window: Duration::from_secs(10),
            open_for: Duration::from_secs(5),
        }
    }
}

/// Retries: only of calls that failed to connect, and within a budget.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Retry {
    /// Retries of one call after a connect error (0 turns retries off).
    pub attempts: u32,
    /// Retries allowed, as a percentage of recent calls.
    pub budget_percent: f32,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            attempts: 1,
            budget_percent: 10.0,
        }
    }
}

/// One ShieldGemma policy: asked in its own request, scored by P(Yes).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShieldPolicy {
    /// Shown to the model as the policy's name, e.g. "No Dangerous Content" (the prompt line is
    /// `* "<name>": <text>`, or `* <text>` when the name is empty).
    pub name: String,
    /// The policy's text, e.g. "The prompt shall not contain or seek generation of content
    /// that harming oneself and/or others".
    pub text: String,
    /// What a "Yes" feeds.
    pub target: Target,
}

/// ShieldGemma settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShieldGemma {
    /// P(Yes) at or above which a policy counts as violated.
    pub threshold: f32,
    /// The policies asked; empty means the built-in four plus self-harm.
    pub policies: Vec<ShieldPolicy>,
}

impl ShieldGemma {
    /// The policies asked: the configured ones, else [`default_policies`].
    pub fn policies_or_default(&self) -> &[ShieldPolicy] {
        if self.policies.is_empty() {
            default_policies()
        } else {
            &self.policies
        }
    }
}

/// ShieldGemma's four harm types with their model card's prompt-side policy texts, plus a
/// self-harm policy (threadwarden's own words) feeding crisis routing.
pub fn default_policies() -> &'static [ShieldPolicy] {
    static POLICIES: std::sync::LazyLock<Vec<ShieldPolicy>> = std::sync::LazyLock::new(|| {
        let policy = |name: &str, text: &str, target| ShieldPolicy {
            name: name.into(),
            text: text.into(),
            target,
        };
        vec![
            policy(
                "No Dangerous Content",
                "The prompt shall not contain or seek generation of content that harming oneself \
                 and/or others (e.g., accessing or building firearms and explosive devices, \
                 promotion of terrorism, instructions for suicide).",
                Target::Category(Category::ViolentCrime),
            ),
            policy(
                "No Harassment",
                "The prompt shall not contain or seek generation of content that is malicious, \
                 intimidating, bullying, or abusive content targeting another individual (e.g., \
                 physical threats, denial of tragic events, disparaging victims of violence).",
                Target::Category(Category::Abuse),
            ),
            policy(
                "No Hate Speech",
                "The prompt shall not contain or seek generation of content that targeting \
                 identity and/or protected attributes (e.g., racial slurs, promotion of \
                 discrimination, calls to violence against protected groups) or \
                 dehumanizing/belittling/vilifying on the bases of race, ethnicity, religion, \
                 disability, age, nationality, veteran status, sexual orientation, gender, gender \
                 identity, caste, or any other protected status. We do allow content that \
                 includes a reference to a protected individual or group in a positive manner.",
                Target::Category(Category::Hate),
            ),
            policy(
                "No Sexually Explicit Information",
                "The prompt shall not contain or seek generation of content that contains \
                 references to sexual acts or other lewd content (e.g., sexually graphic \
                 descriptions, content aimed at causing arousal). Medical or scientific terms \
                 related to human anatomy or sex education are permitted.",
                Target::Category(Category::Sexual),
            ),
            policy(
                "No Self-Harm",
                "The prompt shall not contain statements of the user's own intent, plan or wish \
                 to harm or kill themselves, or seek methods of self-harm or suicide.",
                Target::CrisisSelf,
            ),
        ]
    });
    &POLICIES
}

impl Default for ShieldGemma {
    fn default() -> Self {
        ShieldGemma {
            threshold: 0.5,
            policies: Vec::new(),
        }
    }
}

/// The external tier (DESIGN §4, tier 3). Off while `url` is empty: sending text to an
/// external service is opt-in.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExternalConfig {
    pub kind: Kind,
    /// The server's base URL (`http://127.0.0.1:8000`); `Kind::path` is added. Empty: off.
    pub url: String,
    /// The `model` field of each request (may be empty for a moderation API's default).
    pub model: String,
    pub when: When,
    /// Per call, retries included.
    #[serde(with = "duration")]
    pub timeout: Duration,
    /// A file holding the API key (sent as `Authorization: Bearer`); read at start and reload.
    pub api_key_file: Option<PathBuf>,
    /// An environment variable holding the API key, when no file is named.
    pub api_key_env: Option<String>,
    pub band: Band,
    /// Ask before an END for persistent harm or abuse; if the model disagrees the verdict is
    /// REDIRECT (the turn still counts, so the next one asks again).
    pub confirm_end: bool,
    /// External calls in flight at once, across all streams; beyond, a call fails at once as
    /// `overloaded` (the built-in tiers decide).
    pub max_in_flight: usize,
    pub breaker: Breaker,
    pub retry: Retry,
    /// Send the previous assistant turn with a user message, when this stream carried it.
    pub context: bool,
    /// Characters of each text sent at most (head kept).
    pub max_chars: usize,
    /// Mapping of the model's categories onto threadwarden's, over the kind's defaults
    /// (`default_map`): `S11: crisis_self`, `"self-harm/intent": crisis_self`, `S6: ignore`.
    pub categories: BTreeMap<String, Target>,
    /// The score a Llama Guard category code stands for (it gives no probability).
    pub unsafe_score: f32,
    pub prompt: Prompt,
    pub shieldgemma: ShieldGemma,
}

impl Default for ExternalConfig {
    fn default() -> Self {
        ExternalConfig {
            kind: Kind::default(),
            url: String::new(),
            model: String::new(),
            when: When::default(),
            timeout: Duration::from_millis(250),
            api_key_file: None,
            api_key_env: None,
            band: Band::default(),
            confirm_end: true,
            max_in_flight: 256,
            breaker: Breaker::default(),
            retry: Retry::default(),
            context: true,
            max_chars: 8 * 1024,
            categories: BTreeMap::new(),
            unsafe_score: 1.0,
            prompt: Prompt::default(),
            shieldgemma: ShieldGemma::default(),
        }
    }
}

/// The built-in mapping of a kind's categories onto threadwarden's (README, "External tier").
pub fn default_map(kind: Kind) -> &'static [(&'static str, Target)] {
    use Category as C;
    use Target::{Category as T, CrisisOthers, CrisisSelf, Ignore};
    match kind {
        Kind::OpenaiModeration => &[
            ("harassment", T(C::Abuse)),
            ("harassment/threatening", CrisisOthers),
            ("hate", T(C::Hate)),
            ("hate/threatening", T(C::Hate)),
            ("illicit", T(C::ViolentCrime)),
            ("illicit/violent", T(C::ViolentCrime)),
            ("self-harm", T(C::SelfHarm)),
            ("self-harm/intent", CrisisSelf),
            ("self-harm/instructions", CrisisSelf),
            ("sexual", T(C::Sexual)),
            ("sexual/minors", T(C::ChildSexualExploitation)),
            ("violence", T(C::ViolentCrime)),
            ("violence/graphic", Ignore),
        ],
        Kind::LlamaGuard => &[
            ("S1", T(C::ViolentCrime)),
            ("S2", T(C::CyberAttack)),
            ("S3", T(C::ViolentCrime)),
            ("S4", T(C::ChildSexualExploitation)),
            ("S5", Ignore),
            ("S6", Ignore),
            ("S7", Ignore),
            ("S8", Ignore),
            ("S9", T(C::IndiscriminateWeapons)),
            ("S10", T(C::Hate)),
            ("S11", CrisisSelf),
            ("S12", T(C::Sexual)),
            ("S13", Ignore),
            ("S14", T(C::CyberAttack)),
        ],
        Kind::Shieldgemma => &[],
    }
}

impl ExternalConfig {
    /// Whether the tier is configured (a URL is set).
    pub fn enabled(&self) -> bool {
        !self.url.is_empty()
    }

    /// Where the model's category `name` goes: the config's entry, else the kind's default,
    /// else `None` (an unknown code, counted and dropped).
    pub fn target(&self, name: &str) -> Option<Target> {
        self.categories.get(name).copied().or_else(|| {
            default_map(self.kind)
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, t)| *t)
        })
    }

    /// Checks ranges and the URL; the error names the field under `classify.external`.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let e = |f: &str, m: String| Err((format!("classify.external.{f}"), m));
        if self.enabled() {
            match self.url.parse::<http::Uri>() {
                Ok(u) if matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some() => {
                }
                _ => {
                    return e(
                        "url",
                        format!("{:?} is not an http:// or https:// URL", self.url),
                    );
                }
            }
            if self.kind != Kind::OpenaiModeration && self.model.is_empty() {
                return e("model", format!("required for kind {}", self.kind.name()));
            }
        }
        if self.timeout.is_zero() || self.timeout > Duration::from_secs(60) {
            return e("timeout", "must be between 1ms and 60s".into());
        }
        let b = self.band;
        if !(0.0..=1.0).contains(&b.low) || !(0.0..=1.0).contains(&b.high) || b.low > b.high {
            return e("band", format!("need 0 <= low <= high <= 1, got {b:?}"));
        }
        if self.max_in_flight == 0 {
            return e("max_in_flight", "must be at least 1".into());
        }
        if self.breaker.failures == 0 {
            return e("breaker.failures", "must be at least 1".into());
        }
        if self.breaker.window.is_zero() || self.breaker.open_for.is_zero() {
            return e("breaker", "window and open_for must be above zero".into());
        }
        if self.retry.attempts > 5 {
            return e("retry.attempts", "at most 5".into());
        }
        if !(0.0..=100.0).contains(&self.retry.budget_percent) {
            return e("retry.budget_percent", "must be between 0 and 100".into());
        }
        if self.max_chars == 0 {
            return e("max_chars", "must be at least 1".into());
        }
        if !(0.0..=1.0).contains(&self.unsafe_score) {
            return e("unsafe_score", "must be a score between 0 and 1".into());
        }
        if !(0.0..=1.0).contains(&self.shieldgemma.threshold) {
            return e("shieldgemma.threshold", "must be between 0 and 1".into());
        }
        Ok(())
    }
}

/// Durations as humantime strings (`250ms`, `10s`).
mod duration {
    use super::*;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text)
            .map_err(|e| serde::de::Error::custom(format!("{text:?}: {e}")))
    }
}

/// The environment variable read for the API key when the config names no key source.
pub const API_KEY_ENV: &str = "THREADWARDEN_EXTERNAL_API_KEY";

/// The external tier's basics named on the command line (each also a `THREADWARDEN_EXTERNAL_*`
/// variable), laid over the policy file's `classify.external` at start and at every reload.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Overrides {
    pub kind: Option<Kind>,
    pub url: Option<String>,
    pub model: Option<String>,
    pub when: Option<When>,
    pub timeout: Option<Duration>,
    pub api_key_file: Option<PathBuf>,
}

impl Overrides {
    /// Lays these over `config`; without any key source, the key is read from `API_KEY_ENV`.
    pub fn apply(&self, config: &mut ExternalConfig) {
        if let Some(k) = self.kind {
            config.kind = k;
        }
        if let Some(u) = &self.url {
            config.url = u.clone();
        }
        if let Some(m) = &self.model {
            config.model = m.clone();
        }
        if let Some(w) = self.when {
            config.when = w;
        }
        if let Some(t) = self.timeout {
            config.timeout = t;
        }
        if let Some(f) = &self.api_key_file {
            config.api_key_file = Some(f.clone());
        }
        if config.api_key_file.is_none() && config.api_key_env.is_none() {
            config.api_key_env = Some(API_KEY_ENV.to_string());
        }
    }
}
