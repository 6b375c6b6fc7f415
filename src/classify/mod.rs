//! Tier-1 built-in classifier: in-process, microseconds, explainable.
//!
//! Owns turning one message into `Scores`: normalise, match the embedded weighted lexicon with
//! one Aho-Corasick DFA, apply structural rules and benign-context suppressors (the rules);
//! then the semantic tier ([`semantic`]): the normalised text's mean static-embedding vector,
//! per-head logits, and per head a learned combiner over the rules' score and the semantic
//! logits, whose calibrated output replaces the rules' score for the heads `train` adopted.
//! It must not do I/O, use tokio, keep per-conversation state (that is `policy`/`state`), or
//! read unbounded text: callers pass a bounded window or use `classify_bounded`.

pub mod external;
mod lexicon;
pub mod model;
mod normalize;
mod rules;
pub mod semantic;

#[cfg(test)]
mod tests;

pub use lexicon::LexiconError;
pub use model::{Model, ModelError};
pub use normalize::normalize;
pub use semantic::TierHead;

use normalize::NormBuf;
use semantic::{DIMS, HEAD_COUNT, Semantic, SemanticScratch};

use crate::domain::{Category, Scores};

use lexicon::{AffirmationSpec, BUILTIN_YAML, Effect, Lexicon};
use rules::Work;

/// The built-in rule classifier; cheap to share behind an `Arc`, immutable after construction.
pub struct Classifier {
    lexicon: Lexicon,
    /// The adopted heads of the learned n-gram component (`threadwarden-lab train`), if any.
    model: Option<Model>,
    /// The semantic tier, when its heads are trained and at least one is adopted.
    semantic: Option<std::sync::Arc<Semantic>>,
}

/// The versioned weights of the learned component, written by `threadwarden-lab train`.
pub const MODEL_BYTES: &[u8] = include_bytes!("model.bin");

/// Path of the weights file in the repository, relative to the crate root.
pub const MODEL_PATH: &str = "src/classify/model.bin";

/// Why a message scored as it did, for `threadwarden check TEXT`.
#[derive(Clone, Debug, PartialEq)]
pub struct Explanation {
    /// The normalised text the rules ran on.
    pub normalized: String,
    /// Evidence and applied suppressors, in text order.
    pub hits: Vec<Hit>,
    /// The scores, identical to `Classifier::classify` on the same text.
    pub scores: Scores,
    /// What each tier said, when the semantic tier ran.
    pub tiers: Option<Tiers>,
}

/// Each tier's view of one message, for `threadwarden check`.
#[derive(Clone, Debug, PartialEq)]
pub struct Tiers {
    /// The rules' scores alone (with the n-gram heads, if adopted).
    pub rules: Scores,
    /// Per head (in [`semantic::HEADS`] order): the semantic probability, the combined score
    /// on the policy's scale, and whether the combined score is used.
    pub heads: Vec<TierHead>,
}

/// One rule firing (or one suppressor applying) in an explanation.
#[derive(Clone, Debug, PartialEq)]
pub struct Hit {
    /// Stable rule id, e.g. `intent_object:weapons.nerve_agent` or `suppressor:kill_process`.
    pub rule: String,
    /// The category raised, if the rule raises one.
    pub category: Option<Category>,
    /// The signal raised (`crisis_self`, `end_request`, ...), if the rule raises one.
    pub signal: Option<&'static str>,
    /// Score contributed (after suppression), or the factor for a suppressor.
    pub weight: f32,
    /// Byte range in `Explanation::normalized`.
    pub span: (usize, usize),
    /// Whether a suppressor damped this hit.
    pub suppressed: bool,
}

impl Classifier {
    /// The classifier over the embedded lexicon and the embedded learned tiers; panics only if
    /// the embedded data is broken.
    pub fn builtin() -> Classifier {
        crate::huge_pages::prefer(|| {
            let model = Model::from_bytes(MODEL_BYTES)
                .expect("embedded model.bin is valid")
                .adopted();
            Classifier::rules_only()
                .with_model(Some(model))
                .with_semantic(Some(std::sync::Arc::new(Semantic::builtin())))
        })
    }

