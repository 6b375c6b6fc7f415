//! The weighted lexicon: YAML schema, term expansion, and the Aho-Corasick automaton over it.
//!
//! Owns parsing the embedded `lexicon.yaml` once, expanding `{a|b}` alternations, normalising
//! every term with the same `normalize` used on messages, and word-boundary checks on hits.
//! It must not score anything (that is `rules`), do I/O beyond `include_str!`, or use tokio.

use std::collections::HashMap;
use std::ops::ControlFlow;

use aho_corasick::automaton::{Automaton, StateID};
use aho_corasick::dfa::DFA;
use aho_corasick::{Anchored, MatchKind, StartKind};
use serde::Deserialize;

use super::normalize::normalize;
use crate::domain::Category;

/// The lexicon compiled into the binary.
pub const BUILTIN_YAML: &str = include_str!("lexicon.yaml");

/// Most expansions one `{a|b}` term may produce; guards against a typo exploding the automaton.
const MAX_EXPANSIONS: usize = 1024;

/// Longest term, in bytes after normalisation; a phrase, not a document.
const MAX_TERM_BYTES: usize = 1024;

/// Why a lexicon could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LexiconError {
    /// The YAML did not parse or did not match the schema.
    #[error("lexicon yaml: {0}")]
    Yaml(#[from] serde_yaml::Error),
    /// A group is inconsistent (missing category, unknown name, bad weight, ...).
    #[error("lexicon group `{group}`: {reason}")]
    Invalid {
        /// The group id.
        group: String,
        /// What is wrong.
        reason: String,
    },
    /// The automaton could not be built.
    #[error("lexicon automaton: {0}")]
    Build(#[from] aho_corasick::BuildError),
}

/// A score output that is not a harm category.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Signal {
    /// First-person risk to self.
    CrisisSelf,
    /// Stated intent of violent harm to others.
    CrisisOthers,
    /// Concern for someone else at risk.
    CrisisThirdParty,
    /// The user asks to end the conversation.
    EndRequest,
}

impl Signal {
    /// The stable snake_case name used in the YAML and in `Hit::signal`.
    pub fn name(self) -> &'static str {
        match self {
            Signal::CrisisSelf => "crisis_self",
            Signal::CrisisOthers => "crisis_others",
            Signal::CrisisThirdParty => "crisis_third_party",
            Signal::EndRequest => "end_request",
        }
    }

    fn from_name(name: &str) -> Option<Signal> {
        [
            Signal::CrisisSelf,
            Signal::CrisisOthers,
            Signal::CrisisThirdParty,
            Signal::EndRequest,
        ]
        .into_iter()
        .find(|s| s.name() == name)
    }
}

/// What a piece of evidence raises: a category or a signal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Effect {
    /// A harm category.
    Category(Category),
    /// A non-category signal.
    Signal(Signal),
}

impl Effect {
    fn parse(name: &str) -> Option<Effect> {
        Category::from_name(name)
            .map(Effect::Category)
            .or_else(|| Signal::from_name(name).map(Effect::Signal))
    }
}

/// What a lexicon entry contributes to the rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Unambiguous on its own: scores its effect directly.
    Direct,
    /// A harmful object: scores low alone, high next to a request, verb or evasion.
    Object,
    /// A request frame ("how do i", "step by step").
    Request,
    /// A procedural verb ("synthesize", "build"); may be limited to some categories.
    Verb,
    /// Evasion or non-consent ("without getting caught"): a strong request signal.
    Evasion,
    /// A violent act done to someone ("kill", "poison"); needs a target or a request.
    Act,
    /// A person an act is aimed at ("my neighbor", "him", "you").
    Target,
    /// First-person desire or plan ("i want to", "im going to").
    FirstPerson,
    /// Death or self-harm wording that needs a first- or third-person subject ("die").
    Death,
    /// Someone else as subject ("my friend", "she").
    ThirdParty,
    /// Reported speech ("said", "told me"), for quoted crisis wording.
    Report,
    /// Second person or the assistant ("you", "this bot").
    You,
    /// An insult; abuse when aimed at the assistant.
    Insult,
    /// A group of people (identity term).
    Group,
    /// A dehumanising or hostile predicate; hate when next to a group.
    HatePred,
    /// A minor; turns sexual evidence into child sexual exploitation.
    Minor,
    /// An end verb ("end", "stop", "close").
    EndVerb,
    /// What an end verb ends ("this chat", "the conversation").
    ConvObj,
    /// Present-time wording ("again", "tonight") that cancels past-tense damping.
    Present,
    /// Damps or cancels nearby evidence.
    Suppressor,
}

/// Which verbs an object needs before it scores at all.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strict {
    /// Scores alone (as a mention) and more with any intent.
    #[default]
    No,
    /// Scores only next to a verb, generic or category-specific.
    Any,
    /// Scores only next to a verb limited to the object's category.
    Category,
}

/// Where a suppressor must sit relative to the evidence it damps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Before or after, within the window.
    #[default]
    Both,
    /// Before the evidence only.
    Before,
    /// After the evidence only.
    After,
}

