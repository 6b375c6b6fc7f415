//! Domain vocabulary shared by `classify` and `policy`: categories, crisis kinds, scores.
//!
//! Plain data only. No I/O, no tonic types: `api` maps these to and from the wire.

use serde::{Deserialize, Serialize};

/// Number of harm categories (every `Category` variant).
pub const CATEGORY_COUNT: usize = 10;

/// A harm category, in the order of the proto enum (minus `UNSPECIFIED`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    ChildSexualExploitation,
    IndiscriminateWeapons,
    ViolentExtremism,
    ViolentCrime,
    CyberAttack,
    Abuse,
    Hate,
    Sexual,
    SelfHarm,
    HarmToOthers,
}

impl Category {
    /// Every category, indexed by `Category::index`.
    pub const ALL: [Category; CATEGORY_COUNT] = [
        Category::ChildSexualExploitation,
        Category::IndiscriminateWeapons,
        Category::ViolentExtremism,
        Category::ViolentCrime,
        Category::CyberAttack,
        Category::Abuse,
        Category::Hate,
        Category::Sexual,
        Category::SelfHarm,
        Category::HarmToOthers,
    ];

    /// Position in `Scores::categories`.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The stable snake_case name used in config files, logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Category::ChildSexualExploitation => "child_sexual_exploitation",
            Category::IndiscriminateWeapons => "indiscriminate_weapons",
            Category::ViolentExtremism => "violent_extremism",
            Category::ViolentCrime => "violent_crime",
            Category::CyberAttack => "cyber_attack",
            Category::Abuse => "abuse",
            Category::Hate => "hate",
            Category::Sexual => "sexual",
            Category::SelfHarm => "self_harm",
            Category::HarmToOthers => "harm_to_others",
        }
    }

    /// Parses a snake_case name.
    pub fn from_name(name: &str) -> Option<Category> {
        Category::ALL.into_iter().find(|c| c.name() == name)
    }
}

/// Why crisis support is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CrisisKind {
    /// First-person self-harm or suicidal intent, or seeking a lethal method.
    SelfHarm,
    /// Imminent harm to others or a stated intent of violent harm.
    HarmToOthers,
    /// Concern for someone else at risk: resources, but the user is not treated as in danger.
    ThirdParty,
}

impl CrisisKind {
    /// Every kind, in declaration order.
    pub const ALL: [CrisisKind; 3] = [
        CrisisKind::SelfHarm,
        CrisisKind::HarmToOthers,
        CrisisKind::ThirdParty,
    ];

    /// The stable snake_case name.
    pub fn name(self) -> &'static str {
        match self {
            CrisisKind::SelfHarm => "self_harm",
            CrisisKind::HarmToOthers => "harm_to_others",
            CrisisKind::ThirdParty => "third_party",
        }
    }
}

/// Per-message classification output, every score in `[0, 1]`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Scores {
    /// Harmful-request or harmful-content score per category, indexed by `Category::index`.
    pub categories: [f32; CATEGORY_COUNT],
    /// First-person risk to self (suicidal or self-harm intent, ideation, recent acts).
    pub crisis_self: f32,
    /// Stated intent or imminent risk of violent harm to other people.
    pub crisis_others: f32,
    /// The user is worried about someone else who may be at risk.
    pub crisis_third_party: f32,
    /// The user asks to end this conversation.
    pub end_request: f32,
    /// The message is a short affirmative ("yes", "do it", "confirm").
    pub affirmation: f32,
    /// Only the head and tail of an over-long text were classified.
    pub truncated: bool,
    /// The semantic tier read this text (it was covered by its vocabulary).
    pub semantic: bool,
    /// The external tier was asked to confirm an END on this message and disagreed: a turn
    /// that would END is redirected instead (it still counts).
    pub end_vetoed: bool,
}

impl Scores {
    /// The score of one category.
    pub fn get(&self, category: Category) -> f32 {
        self.categories[category.index()]
    }

    /// Raises one category's score to at least `score` (scores merge by maximum).
    pub fn raise(&mut self, category: Category, score: f32) {
        let slot = &mut self.categories[category.index()];
        *slot = slot.max(score.clamp(0.0, 1.0));
    }

    /// The highest-scoring category, if any score is above zero.
    pub fn top(&self) -> Option<(Category, f32)> {
        Category::ALL
            .into_iter()
            .map(|c| (c, self.get(c)))
            .filter(|&(_, s)| s > 0.0)
            .max_by(|a, b| a.1.total_cmp(&b.1))
    }
}