    /// The same rules with a semantic tier (kept only if it has an adopted head).
    pub fn with_semantic(mut self, semantic: Option<std::sync::Arc<Semantic>>) -> Classifier {
        self.semantic = semantic.filter(|s| s.heads().is_some_and(|h| h.any_adopted()));
        self
    }

    /// The semantic tier in use, if any.
    pub fn semantic(&self) -> Option<&Semantic> {
        self.semantic.as_deref()
    }

    /// The classifier over the embedded lexicon alone, without the learned component.
    pub fn rules_only() -> Classifier {
        Classifier::from_yaml(BUILTIN_YAML).expect("embedded lexicon.yaml is valid")
    }

    /// The same rules with `model`'s heads merged in by maximum (a model without heads is none).
    pub fn with_model(mut self, model: Option<Model>) -> Classifier {
        self.model = model.filter(|m| !m.heads.is_empty());
        self
    }

    /// The process-wide built-in classifier, built once on first use (building it compiles the
    /// automata: a fraction of a second in release, seconds in debug).
    pub fn shared() -> std::sync::Arc<Classifier> {
        static SHARED: std::sync::OnceLock<std::sync::Arc<Classifier>> = std::sync::OnceLock::new();
        SHARED
            .get_or_init(|| std::sync::Arc::new(Classifier::builtin()))
            .clone()
    }

    /// A classifier over a lexicon document in the embedded format. Its automata are built
    /// inside [`crate::huge_pages::prefer`]: every message walks them at scattered places.
    pub fn from_yaml(yaml: &str) -> Result<Classifier, LexiconError> {
        Ok(Classifier {
            lexicon: crate::huge_pages::prefer(|| Lexicon::from_yaml(yaml))?,
            model: None,
            semantic: None,
        })
    }

    /// Number of distinct lexicon patterns after expansion.
    #[cfg(test)]
    pub fn lexicon_size(&self) -> usize {
        self.lexicon.pattern_count()
    }

    /// Scores one message (the caller bounds its length).
    pub fn classify(&self, text: &str) -> Scores {
        self.classify_by(text, Author::User)
    }

    /// Scores one message by its author: the semantic tier learned users' requests, so an
    /// assistant's reply is scored by the rules alone.
    pub fn classify_by(&self, text: &str, author: Author) -> Scores {
        SCRATCH.with(|cell| match cell.try_borrow_mut() {
            Ok(mut scratch) => {
                let scores = self.classify_with(text, author, &mut scratch);
                scratch.norm.shrink(SCRATCH_MAX_BYTES);
                scores
            }
            // Only reachable if a caller re-entered `classify` on this thread mid-call.
            Err(_) => self.classify_with(text, author, &mut Scratch::default()),
        })
    }

    fn classify_with(&self, text: &str, author: Author, scratch: &mut Scratch) -> Scores {
        let Scratch {
            norm,
            work,
            semantic,
        } = scratch;
        let normalized = norm.normalize(text);
        let (mut scores, _) = self.score_normalized(normalized, work);
        if let (Some(sem), Author::User) = (&self.semantic, author) {
            semantic.apply(sem, normalized, &mut scores, None);
        }
        scores
    }

    /// Scores already-normalised text by the rules: affirmation, n-gram heads, then the lexicon
    /// (one pass of the automata finds every hit, or none: no separate `is_match` scan). Also
    /// returns the n-gram model's probabilities in head order, for `explain`; `work` keeps the
    /// rule evidence.
    fn score_normalized(&self, normalized: &str, work: &mut Work) -> (Scores, [f32; 16]) {
        let mut scores = Scores {
            affirmation: affirmation(&self.lexicon.affirmation, normalized),
            ..Scores::default()
        };
        let probs = self.apply_model(normalized, &mut scores);
        rules::score(&self.lexicon, normalized, &mut scores, work);
        (scores, probs)
    }