/// One lexicon entry (a YAML group); many terms may share it.
#[derive(Clone, Debug)]
pub struct Entry {
    /// Stable group id, e.g. `weapons.nerve_agent`.
    pub id: String,
    /// What the entry contributes.
    pub role: Role,
    /// The category or signal it raises (direct, object, act, insult, ...).
    pub effect: Option<Effect>,
    /// Weight in `[0, 1]`; for suppressors, the factor applied to damped evidence.
    pub weight: f32,
    /// Suppressors: effects damped (empty: all). Verbs: categories boosted (empty: all).
    pub applies: Vec<Effect>,
    /// Suppressors: token window (0: must overlap the evidence).
    pub window: u32,
    /// Suppressors: where the suppressor must sit.
    pub direction: Direction,
    /// Suppressors: ignored when present-time wording is near the evidence.
    pub unless_present: bool,
    /// Suppressors: ignored when a verb for the evidence's category is near it.
    pub unless_verb: bool,
    /// Suppressors: apply only to acts that found no person target ("kill the process").
    pub only_untargeted: bool,
    /// Objects: which verbs the object needs before it scores.
    pub strict: Strict,
    /// Targets: a specific person (harm to others) rather than anyone. Death wording: the
    /// writer's own when no subject is near.
    pub specific: bool,
    /// Targets: the assistant itself (threats become abuse).
    pub assistant: bool,
}

impl Entry {
    /// Whether a hit of this entry can produce evidence by itself: the roles the rules
    /// evaluate (`rules::Ctx::evaluate`), with an effect. The other roles are context: they
    /// change evidence found near them, and a text without a scoring hit has no evidence.
    pub fn scores(&self) -> bool {
        self.effect.is_some()
            && matches!(
                self.role,
                Role::Direct
                    | Role::Object
                    | Role::Act
                    | Role::Insult
                    | Role::HatePred
                    | Role::Death
                    | Role::EndVerb
            )
    }
}

/// One automaton pattern: a normalised term and the entries it belongs to.
#[derive(Clone, Debug)]
pub struct Pattern {
    /// The normalised term.
    pub term: String,
    /// The char before a hit must not be alphanumeric.
    pub left_boundary: bool,
    /// The char after a hit must not be alphanumeric.
    pub right_boundary: bool,
    /// Indices into `Lexicon::entries`.
    pub entries: Vec<u32>,
    /// Some entry of the pattern can produce evidence ([`Entry::scores`]).
    pub scores: bool,
}

/// Tunable windows and factors, from the YAML `params` block.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Params {
    /// Fraction of an object's weight it scores without any request nearby.
    pub mention_factor: f32,
    /// Tokens either side of an object in which a request counts.
    pub request_window: u32,
    /// Tokens before an object in which a verb counts.
    pub verb_before: u32,
    /// Tokens after an object in which a verb counts.
    pub verb_after: u32,
    /// Tokens after an act in which its target must start.
    pub target_window: u32,
    /// Tokens before a death/act/object in which a first-person marker counts.
    pub first_person_window: u32,
    /// Tokens before crisis wording in which a third-party subject counts.
    pub third_party_window: u32,
    /// Tokens either side of an insult in which "you" counts.
    pub you_window: u32,
    /// Tokens either side of a hate predicate in which a group counts.
    pub group_window: u32,
    /// Tokens either side of sexual evidence in which a minor counts.
    pub minor_window: u32,
    /// Tokens after an end verb in which the conversation object must start.
    pub conv_window: u32,
    /// Tokens a sentence break adds to distances.
    pub sentence_gap: u32,
    /// Scores from an act with no target are multiplied by this.
    pub untargeted_act: f32,
    /// Hits kept per message (pathological input guard).
    pub max_hits: usize,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            mention_factor: 0.45,
            request_window: 12,
            verb_before: 5,
            verb_after: 3,
            target_window: 4,
            first_person_window: 6,
            third_party_window: 10,
            you_window: 3,
            group_window: 6,
            minor_window: 10,
            conv_window: 3,
            sentence_gap: 3,
            untargeted_act: 0.55,
            max_hits: 2048,
        }
    }
}

/// Short-message affirmation vocabulary.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AffirmationSpec {
    /// Longest message, in tokens, that can be an affirmation.
    pub max_tokens: usize,
    /// Affirmative words and phrases ("yes", "do it").
    pub words: Vec<String>,
    /// Words allowed around them ("please", "end", "it").
    pub fillers: Vec<String>,
    /// Words that make the message not an affirmation ("no", "dont").
    pub negators: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Document {
    version: u32,
    #[serde(default)]
    params: Params,
    affirmation: AffirmationSpec,
    groups: Vec<Group>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Group {
    id: String,
    role: Role,
    #[serde(default)]
    category: Option<String>,
    #[serde(default)]
    signal: Option<String>,
    #[serde(default = "one")]
    weight: f32,
    #[serde(default)]
    applies: Vec<String>,
    #[serde(default)]
    window: u32,
    #[serde(default)]
    direction: Direction,
    #[serde(default)]
    unless_present: bool,
    #[serde(default)]
    unless_verb: bool,
    #[serde(default)]
    only_untargeted: bool,
    #[serde(default)]
    inflect: bool,
    #[serde(default)]
    strict: Strict,
    #[serde(default)]
    specific: bool,
    #[serde(default)]
    assistant: bool,
    terms: Vec<String>,
}

fn one() -> f32 {
    1.0
}

/// The compiled lexicon.
pub struct Lexicon {
    /// Entries, one per YAML group.
    pub entries: Vec<Entry>,
    /// Patterns, indexed by automaton pattern id.
    pub patterns: Vec<Pattern>,
    /// DFAs over the ASCII and the non-ASCII patterns.
    automata: [Matcher; 2],
    /// Windows and factors.
    pub params: Params,
    /// Affirmation vocabulary, normalised.
    pub affirmation: AffirmationSpec,
    /// Largest suppressor window, bounding the suppressor search.
    pub max_suppressor_window: u32,
}

impl Lexicon {
    /// Parses and compiles a lexicon document.
    pub fn from_yaml(yaml: &str) -> Result<Lexicon, LexiconError> {
        let doc: Document = serde_yaml::from_str(yaml)?;
        if doc.version != 1 {
            return Err(invalid("<document>", "only version 1 is supported"));
        }
        let mut entries = Vec::with_capacity(doc.groups.len());
        let mut patterns: Vec<Pattern> = Vec::new();
        let mut by_term: HashMap<(String, bool, bool), usize> = HashMap::new();
        for group in &doc.groups {
            let entry = build_entry(group)?;
            let entry_idx = u32::try_from(entries.len()).expect("fewer than 2^32 groups");
            entries.push(entry);
            for raw in &group.terms {
                let mut terms = expand(raw).map_err(|reason| invalid(&group.id, &reason))?;
                if group.inflect {
                    terms = terms.iter().flat_map(|t| inflect(t)).collect();
                }
                for expanded in terms {
                    let (term, left, right) = parse_term(&expanded);
                    if term.trim().is_empty() {
                        return Err(invalid(&group.id, "empty term"));
                    }
                    if term.len() > MAX_TERM_BYTES {
                        return Err(invalid(
                            &group.id,
                            &format!("a term longer than {MAX_TERM_BYTES} bytes"),
                        ));
                    }
                    let key = (term.clone(), left, right);
                    let idx = *by_term.entry(key).or_insert_with(|| {
                        patterns.push(Pattern {
                            term,
                            left_boundary: left,
                            right_boundary: right,
                            entries: Vec::new(),
                            scores: false,
                        });
                        patterns.len() - 1
                    });
                    let slot = &mut patterns[idx].entries;
                    if !slot.contains(&entry_idx) {
                        slot.push(entry_idx);
                    }
                }
            }
        }
        for p in &mut patterns {
            p.scores = p.entries.iter().any(|&e| entries[e as usize].scores());
        }
        // Two automata: non-ASCII patterns would multiply the byte classes (and so the size)
        // of the ASCII DFA, and most messages never need them.
        let automata = [
            Matcher::build(&patterns, |t| t.is_ascii())?,
            Matcher::build(&patterns, |t| !t.is_ascii())?,
        ];
        let mut affirmation = doc.affirmation;
        for list in [
            &mut affirmation.words,
            &mut affirmation.fillers,
            &mut affirmation.negators,
        ] {
            for w in list.iter_mut() {
                *w = normalize(w).into_owned();
            }
            // Longest first so multi-word phrases win over their first word.
            list.sort_by_key(|w| std::cmp::Reverse(w.len()));
        }
        let max_suppressor_window = entries
            .iter()
            .filter(|e| e.role == Role::Suppressor)
            .map(|e| e.window)
            .max()
            .unwrap_or(0);
        Ok(Lexicon {
            max_suppressor_window,
            entries,
            patterns,
            automata,
            params: doc.params,
            affirmation,
        })
    }

    /// Calls `f(pattern, start, end)` for every (overlapping) pattern occurrence in `text` that
    /// sits on the word boundaries its pattern asks for, in the order of
    /// `AhoCorasick::find_overlapping_iter` (by end, then by match index), ASCII automaton
    /// first; stops when `f` returns false.
    pub fn for_each_hit(&self, text: &str, mut f: impl FnMut(usize, usize, usize) -> bool) {
        let sets = if text.is_ascii() { 1 } else { 2 };
        for m in &self.automata[..sets] {
            if !m.for_each_hit(text, &mut f) {
                return;
            }
        }
    }

    /// Number of distinct automaton patterns (normalised, expanded terms).
    #[cfg(test)]
    pub fn pattern_count(&self) -> usize {
        self.patterns.len()
    }
}

/// Whether the char ending at byte `i` of `text` is alphanumeric (ASCII without decoding).
#[inline]
fn alnum_before(text: &str, i: usize) -> bool {
    match text.as_bytes()[..i].last() {
        None => false,
        Some(&b) if b.is_ascii() => b.is_ascii_alphanumeric(),
        Some(_) => text[..i]
            .chars()
            .next_back()
            .is_some_and(char::is_alphanumeric),
    }
}

/// Whether the char starting at byte `i` of `text` is alphanumeric (ASCII without decoding).
#[inline]
fn alnum_at(text: &str, i: usize) -> bool {
    match text.as_bytes().get(i) {
        None => false,
        Some(&b) if b.is_ascii() => b.is_ascii_alphanumeric(),
        Some(_) => text[i..].chars().next().is_some_and(char::is_alphanumeric),
    }
}

/// One DFA over a subset of the patterns, with what a hit needs of each pattern.
///
/// The DFA's own match lists (one heap allocation per match state, then a lookup per pattern)
/// cost three dependent cache misses per match state, and most match states are sub-word hits
/// such as "he" inside "there" that the boundary check then drops. So the lists are copied into
/// one flat table at build time: a [`Span`] per match state and the [`Hit`]s of all states side
/// by side. Before either is touched, a bitset answers "does every pattern here need a right
/// boundary?": 3.5 KiB for the ASCII automaton's 27,877 match states (99.7 % of them set), small
/// enough to stay in L1 where the 218 KiB of spans do not.
struct Matcher {
    dfa: DFA,
    /// By match state index, as for `spans`: set when every pattern needs a right boundary.
    all_right: Vec<u64>,
    /// By match state: `(sid - first_match) >> shift`.
    spans: Vec<Span>,
    /// Every match state's hits, in the DFA's match order.
    hits: Vec<Hit>,
    /// The smallest match state id.
    first_match: usize,
    /// State ids are multiples of `1 << shift`.
    shift: u32,
}

/// Where a match state's hits are in `Matcher::hits`.
#[derive(Clone, Copy, Default)]
struct Span {
    start: u32,
    len: u32,
}

/// A pattern as the search loop needs it, in 8 bytes.
#[derive(Clone, Copy)]
struct Hit {
    /// Index into `Lexicon::patterns`.
    pattern: u32,
    /// Length of the term in bytes.
    len: u16,
    left_boundary: bool,
    right_boundary: bool,
}

impl Matcher {
    fn build(patterns: &[Pattern], keep: impl Fn(&str) -> bool) -> Result<Matcher, LexiconError> {
        let kept: Vec<usize> = (0..patterns.len())
            .filter(|&i| keep(&patterns[i].term))
            .collect();
        // The DFA kind directly (what `AhoCorasick` with `AhoCorasickKind::DFA` wraps), so the
        // search loop below is ours: one pass, no per-match re-entry into an iterator.
        let dfa = DFA::builder()
            .match_kind(MatchKind::Standard)
            .start_kind(StartKind::Unanchored)
            // A prefilter only pays with few patterns; without one, start states are not
            // special and the loop below branches on matches alone.
            .prefilter(false)
            .build(kept.iter().map(|&i| patterns[i].term.as_str()))?;
        let hit = |pid: usize| {
            let p = &patterns[kept[pid]];
            Hit {
                pattern: u32::try_from(kept[pid]).expect("fewer than 2^32 patterns"),
                len: u16::try_from(p.term.len()).expect("terms are at most MAX_TERM_BYTES"),
                left_boundary: p.left_boundary,
                right_boundary: p.right_boundary,
            }
        };
        let states = match_states(&dfa, kept.iter().map(|&i| patterns[i].term.as_str()));
        let (Some(&first), Some(&last)) = (states.first(), states.last()) else {
            return Ok(Matcher {
                dfa,
                all_right: Vec::new(),
                spans: Vec::new(),
                hits: Vec::new(),
                first_match: 0,
                shift: 0,
            });
        };
        // Every state id is a multiple of the DFA's (power-of-two) stride; any common
        // power-of-two factor indexes the table correctly, the largest compactly.
        let shift = states
            .iter()
            .filter(|&&sid| sid != first)
            .map(|&sid| (sid - first).trailing_zeros())
            .min()
            .unwrap_or(0);
        let mut spans = vec![Span::default(); ((last - first) >> shift) + 1];
        let mut all_right = vec![0u64; spans.len().div_ceil(64)];
        let mut hits = Vec::new();
        for &sid in &states {
            let id = StateID::new(sid).expect("a state id of this DFA");
            let start = u32::try_from(hits.len()).expect("fewer than 2^32 hits");
            let mut every_right = true;
            for i in 0..dfa.match_len(id) {
                let h = hit(dfa.match_pattern(id, i).as_usize());
                every_right &= h.right_boundary;
                hits.push(h);
            }
            let index = (sid - first) >> shift;
            spans[index] = Span {
                start,
                len: u32::try_from(hits.len()).expect("fewer than 2^32 hits") - start,
            };
            if every_right {
                all_right[index / 64] |= 1 << (index % 64);
            }
        }
        Ok(Matcher {
            dfa,
            all_right,
            spans,
            hits,
            first_match: first,
            shift,
        })
    }

    /// Like [`Lexicon::for_each_hit`] for this automaton; returns false if `f` stopped it.
    ///
    /// Texts of [`LANES_FROM_BYTES`] or more are walked in segments of [`LANES`] pieces
    /// ([`Matcher::walk_lanes`]); the rest of the text in one walk.
    #[inline]
    fn for_each_hit(&self, text: &str, f: &mut impl FnMut(usize, usize, usize) -> bool) -> bool {
        let Ok(start) = self.dfa.start_state(Anchored::No) else {
            return true;
        };
        // Only an empty pattern makes the start state a match; terms are never empty.
        if self.dfa.is_match(start) && !self.report(text, start, 0, f) {
            return false;
        }
        let (mut state, mut at) = (start, 0);
        // The lanes keep match ends as u32; callers bound texts far below that anyway.
        let lanes = u32::try_from(text.len()).is_ok();
        while lanes && text.len() - at >= LANES_FROM_BYTES {
            let steps = ((text.len() - at) / LANES).min(SEGMENT_STEPS);
            match self.walk_lanes(text, start, state, at, steps, f) {
                ControlFlow::Continue(next) => state = next,
                ControlFlow::Break(go_on) => return go_on,
            }
            at += LANES * steps;
        }
        match self.walk(text, state, at, text.len(), f) {
            ControlFlow::Continue(_) => true,
            ControlFlow::Break(go_on) => go_on,
        }
    }

    /// Walks `text[from..to]` from `state` (the walk's state at `from`), reporting every
    /// match that ends after `from`. Gives the state at `to`, or breaks with the value for
    /// [`Matcher::for_each_hit`]: false if `f` stopped, true at the dead state (which an
    /// unanchored standard DFA never enters).
    #[inline]
    fn walk(
        &self,
        text: &str,
        mut state: StateID,
        from: usize,
        to: usize,
        f: &mut impl FnMut(usize, usize, usize) -> bool,
    ) -> ControlFlow<bool, StateID> {
        let dfa = &self.dfa;
        for (at, &b) in text.as_bytes()[from..to].iter().enumerate() {
            state = dfa.next_state(Anchored::No, state, b);
            if dfa.is_special(state) {
                self.special(text, state, from + at + 1, f)?;
            }
        }
        ControlFlow::Continue(state)
    }

    /// A walk at special state `state` after `text[..end]`: reports its hits, or breaks as
    /// [`Matcher::walk`] does.
    #[inline(always)]
    fn special(
        &self,
        text: &str,
        state: StateID,
        end: usize,
        f: &mut impl FnMut(usize, usize, usize) -> bool,
    ) -> ControlFlow<bool> {
        if self.dfa.is_dead(state) {
            return ControlFlow::Break(true);
        }
        if self.dfa.is_match(state)
            && !self.sub_word(text, state, end)
            && !self.report(text, state, end, f)
        {
            return ControlFlow::Break(false);
        }
        ControlFlow::Continue(())
    }

    /// [`Matcher::walk`] over `text[from..from + LANES * steps]`, with the same hits in the
    /// same order, from [`LANES`] walks over consecutive pieces of `steps` bytes, advanced
    /// together one byte each per step.
    ///
    /// One walk is a chain of dependent loads (each state's row gives the next state), so
    /// after an idle gap, when the rows have left the caches, it waits for one miss at a time.
    /// Independent walks keep several misses in flight.
    ///
    /// Each lane but the first starts its piece at the start state, which is wrong while a
    /// pattern that began in the previous piece is still open. So lane k's true end state is
    /// carried on into piece k + 1, reporting as it goes, beside piece k + 1's own walk
    /// re-read from its first byte, until the two states are equal. From there the walks
    /// agree, and piece k + 1's own matches count. They meet within the longest pattern's
    /// length (a state is the trie node of the longest suffix read that begins a pattern),
    /// usually within a word. Matches are buffered per lane (a few per piece survive
    /// [`Matcher::sub_word`]); if a buffer fills, the segment is walked again in one lane.
    fn walk_lanes(
        &self,
        text: &str,
        start: StateID,
        state: StateID,
        from: usize,
        steps: usize,
        f: &mut impl FnMut(usize, usize, usize) -> bool,
    ) -> ControlFlow<bool, StateID> {
        let dfa = &self.dfa;
        let bytes = text.as_bytes();
        let first: [usize; LANES] = std::array::from_fn(|k| from + k * steps);
        let pieces: [&[u8]; LANES] = std::array::from_fn(|k| &bytes[first[k]..first[k] + steps]);
        let mut sid = [start; LANES];
        sid[0] = state;
        let mut found = [Found::default(); LANES];
        // One index over all the lanes: the loop body is the lanes' steps side by side.
        #[expect(clippy::needless_range_loop, reason = "i indexes every lane's piece")]
        for i in 0..steps {
            for k in 0..LANES {
                sid[k] = dfa.next_state(Anchored::No, sid[k], pieces[k][i]);
                if dfa.is_special(sid[k]) {
                    let end = first[k] + i + 1;
                    if dfa.is_dead(sid[k]) {
                        found[k].overflow = true;
                    } else if dfa.is_match(sid[k]) && !self.sub_word(text, sid[k], end) {
                        found[k].push(sid[k], end);
                    }
                }
            }
        }
        if found.iter().any(|lane| lane.overflow) {
            return self.walk(text, state, from, from + LANES * steps, f);
        }
        self.touch(&found);
        // Every match ending at or before `reported` has been reported.
        let mut reported = from;
        for k in 0..LANES {
            for &(at, end) in &found[k].events[..found[k].len] {
                if end as usize > reported && !self.report(text, at, end as usize, f) {
                    return ControlFlow::Break(false);
                }
            }
            if k == LANES - 1 {
                break;
            }
            let mut truth = sid[k];
            let mut own = start;
            let mut p = first[k + 1];
            let piece_end = p + steps;
            while truth != own && p < piece_end {
                let b = bytes[p];
                p += 1;
                truth = dfa.next_state(Anchored::No, truth, b);
                own = dfa.next_state(Anchored::No, own, b);
                if dfa.is_special(truth) {
                    self.special(text, truth, p, f)?;
                }
            }
            if truth != own {
                // Still apart at the end of the next piece (a piece shorter than a pattern):
                // none of that piece's own matches count, and its end state is the carried one.
                sid[k + 1] = truth;
            }
            reported = p;
        }
        ControlFlow::Continue(sid[LANES - 1])
    }

    /// Loads each buffered match's span and first hit, which [`Matcher::report`] then reads
    /// one match after another: here the loads of all the matches are in flight together.
    #[inline]
    fn touch(&self, found: &[Found; LANES]) {
        let mut sum = 0u32;
        for lane in found {
            for &(sid, _) in &lane.events[..lane.len] {
                let span = self.spans[self.index(sid)];
                if let Some(hit) = self.hits.get(span.start as usize) {
                    sum = sum.wrapping_add(hit.pattern);
                }
            }
        }
        std::hint::black_box(sum);
    }

    /// The common case of [`Matcher::report`], inline: a match state inside a word (an ASCII
    /// letter or digit follows) whose every pattern needs a right boundary reports nothing.
    #[inline(always)]
    fn sub_word(&self, text: &str, sid: StateID, end: usize) -> bool {
        text.as_bytes()
            .get(end)
            .is_some_and(u8::is_ascii_alphanumeric)
            && self.all_right(self.index(sid))
    }

    /// Match state `sid`'s index in `spans` and `all_right`.
    #[inline(always)]
    fn index(&self, sid: StateID) -> usize {
        (sid.as_usize() - self.first_match) >> self.shift
    }

    /// Whether every pattern of the match state at `index` needs a right word boundary.
    #[inline(always)]
    fn all_right(&self, index: usize) -> bool {
        self.all_right[index / 64] & (1 << (index % 64)) != 0
    }

    #[inline(never)]
    fn report(
        &self,
        text: &str,
        sid: StateID,
        end: usize,
        f: &mut impl FnMut(usize, usize, usize) -> bool,
    ) -> bool {
        let index = self.index(sid);
        // Every pattern ending here shares the right neighbour. `sub_word` has already
        // dropped the state for an ASCII neighbour; this also covers a non-ASCII letter.
        let right_alnum = alnum_at(text, end);
        if right_alnum && self.all_right(index) {
            return true;
        }
        let span = self.spans[index];
        let start = span.start as usize;
        for m in &self.hits[start..start + span.len as usize] {
            if m.right_boundary && right_alnum {
                continue;
            }
            let start = end - m.len as usize;
            if m.left_boundary && alnum_before(text, start) {
                continue;
            }
            if !f(m.pattern as usize, start, end) {
                return false;
            }
        }
        true
    }
}

/// Walks [`Matcher::walk_lanes`] advances together.
const LANES: usize = 4;

/// Texts shorter than this are walked in one lane.
const LANES_FROM_BYTES: usize = 128;

/// The longest piece of a segment: a 1 KiB segment has room for a match every 4 bytes.
const SEGMENT_STEPS: usize = 256;

/// Matches one lane buffers before its segment is walked again in one lane. Real text has at
/// most about one every 6 bytes that survives [`Matcher::sub_word`] (short words that are
/// patterns: "i", "you", "kill").
const LANE_EVENTS: usize = 64;

/// One lane's buffered matches, in order; `overflow` when they did not fit, or the lane met
/// the dead state.
#[derive(Clone, Copy)]
struct Found {
    events: [(StateID, u32); LANE_EVENTS],
    len: usize,
    overflow: bool,
}

impl Default for Found {
    fn default() -> Self {
        Found {
            events: [(StateID::ZERO, 0); LANE_EVENTS],
            len: 0,
            overflow: false,
        }
    }
}

impl Found {
    #[inline(always)]
    fn push(&mut self, sid: StateID, end: usize) {
        if self.len == LANE_EVENTS {
            self.overflow = true;
        } else {
            // `for_each_hit` walks lanes only for texts shorter than 4 GiB.
            self.events[self.len] = (sid, end as u32);
            self.len += 1;
        }
    }
}

/// The ids of `dfa`'s reachable match states, ascending: a walk from the start state over
/// every byte that occurs in a pattern, plus one that occurs in none (all such bytes lead to
/// the same states).
fn match_states<'a>(dfa: &DFA, terms: impl Iterator<Item = &'a str>) -> Vec<usize> {
    let mut used = [false; 256];
    for t in terms {
        for &b in t.as_bytes() {
            used[b as usize] = true;
        }
    }
    let mut bytes: Vec<u8> = (0..=255u8).filter(|&b| used[b as usize]).collect();
    if let Some(other) = (0..=255u8).find(|&b| !used[b as usize]) {
        bytes.push(other);
    }
    let Ok(start) = dfa.start_state(Anchored::No) else {
        return Vec::new();
    };
    let mut seen: Vec<u64> = Vec::new();
    let mut visit = |sid: StateID| {
        let (word, bit) = (sid.as_usize() / 64, sid.as_usize() % 64);
        if word >= seen.len() {
            seen.resize(word + 1, 0);
        }
        let new = seen[word] & (1 << bit) == 0;
        seen[word] |= 1 << bit;
        new
    };
    visit(start);
    let mut queue = vec![start];
    let mut matches = Vec::new();
    while let Some(sid) = queue.pop() {
        if dfa.is_match(sid) {
            matches.push(sid.as_usize());
        }
        for &b in &bytes {
            let next = dfa.next_state(Anchored::No, sid, b);
            if !dfa.is_dead(next) && visit(next) {
                queue.push(next);
            }
        }
    }
    matches.sort_unstable();
    matches
}