    /// Merges the adopted model heads into `scores` (by maximum); their probabilities, in
    /// head order, for `explain`.
    fn apply_model(&self, normalized: &str, scores: &mut Scores) -> [f32; 16] {
        let mut out = [0.0f32; 16];
        if let Some(m) = &self.model {
            m.score_into(normalized, &mut out);
            for (k, h) in m.heads.iter().take(16).enumerate() {
                // Below the floor a probability is noise: merging it would list a category on
                // every verdict and span.
                if out[k] >= MODEL_MIN {
                    scores.raise(h.category, out[k]);
                }
            }
        }
        out
    }

    /// Scores only the first and last `window` bytes of a long text, marking it truncated.
    pub fn classify_bounded(&self, text: &str, window: usize) -> Scores {
        self.classify_bounded_by(text, window, Author::User)
    }

    /// [`Classifier::classify_bounded`] by author ([`Classifier::classify_by`]).
    pub fn classify_bounded_by(&self, text: &str, window: usize, author: Author) -> Scores {
        if text.len() <= window.saturating_mul(2) {
            return self.classify_by(text, author);
        }
        let head = &text[..floor_boundary(text, window)];
        let tail = &text[ceil_boundary(text, text.len() - window)..];
        let mut scores = self.classify_by(head, author);
        let t = self.classify_by(tail, author);
        for c in Category::ALL {
            scores.raise(c, t.get(c));
        }
        scores.crisis_self = scores.crisis_self.max(t.crisis_self);
        scores.crisis_others = scores.crisis_others.max(t.crisis_others);
        scores.crisis_third_party = scores.crisis_third_party.max(t.crisis_third_party);
        scores.end_request = scores.end_request.max(t.end_request);
        scores.affirmation = 0.0;
        scores.truncated = true;
        scores
    }

    /// Scores one message and lists the rules and suppressors behind the scores.
    pub fn explain(&self, text: &str) -> Explanation {
        let normalized = normalize(text).into_owned();
        let mut work = Work::default();
        let (mut scores, probs) = self.score_normalized(&normalized, &mut work);
        let tiers = self.semantic.as_ref().map(|sem| {
            let rules = scores;
            let mut heads = Vec::with_capacity(HEAD_COUNT);
            SemanticWork::default().apply(sem, &normalized, &mut scores, Some(&mut heads));
            Tiers { rules, heads }
        });
        let mut hits: Vec<Hit> = work
            .evidence
            .iter()
            .map(|ev| {
                let (category, signal) = split_effect(ev.effect);
                Hit {
                    rule: format!(
                        "{}:{}",
                        ev.rule.prefix(),
                        self.lexicon.entries[ev.entry as usize].id
                    ),
                    category,
                    signal,
                    weight: ev.score,
                    span: (ev.start as usize, ev.end as usize),
                    suppressed: ev.factor < 1.0,
                }
            })
            .collect();
        for s in rules::applied_suppressors(&work) {
            let e = &self.lexicon.entries[s.entry as usize];
            hits.push(Hit {
                rule: format!("suppressor:{}", e.id),
                category: None,
                signal: None,
                weight: e.weight,
                span: (s.start as usize, s.end as usize),
                suppressed: false,
            });
        }
        if let Some(m) = &self.model {
            for (k, h) in m.heads.iter().take(16).enumerate() {
                if probs[k] >= MODEL_MIN {
                    hits.push(Hit {
                        rule: format!("model:{}", h.category.name()),
                        category: Some(h.category),
                        signal: None,
                        weight: probs[k],
                        span: (0, normalized.len()),
                        suppressed: false,
                    });
                }
            }
        }
        hits.sort_by(|a, b| a.span.cmp(&b.span).then_with(|| a.rule.cmp(&b.rule)));
        Explanation {
            normalized,
            hits,
            scores,
            tiers,
        }
    }
}