fn invalid(group: &str, reason: &str) -> LexiconError {
    LexiconError::Invalid {
        group: group.to_owned(),
        reason: reason.to_owned(),
    }
}

fn build_entry(group: &Group) -> Result<Entry, LexiconError> {
    let effect = match (&group.category, &group.signal) {
        (Some(_), Some(_)) => return Err(invalid(&group.id, "both category and signal")),
        (Some(name), None) | (None, Some(name)) => {
            Some(Effect::parse(name).ok_or_else(|| {
                invalid(&group.id, &format!("unknown category or signal `{name}`"))
            })?)
        }
        (None, None) => None,
    };
    let needs_effect = matches!(
        group.role,
        Role::Direct | Role::Object | Role::Act | Role::Insult | Role::HatePred | Role::Death
    );
    if needs_effect && effect.is_none() {
        return Err(invalid(&group.id, "this role needs a category or signal"));
    }
    if !(0.0..=1.0).contains(&group.weight) {
        return Err(invalid(&group.id, "weight must be within [0, 1]"));
    }
    let applies = group
        .applies
        .iter()
        .map(|n| Effect::parse(n).ok_or_else(|| invalid(&group.id, &format!("unknown `{n}`"))))
        .collect::<Result<Vec<_>, _>>()?;
    if group.terms.is_empty() {
        return Err(invalid(&group.id, "no terms"));
    }
    Ok(Entry {
        id: group.id.clone(),
        role: group.role,
        effect,
        weight: group.weight,
        applies,
        window: group.window,
        direction: group.direction,
        unless_present: group.unless_present,
        unless_verb: group.unless_verb,
        only_untargeted: group.only_untargeted,
        strict: group.strict,
        specific: group.specific,
        assistant: group.assistant,
    })
}

/// Expands `{a|b|}` alternations (nested groups are not supported).
fn expand(raw: &str) -> Result<Vec<String>, String> {
    let mut out = vec![String::new()];
    let mut rest = raw;
    while let Some(open) = rest.find('{') {
        let close = rest[open..]
            .find('}')
            .map(|c| open + c)
            .ok_or_else(|| format!("unclosed `{{` in `{raw}`"))?;
        let literal = &rest[..open];
        let options: Vec<&str> = rest[open + 1..close].split('|').collect();
        let mut next = Vec::with_capacity(out.len() * options.len());
        for prefix in &out {
            for opt in &options {
                next.push(format!("{prefix}{literal}{opt}"));
            }
        }
        if next.len() > MAX_EXPANSIONS {
            return Err(format!(
                "`{raw}` expands to more than {MAX_EXPANSIONS} terms"
            ));
        }
        out = next;
        rest = &rest[close + 1..];
    }
    for s in &mut out {
        s.push_str(rest);
    }
    Ok(out)
}

/// The term plus English inflections of its first word ("hack into" -> "hacks into",
/// "hacking into", "hacked into"); over-generation is harmless, the automaton dedupes.
fn inflect(term: &str) -> Vec<String> {
    let (word, rest) = match term.find(' ') {
        Some(i) => term.split_at(i),
        None => (term, ""),
    };
    let bare = word.trim_start_matches('*');
    if bare.len() < 2 || !bare.bytes().all(|b| b.is_ascii_lowercase()) {
        return vec![term.to_owned()];
    }
    let prefix = &word[..word.len() - bare.len()];
    let b = bare.as_bytes();
    let last = b[b.len() - 1];
    let vowel = |c: u8| matches!(c, b'a' | b'e' | b'i' | b'o' | b'u');
    let sibilant = ["s", "x", "z", "ch", "sh", "o"]
        .iter()
        .any(|e| bare.ends_with(e));
    let mut forms = vec![bare.to_owned()];
    if last == b'e' {
        let stem = &bare[..bare.len() - 1];
        forms.extend([format!("{bare}s"), format!("{stem}ing"), format!("{bare}d")]);
    } else if last == b'y' && !vowel(b[b.len() - 2]) {
        let stem = &bare[..bare.len() - 1];
        forms.extend([
            format!("{stem}ies"),
            format!("{stem}ied"),
            format!("{bare}ing"),
        ]);
    } else {
        let third = if sibilant { "es" } else { "s" };
        forms.extend([
            format!("{bare}{third}"),
            format!("{bare}ing"),
            format!("{bare}ed"),
        ]);
        let cvc = b.len() >= 3
            && !vowel(last)
            && !matches!(last, b'w' | b'x' | b'y')
            && vowel(b[b.len() - 2])
            && !vowel(b[b.len() - 3]);
        if cvc {
            let c = last as char;
            forms.extend([format!("{bare}{c}ing"), format!("{bare}{c}ed")]);
        }
    }
    forms
        .into_iter()
        .map(|f| format!("{prefix}{f}{rest}"))
        .collect()
}