/// The semantic tier's buffers.
#[derive(Default)]
struct SemanticWork {
    scratch: SemanticScratch,
    hidden: Vec<f32>,
}

impl SemanticWork {
    /// Computes the vector and logits of `normalized` and merges them into `scores`
    /// ([`semantic::merge`]).
    fn apply(
        &mut self,
        sem: &Semantic,
        normalized: &str,
        scores: &mut Scores,
        explain: Option<&mut Vec<TierHead>>,
    ) {
        let Some(heads) = sem.heads() else { return };
        let mut v = [0.0f32; DIMS];
        // The encoder's vocabulary is English: elsewhere the rules decide alone.
        if !sem.vector(normalized, &mut self.scratch, &mut v).covered() {
            return;
        }
        let mut logits = [0.0f32; HEAD_COUNT];
        heads.logits(&v, &mut self.hidden, &mut logits);
        semantic::merge(heads, &logits, scores, explain);
        scores.semantic = true;
    }
}

/// Who wrote a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Author {
    User,
    Assistant,
}

/// Per-thread buffers of `classify`: after warm-up it allocates nothing.
#[derive(Default)]
struct Scratch {
    norm: NormBuf,
    work: Work,
    semantic: SemanticWork,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
}

/// Normaliser buffers grown beyond this (by an unbounded text) are released after the call.
const SCRATCH_MAX_BYTES: usize = 256 * 1024;

/// Smallest model probability merged into the scores (and listed by `explain`).
const MODEL_MIN: f32 = 0.2;

fn split_effect(effect: Effect) -> (Option<Category>, Option<&'static str>) {
    match effect {
        Effect::Category(c) => (Some(c), None),
        Effect::Signal(s) => (None, Some(s.name())),
    }
}

fn floor_boundary(text: &str, mut i: usize) -> usize {
    while !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn ceil_boundary(text: &str, mut i: usize) -> usize {
    while !text.is_char_boundary(i) {
        i += 1;
    }
    i
}

/// Longest normalised message, in bytes, that is still checked for an affirmation.
const AFFIRMATION_MAX_BYTES: usize = 96;

/// 1.0 for a message made only of affirmative words and fillers, 0.6 for a short message that
/// opens with one, 0.0 otherwise or when it holds a negator.
fn affirmation(spec: &AffirmationSpec, text: &str) -> f32 {
    if text.len() > AFFIRMATION_MAX_BYTES || text.is_empty() {
        return 0.0;
    }
    let mut toks: [&str; 16] = [""; 16];
    let mut n = 0;
    for t in text
        .split(|c: char| !(c.is_alphanumeric() || c == '\''))
        .filter(|t| !t.is_empty())
    {
        if n == toks.len() || n == spec.max_tokens {
            return 0.0;
        }
        toks[n] = t;
        n += 1;
    }
    let toks = &toks[..n];
    if toks.is_empty() || toks.iter().any(|t| spec.negators.iter().any(|w| w == t)) {
        return 0.0;
    }
    let mut i = 0;
    let mut words = 0;
    let mut first_is_word = false;
    while i < toks.len() {
        if let Some(len) = phrase_at(&spec.words, &toks[i..]) {
            if i == 0 {
                first_is_word = true;
            }
            words += 1;
            i += len;
        } else if let Some(len) = phrase_at(&spec.fillers, &toks[i..]) {
            i += len;
        } else {
            return if first_is_word { 0.6 } else { 0.0 };
        }
    }
    if words > 0 { 1.0 } else { 0.0 }
}

/// Length in tokens of the first phrase in `list` that `toks` starts with.
fn phrase_at(list: &[String], toks: &[&str]) -> Option<usize> {
    list.iter().find_map(|phrase| {
        let mut n = 0;
        for (k, w) in phrase.split(' ').enumerate() {
            if toks.get(k) != Some(&w) {
                return None;
            }
            n += 1;
        }
        Some(n)
    })
}