/// Strips `*` boundary markers and normalises; CJK terms never need boundaries.
fn parse_term(expanded: &str) -> (String, bool, bool) {
    let t = expanded.trim();
    let (t, left_free) = match t.strip_prefix('*') {
        Some(s) => (s, true),
        None => (t, false),
    };
    let (t, right_free) = match t.strip_suffix('*') {
        Some(s) => (s, true),
        None => (t, false),
    };
    let term = normalize(t).into_owned();
    let cjk = term.chars().any(is_cjk);
    (term, !left_free && !cjk, !right_free && !cjk)
}

/// Han, kana and hangul: scripts written without spaces between words.
pub fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x3040..=0x30ff | 0x3400..=0x4dbf | 0x4e00..=0x9fff | 0xf900..=0xfaff | 0xac00..=0xd7af)
}

#[cfg(test)]
mod lane_tests {
    use std::sync::OnceLock;

    use proptest::prelude::*;

    use super::*;

    fn lexicon() -> &'static Lexicon {
        static LEX: OnceLock<Lexicon> = OnceLock::new();
        LEX.get_or_init(|| Lexicon::from_yaml(BUILTIN_YAML).expect("the built-in lexicon"))
    }

    /// Every hit of `m` in `text`, from the lanes or from one walk, until `limit` hits.
    fn hits(m: &Matcher, text: &str, lanes: bool, limit: usize) -> Vec<(usize, usize, usize)> {
        let mut out = Vec::new();
        let mut f = |pattern, start, end| {
            out.push((pattern, start, end));
            out.len() < limit
        };
        let start = m
            .dfa
            .start_state(Anchored::No)
            .expect("an unanchored start");
        if lanes {
            // One segment, however long: pieces of a quarter of the text, the remainder alone.
            let steps = text.len() / LANES;
            if let ControlFlow::Continue(state) = m.walk_lanes(text, start, start, 0, steps, &mut f)
            {
                let _ = m.walk(text, state, LANES * steps, text.len(), &mut f);
            }
        } else {
            let _ = m.walk(text, start, 0, text.len(), &mut f);
        }
        out
    }

    /// What `Matcher::for_each_hit` reports (segments of lanes for long texts).
    fn segmented(m: &Matcher, text: &str, limit: usize) -> Vec<(usize, usize, usize)> {
        let mut out = Vec::new();
        m.for_each_hit(text, &mut |pattern, start, end| {
            out.push((pattern, start, end));
            out.len() < limit
        });
        out
    }

    fn assert_same(m: &Matcher, text: &str) {
        for limit in [usize::MAX, 1, 3] {
            let one = hits(m, text, false, limit);
            assert_eq!(
                hits(m, text, true, limit),
                one,
                "text {text:?}, limit {limit}"
            );
            assert_eq!(
                segmented(m, text, limit),
                one,
                "text {text:?}, limit {limit}"
            );
        }
    }

    /// More matches than the lanes can hold: the segment is walked again in one lane.
    #[test]
    fn lanes_that_overflow_walk_again() {
        let lex = lexicon();
        let m = &lex.automata[0];
        // A short word that is a pattern, repeated: a hit every few bytes.
        let word = lex
            .patterns
            .iter()
            .map(|p| p.term.as_str())
            .filter(|t| t.len() <= 3 && t.bytes().all(|b| b.is_ascii_lowercase()))
            .find(|t| hits(m, &format!("{t} {t}"), false, usize::MAX).len() == 2)
            .expect("a short word pattern");
        let text = format!("{word} ").repeat(LANES * LANE_EVENTS * 2);
        let all = hits(m, &text, false, usize::MAX);
        let ends: std::collections::BTreeSet<usize> = all.iter().map(|h| h.2).collect();
        assert!(
            ends.len() >= 2 * LANES * LANE_EVENTS,
            "every {word:?} is a hit"
        );
        assert_same(m, &text);
        assert_same(m, &text[..LANES * SEGMENT_STEPS + 7]);
    }

    /// A pattern longer than a piece leaves the lanes apart to the next piece's end; short
    /// texts have pieces of a few bytes.
    #[test]
    fn lanes_agree_when_a_pattern_spans_pieces() {
        let lex = lexicon();
        let mut long: Vec<&Pattern> = lex.patterns.iter().filter(|p| p.term.len() >= 24).collect();
        long.sort_by_key(|p| std::cmp::Reverse(p.term.len()));
        assert!(long.len() > 50, "the built-in lexicon has long phrases");
        let mut found = 0;
        for p in long.iter().take(400) {
            let m = &lex.automata[usize::from(!p.term.is_ascii())];
            for text in [
                p.term.clone(),
                format!("x {}", p.term),
                format!("{} {} and", p.term, p.term),
                format!(
                    "the {}{}",
                    p.term,
                    &p.term[..p.term.floor_char_boundary(p.term.len() / 2)]
                ),
            ] {
                assert_same(m, &text);
                found += hits(m, &text, true, usize::MAX).len();
            }
        }
        assert!(found > 400, "the texts hit their patterns");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// Terms, parts of terms and filler, glued by separators: the lanes give the same hits
        /// in the same order as one walk, and stop at the same hit.
        #[test]
        fn lanes_agree_with_one_walk(
            parts in prop::collection::vec((any::<prop::sample::Index>(), 0..8u8, 0..4u8), 0..160),
        ) {
            let lex = lexicon();
            let mut text = String::new();
            for (i, sep, cut) in parts {
                let term = &lex.patterns[i.index(lex.patterns.len())].term;
                let keep = if cut == 0 { term.len() / 2 } else { term.len() };
                text.push_str(&term[..term.floor_char_boundary(keep)]);
                text.push_str(["", " ", "  ", ".", "a", "s ", ", i ", "zq "][usize::from(sep)]);
            }
            for m in &lex.automata {
                assert_same(m, &text);
            }
        }
    }
}
