//! Scoring rules over lexicon hits: intent × object, act × target, you × insult, group ×
//! predicate, minor × sexual, first/third person × crisis wording, end verb × conversation,
//! then benign-context suppressors.
//!
//! Owns turning hits on normalised text into `Scores` (and, for `explain`, the evidence list).
//! It must not normalise, allocate strings on the `classify` path, do I/O, or use tokio.

use crate::domain::{Category, Scores};

use super::lexicon::{Direction, Effect, Entry, Lexicon, Role, Signal, Strict};

/// A lexicon hit that passed the word-boundary check.
#[derive(Clone, Copy, Debug)]
pub(super) struct RawHit {
    entry: u32,
    pat: u32,
    start: u32,
    end: u32,
    /// Token position of `start`; sentence breaks add `sentence_gap`.
    tok: u32,
    /// Token position of the last token of the hit.
    tok_end: u32,
}

/// Which rule produced a piece of evidence; the prefix of the stable rule id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Rule {
    Lexicon,
    Object,
    IntentObject,
    Act,
    IntentAct,
    ActTarget,
    FirstPersonAct,
    ThreatAssistant,
    Insult,
    YouInsult,
    GroupPredicate,
    MinorSexual,
    FirstPersonDeath,
    ThirdPartyDeath,
    ReportedCrisis,
    MethodSeeking,
    FirstPersonSelfHarm,
    EndConversation,
}

impl Rule {
    pub(super) fn prefix(self) -> &'static str {
        match self {
            Rule::Lexicon => "lexicon",
            Rule::Object => "object",
            Rule::IntentObject => "intent_object",
            Rule::Act => "act",
            Rule::IntentAct => "intent_act",
            Rule::ActTarget => "act_target",
            Rule::FirstPersonAct => "first_person_act",
            Rule::ThreatAssistant => "threat_assistant",
            Rule::Insult => "insult",
            Rule::YouInsult => "you_insult",
            Rule::GroupPredicate => "group_predicate",
            Rule::MinorSexual => "minor_sexual",
            Rule::FirstPersonDeath => "first_person_death",
            Rule::ThirdPartyDeath => "third_party_death",
            Rule::ReportedCrisis => "reported_crisis",
            Rule::MethodSeeking => "method_seeking",
            Rule::FirstPersonSelfHarm => "first_person_self_harm",
            Rule::EndConversation => "end_conversation",
        }
    }
}

/// One scored finding, before merging into `Scores`.
#[derive(Clone, Copy, Debug)]
pub(super) struct Evidence {
    pub rule: Rule,
    pub entry: u32,
    pub effect: Effect,
    /// Score after suppression.
    pub score: f32,
    /// Byte span in the normalised text (primary hit joined with its partner).
    pub start: u32,
    pub end: u32,
    tok: u32,
    tok_end: u32,
    /// Whether the evidence joined a partner hit (target, "you", group, ...).
    partnered: bool,
    /// Suppressor hit index that damped this evidence, if any.
    pub suppressor: Option<u32>,
    /// The factor applied (1.0 when not suppressed).
    pub factor: f32,
}

/// A suppressor that damped some evidence, for `explain`.
#[derive(Clone, Copy, Debug)]
pub(super) struct AppliedSuppressor {
    pub entry: u32,
    pub start: u32,
    pub end: u32,
}

/// Reusable buffers; `classify` keeps them on the stack of one call.
#[derive(Default)]
pub(super) struct Work {
    hits: Vec<RawHit>,
    pub evidence: Vec<Evidence>,
}

/// Scores `text` (already normalised) into `scores`; fills `work.evidence`.
pub(super) fn score(lex: &Lexicon, text: &str, scores: &mut Scores, work: &mut Work) {
    work.evidence.clear();
    // Context hits alone (a request frame, "i", "you") make no evidence: skip the token walk.
    if !collect_hits(lex, text, &mut work.hits) {
        return;
    }
    let ctx = Ctx {
        lex,
        text,
        hits: &work.hits,
    };
    for i in 0..work.hits.len() {
        ctx.evaluate(i, &mut work.evidence);
    }
    for ev in work.evidence.iter_mut() {
        let (factor, by) = ctx.suppression(ev);
        ev.score *= factor;
        ev.factor = factor;
        ev.suppressor = by;
    }
    for ev in &work.evidence {
        merge(scores, ev.effect, ev.score);
    }
}

/// Suppressors that damped evidence, deduplicated, for `explain`.
pub(super) fn applied_suppressors(work: &Work) -> Vec<AppliedSuppressor> {
    let mut out: Vec<AppliedSuppressor> = Vec::new();
    for ev in &work.evidence {
        if let Some(i) = ev.suppressor {
            let h = work.hits[i as usize];
            if !out.iter().any(|s| s.start == h.start && s.entry == h.entry) {
                out.push(AppliedSuppressor {
                    entry: h.entry,
                    start: h.start,
                    end: h.end,
                });
            }
        }
    }
    out
}

fn merge(scores: &mut Scores, effect: Effect, score: f32) {
    let s = score.clamp(0.0, 1.0);
    match effect {
        Effect::Category(c) => scores.raise(c, s),
        Effect::Signal(sig) => {
            let slot = match sig {
                Signal::CrisisSelf => &mut scores.crisis_self,
                Signal::CrisisOthers => &mut scores.crisis_others,
                Signal::CrisisThirdParty => &mut scores.crisis_third_party,
                Signal::EndRequest => &mut scores.end_request,
            };
            *slot = slot.max(s);
        }
    }
}

/// Collects the hits of `text`, sorted, with their token positions; returns false (with the
/// hits unsorted and untokenised) if none of them can score ([`Entry::scores`]).
pub(super) fn collect_hits(lex: &Lexicon, text: &str, hits: &mut Vec<RawHit>) -> bool {
    hits.clear();
    let max_hits = lex.params.max_hits;
    let mut scoring = false;
    lex.for_each_hit(text, |pid, start, end| {
        let pattern = &lex.patterns[pid];
        scoring |= pattern.scores;
        for &entry in &pattern.entries {
            hits.push(RawHit {
                entry,
                pat: u32::try_from(pid).unwrap_or(u32::MAX),
                // Texts are bounded by the caller far below 4 GiB; saturate defensively.
                start: u32::try_from(start).unwrap_or(u32::MAX),
                end: u32::try_from(end).unwrap_or(u32::MAX),
                tok: 0,
                tok_end: 0,
            });
        }
        hits.len() < max_hits
    });
    if !scoring {
        return false;
    }
    hits.sort_unstable_by_key(|h| (h.start, h.end, h.entry));
    // Token positions: one pass over the text, in hit order (starts are sorted).
    let bytes = text.as_bytes();
    let gap = lex.params.sentence_gap;
    let mut pos = 0usize;
    let mut tok = 0u32;
    for h in hits.iter_mut() {
        let start = h.start as usize;
        tok = advance(bytes, pos, start, tok, gap);
        pos = start;
        h.tok = tok;
        h.tok_end = advance(bytes, start, (h.end as usize).saturating_sub(1), tok, gap);
    }
    true
}

/// Token count after walking `bytes[from..to]`: spaces and CJK characters start tokens.
fn advance(bytes: &[u8], from: usize, to: usize, mut tok: u32, gap: u32) -> u32 {
    for i in from..to.min(bytes.len()) {
        let b = bytes[i];
        if b == b' ' {
            tok += 1;
            if i > 0 && matches!(bytes[i - 1], b'.' | b'!' | b'?' | b';') {
                tok += gap;
            }
        } else if (0xe3..=0xe9).contains(&b) || (0xea..=0xed).contains(&b) {
            tok += 1;
        }
    }
    tok
}

/// Weight of the weakest request frame that makes a self-harm object method-seeking.
const METHOD_REQUEST_MIN: f32 = 0.7;

fn noisy_or(xs: &[f32]) -> f32 {
    1.0 - xs
        .iter()
        .fold(1.0, |acc, x| acc * (1.0 - x.clamp(0.0, 1.0)))
}

struct Ctx<'a> {
    lex: &'a Lexicon,
    text: &'a str,
    hits: &'a [RawHit],
}

/// A context hit found near a primary hit.
#[derive(Clone, Copy)]
struct Near {
    idx: usize,
    weight: f32,
}

impl Ctx<'_> {
    fn entry(&self, i: usize) -> &Entry {
        &self.lex.entries[self.hits[i].entry as usize]
    }

    /// Indices of hits whose token position lies in `[lo, hi]`.
    fn range(&self, lo: i64, hi: i64) -> std::ops::Range<usize> {
        let a = self.hits.partition_point(|h| i64::from(h.tok) < lo);
        let b = self.hits.partition_point(|h| i64::from(h.tok) <= hi);
        a..b.max(a)
    }

    /// The heaviest hit of `role` starting within `before` tokens before or `after` tokens
    /// after hit `i`, not overlapping it, accepted by `keep`.
    fn best(
        &self,
        i: usize,
        role: Role,
        before: u32,
        after: u32,
        keep: impl Fn(&Entry, &RawHit) -> bool,
    ) -> Option<Near> {
        let h = self.hits[i];
        let lo = i64::from(h.tok) - i64::from(before);
        let hi = i64::from(h.tok_end) + i64::from(after);
        let mut best: Option<Near> = None;
        for j in self.range(lo, hi) {
            let c = self.hits[j];
            let e = self.entry(j);
            if j == i || e.role != role || (c.start < h.end && h.start < c.end) {
                continue;
            }
            if before == 0 && c.start < h.start || after == 0 && c.start > h.start {
                continue;
            }
            if keep(e, &c) && best.is_none_or(|b| e.weight > b.weight) {
                best = Some(Near {
                    idx: j,
                    weight: e.weight,
                });
            }
        }
        best
    }

    fn push(
        &self,
        out: &mut Vec<Evidence>,
        rule: Rule,
        i: usize,
        partner: Option<usize>,
        effect: Effect,
        score: f32,
    ) {
        if score <= 0.0 {
            return;
        }
        let h = self.hits[i];
        let (mut start, mut end, mut tok, mut tok_end) = (h.start, h.end, h.tok, h.tok_end);
        if let Some(p) = partner {
            let q = self.hits[p];
            start = start.min(q.start);
            end = end.max(q.end);
            tok = tok.min(q.tok);
            tok_end = tok_end.max(q.tok_end);
        }
        out.push(Evidence {
            rule,
            entry: h.entry,
            effect,
            score: score.min(1.0),
            start,
            end,
            tok,
            tok_end,
            partnered: partner.is_some(),
            suppressor: None,
            factor: 1.0,
        });
    }

    /// The heaviest verb near hit `i` that applies to `category` (`specific`: only verbs
    /// limited to it, not generic ones).
    fn verb(&self, i: usize, category: Category, specific: bool) -> Option<Near> {
        let p = &self.lex.params;
        let target = Effect::Category(category);
        self.best(i, Role::Verb, p.verb_before, p.verb_after, |e, _| {
            if specific {
                e.applies.contains(&target)
            } else {
                e.applies.is_empty() || e.applies.contains(&target)
            }
        })
    }

    fn evasion(&self, i: usize) -> Option<Near> {
        let w = self.lex.params.request_window;
        self.best(i, Role::Evasion, w, w, |_, _| true)
    }

    /// Request strength near hit `i` for `category`: requests, category verbs, evasion.
    fn intent(&self, i: usize, category: Category) -> f32 {
        let p = &self.lex.params;
        // Self-harm: the category means seeking a method or harmful content. A first-person
        // statement ("I want to end my life", "I've been thinking about killing myself") is a
        // crisis signal only, so neither first-person wording nor a bare "I want" / "I need"
        // frame counts as a request here: only method-seeking frames ("how do I", "ways to").
        let method_only = category == Category::SelfHarm;
        let req = self.best(
            i,
            Role::Request,
            p.request_window,
            p.request_window,
            |e, _| {
                (e.applies.is_empty() || e.applies.contains(&Effect::Category(category)))
                    && (!method_only || e.weight >= METHOD_REQUEST_MIN)
            },
        );
        let verb = self.verb(i, category, false);
        let ev = self.evasion(i);
        let fp = if method_only {
            None
        } else {
            self.first_person(i)
        };
        noisy_or(&[
            req.map_or(0.0, |n| n.weight),
            verb.map_or(0.0, |n| n.weight),
            ev.map_or(0.0, |n| n.weight),
            fp.map_or(0.0, |n| n.weight * 0.8),
        ])
    }

    fn first_person(&self, i: usize) -> Option<Near> {
        let w = self.lex.params.first_person_window;
        self.best(i, Role::FirstPerson, w, 0, |_, _| true)
    }

    /// Evidence from hit `i`, if its role scores. The roles matched here are those of
    /// [`Entry::scores`], which lets `score` skip texts with no such hit.
    fn evaluate(&self, i: usize, out: &mut Vec<Evidence>) {
        let e = self.entry(i);
        let Some(effect) = e.effect else { return };
        let before = out.len();
        match e.role {
            Role::Direct => self.direct(i, effect, out),
            Role::Object => self.object(i, effect, out),
            Role::Act => self.act(i, effect, out),
            Role::Insult => self.insult(i, effect, out),
            Role::HatePred => self.hate_pred(i, effect, out),
            Role::Death => self.death(i, out),
            Role::EndVerb => self.end_verb(i, effect, out),
            _ => {}
        }
        // The two role lists must agree: evidence from an entry `scores` rejects would be lost
        // on texts whose only hits are of its kind.
        debug_assert!(
            e.scores() || out.len() == before,
            "Entry::scores misses role {:?}",
            e.role
        );
    }

    /// At most five words: short enough that an insult is aimed at whoever reads it.
    fn is_short(&self) -> bool {
        self.text.bytes().filter(|&b| b == b' ').count() < 5
    }

    /// Whether the pattern of hit `i` names its own first-person subject ("i want to die").
    fn first_person_term(&self, i: usize) -> bool {
        let term = &self.lex.patterns[self.hits[i].pat as usize].term;
        term.split(' ').any(|t| {
            matches!(
                t,
                "i" | "im" | "ive" | "id" | "me" | "my" | "myself" | "mine"
            )
        })
    }

    fn direct(&self, i: usize, effect: Effect, out: &mut Vec<Evidence>) {
        let e = self.entry(i);
        match effect {
            Effect::Signal(Signal::CrisisSelf) => {
                // Quoted ("my friend said ...") or with a third-person subject ("she is
                // better off dead"): concern for someone else, not the user at risk.
                let subject = if self.first_person_term(i) {
                    None
                } else {
                    self.best(i, Role::ThirdParty, 4, 0, |_, _| true)
                        .map(|t| t.idx)
                };
                if let Some(rep) = self.reported(i).or(subject) {
                    self.push(
                        out,
                        Rule::ReportedCrisis,
                        i,
                        Some(rep),
                        third_party(),
                        e.weight * 0.9,
                    );
                    self.push(
                        out,
                        Rule::ReportedCrisis,
                        i,
                        Some(rep),
                        effect,
                        e.weight * 0.3,
                    );
                    return;
                }
            }
            Effect::Category(Category::Sexual) => self.minor_sexual(i, e.weight, 1.0, out),
            Effect::Category(Category::SelfHarm) => {
                // Self-harm encouragement or method wording also signals risk when requested.
                let intent = self.intent(i, Category::SelfHarm);
                if intent > 0.0 {
                    self.push(
                        out,
                        Rule::MethodSeeking,
                        i,
                        None,
                        crisis_self(),
                        e.weight * intent,
                    );
                }
            }
            _ => {}
        }
        self.push(out, Rule::Lexicon, i, None, effect, e.weight);
    }

    fn object(&self, i: usize, effect: Effect, out: &mut Vec<Evidence>) {
        let e = self.entry(i);
        let Effect::Category(cat) = effect else {
            return self.push(out, Rule::Lexicon, i, None, effect, e.weight);
        };
        let m = self.lex.params.mention_factor;
        // Strict objects ("a server", "cocaine") are everyday words: they count only when
        // a verb (or evasion wording) makes them the target of an action.
        let gated = match e.strict {
            Strict::No => true,
            Strict::Any => self.verb(i, cat, false).is_some() || self.evasion(i).is_some(),
            Strict::Category => self.verb(i, cat, true).is_some() || self.evasion(i).is_some(),
        };
        if !gated {
            return;
        }
        let intent = self.intent(i, cat);
        let score = e.weight * (m + (1.0 - m) * intent);
        let rule = if intent > 0.0 {
            Rule::IntentObject
        } else {
            Rule::Object
        };
        self.push(out, rule, i, None, effect, score);
        match cat {
            Category::Sexual => self.minor_sexual(i, e.weight, m + (1.0 - m) * intent, out),
            Category::SelfHarm => {
                let req = self.best(i, Role::Request, 8, 4, |_, _| true);
                if let Some(r) = req {
                    let s = e.weight * r.weight;
                    self.push(out, Rule::MethodSeeking, i, Some(r.idx), crisis_self(), s);
                }
                if let Some(fp) = self.first_person(i) {
                    let s = e.weight * fp.weight;
                    if let Some(rep) = self.reported(i) {
                        self.push(
                            out,
                            Rule::ReportedCrisis,
                            i,
                            Some(rep),
                            third_party(),
                            s * 0.9,
                        );
                        self.push(
                            out,
                            Rule::ReportedCrisis,
                            i,
                            Some(rep),
                            crisis_self(),
                            s * 0.3,
                        );
                    } else {
                        self.push(
                            out,
                            Rule::FirstPersonSelfHarm,
                            i,
                            Some(fp.idx),
                            crisis_self(),
                            s,
                        );
                    }
                }
            }
            _ => {}
        }
    }

    fn minor_sexual(&self, i: usize, weight: f32, strength: f32, out: &mut Vec<Evidence>) {
        let w = self.lex.params.minor_window;
        if let Some(minor) = self.best(i, Role::Minor, w, w, |_, _| true) {
            // Any clearly sexual wording next to a minor is severe; "naked" and the like less so.
            let base = if weight >= 0.5 { 0.9 } else { 0.55 };
            // Adjacent ("12 year old nudes") or requested, it is exploitation; a minor and a
            // sexual word sentences apart in a survivor's story is not on its own.
            let h = self.hits[i];
            let m = self.hits[minor.idx];
            let gap = m.tok.abs_diff(h.tok).min(m.tok_end.abs_diff(h.tok_end));
            let m0 = self.lex.params.mention_factor;
            let intent = ((strength - m0) / (1.0 - m0)).clamp(0.0, 1.0);
            let closeness = if gap <= 3 { 1.0 } else { 0.55 + 0.45 * intent };
            let s = minor.weight * base * closeness;
            let cse = Effect::Category(Category::ChildSexualExploitation);
            self.push(out, Rule::MinorSexual, i, Some(minor.idx), cse, s);
        }
    }

    fn act(&self, i: usize, effect: Effect, out: &mut Vec<Evidence>) {
        let e = self.entry(i);
        let p = &self.lex.params;
        let act_end = self.hits[i].end as usize;
        let text = self.text;
        // The target must sit in the same clause as the act ("hurt. my husband" is not one).
        let target = self.best(i, Role::Target, 0, p.target_window, |_, t| {
            let between = text.get(act_end..t.start as usize).unwrap_or("");
            !between.contains(['.', '!', '?', ';', ','])
        });
        let Effect::Category(cat) = effect else {
            return;
        };
        let fp = self.first_person(i);
        if let Some(t) = target
            && self.entry(t.idx).assistant
        {
            // A threat aimed at the assistant is abuse, not a crime plan.
            let s = e.weight * t.weight * (0.75 + 0.25 * fp.map_or(0.0, |f| f.weight));
            let abuse = Effect::Category(Category::Abuse);
            return self.push(out, Rule::ThreatAssistant, i, Some(t.idx), abuse, s);
        }
        // With no target, only evasion wording ("without getting caught") makes an act a plan.
        let untargeted = if self.evasion(i).is_some() {
            0.8
        } else {
            p.untargeted_act
        };
        let base = e.weight * target.map_or(untargeted, |t| t.weight);
        let intent = self.intent(i, cat);
        let m = p.mention_factor;
        let rule = match (intent > 0.0, target.is_some()) {
            (true, _) => Rule::IntentAct,
            (false, true) => Rule::ActTarget,
            (false, false) => Rule::Act,
        };
        let partner = target.map(|t| t.idx);
        self.push(
            out,
            rule,
            i,
            partner,
            effect,
            base * (m + (1.0 - m) * intent),
        );
        let Some(t) = target else { return };
        if !self.entry(t.idx).specific {
            return;
        }
        let harm = Effect::Category(Category::HarmToOthers);
        if let Some(f) = fp {
            let s = base * (0.6 + 0.4 * f.weight);
            self.push(out, Rule::FirstPersonAct, i, Some(t.idx), harm, s);
            // Crisis support for others is about violence, not harassment.
            if cat == Category::ViolentCrime {
                let crisis = Effect::Signal(Signal::CrisisOthers);
                self.push(
                    out,
                    Rule::FirstPersonAct,
                    i,
                    Some(t.idx),
                    crisis,
                    base * f.weight,
                );
            }
        } else if intent > 0.0 {
            self.push(
                out,
                Rule::IntentAct,
                i,
                Some(t.idx),
                harm,
                base * (0.5 + 0.4 * intent),
            );
        }
    }

    fn insult(&self, i: usize, effect: Effect, out: &mut Vec<Evidence>) {
        let e = self.entry(i);
        let w = self.lex.params.you_window;
        match self.best(i, Role::You, w, w, |_, _| true) {
            Some(y) => self.push(
                out,
                Rule::YouInsult,
                i,
                Some(y.idx),
                effect,
                e.weight * y.weight,
            ),
            // In a chat, a bare insult of a few words is aimed at the assistant.
            None if self.is_short() => {
                self.push(out, Rule::Insult, i, None, effect, e.weight * 0.75)
            }
            None => self.push(out, Rule::Insult, i, None, effect, e.weight * 0.4),
        }
    }

    fn hate_pred(&self, i: usize, effect: Effect, out: &mut Vec<Evidence>) {
        let e = self.entry(i);
        let w = self.lex.params.group_window;
        if let Some(g) = self.best(i, Role::Group, w, w, |_, _| true) {
            self.push(
                out,
                Rule::GroupPredicate,
                i,
                Some(g.idx),
                effect,
                e.weight * g.weight,
            );
        }
    }

    fn death(&self, i: usize, out: &mut Vec<Evidence>) {
        let e = self.entry(i);
        let p = &self.lex.params;
        let fp = self.first_person(i);
        let tp = self.best(i, Role::ThirdParty, p.third_party_window, 0, |_, _| true);
        // The closer subject wins: "my mom yells and i want to die" is first person.
        let third_closer = match (fp, tp) {
            (Some(f), Some(t)) => self.hits[t.idx].start > self.hits[f.idx].start,
            (None, Some(_)) => true,
            _ => false,
        };
        if let Some(t) = tp
            && third_closer
        {
            let s = e.weight * t.weight * 0.9;
            return self.push(out, Rule::ThirdPartyDeath, i, Some(t.idx), third_party(), s);
        }
        if let Some(f) = fp {
            if let Some(rep) = self.reported(i) {
                let s = e.weight * f.weight;
                self.push(
                    out,
                    Rule::ReportedCrisis,
                    i,
                    Some(rep),
                    third_party(),
                    s * 0.9,
                );
                return self.push(
                    out,
                    Rule::ReportedCrisis,
                    i,
                    Some(rep),
                    crisis_self(),
                    s * 0.3,
                );
            }
            self.push(
                out,
                Rule::FirstPersonDeath,
                i,
                Some(f.idx),
                crisis_self(),
                e.weight * f.weight,
            );
        } else if e.specific {
            // Personal wording with no other subject near is the writer's own.
            let s = e.weight * 0.7;
            self.push(out, Rule::FirstPersonDeath, i, None, crisis_self(), s);
        }
    }

    /// A third-party subject followed by reported speech before hit `i` ("my friend said").
    fn reported(&self, i: usize) -> Option<usize> {
        let w = self.lex.params.third_party_window;
        let rep = self.best(i, Role::Report, w, 0, |_, _| true)?;
        let tp = self.best(rep.idx, Role::ThirdParty, 4, 0, |_, _| true)?;
        Some(tp.idx)
    }

    fn end_verb(&self, i: usize, effect: Effect, out: &mut Vec<Evidence>) {
        let e = self.entry(i);
        let w = self.lex.params.conv_window;
        if let Some(c) = self.best(i, Role::ConvObj, 0, w, |_, _| true) {
            self.push(
                out,
                Rule::EndConversation,
                i,
                Some(c.idx),
                effect,
                e.weight * c.weight,
            );
        }
    }

    /// The smallest suppressor factor that applies to `ev`, and the suppressor hit.
    fn suppression(&self, ev: &Evidence) -> (f32, Option<u32>) {
        let reach = i64::from(self.lex.max_suppressor_window);
        let mut factor = 1.0f32;
        let mut by = None;
        for j in self.range(i64::from(ev.tok) - reach, i64::from(ev.tok_end) + reach) {
            let s = self.hits[j];
            let e = self.entry(j);
            if e.role != Role::Suppressor || e.weight >= factor {
                continue;
            }
            if !e.applies.is_empty() && !e.applies.contains(&ev.effect) {
                continue;
            }
            if !self.in_reach(&s, e.window, e.direction, ev) {
                continue;
            }
            if e.unless_present && self.present_near(ev, e.window) {
                continue;
            }
            if e.unless_verb && self.verb_near(ev, e.window) {
                continue;
            }
            if e.only_untargeted
                && (ev.partnered || !matches!(ev.rule, Rule::Act | Rule::IntentAct))
            {
                continue;
            }
            factor = e.weight;
            by = Some(u32::try_from(j).unwrap_or(u32::MAX));
        }
        (factor, by)
    }

    fn in_reach(&self, s: &RawHit, window: u32, dir: Direction, ev: &Evidence) -> bool {
        let overlaps = s.start < ev.end && ev.start < s.end;
        if window == 0 {
            return overlaps;
        }
        // An overlapping directional suppressor must still stick out on its side:
        // "dont want to" damps "die" in "i dont want to die", not "dont want to live".
        if overlaps {
            return match dir {
                Direction::Both => true,
                Direction::Before => s.start < ev.start,
                Direction::After => s.end > ev.end,
            };
        }
        let before = s.end <= ev.start && ev.tok.saturating_sub(s.tok_end) <= window;
        let after = s.start >= ev.end && s.tok.saturating_sub(ev.tok_end) <= window;
        match dir {
            Direction::Both => before || after,
            Direction::Before => before,
            Direction::After => after,
        }
    }

    /// A verb that applies to `ev`'s category within `window` tokens of it.
    fn verb_near(&self, ev: &Evidence, window: u32) -> bool {
        let Effect::Category(cat) = ev.effect else {
            return false;
        };
        let lo = i64::from(ev.tok) - i64::from(window);
        let hi = i64::from(ev.tok_end) + i64::from(window);
        self.range(lo, hi).any(|j| {
            let e = self.entry(j);
            (e.role == Role::Verb
                && (e.applies.is_empty() || e.applies.contains(&Effect::Category(cat))))
                || e.role == Role::Evasion
        })
    }

    fn present_near(&self, ev: &Evidence, window: u32) -> bool {
        let lo = i64::from(ev.tok) - i64::from(window);
        let hi = i64::from(ev.tok_end) + i64::from(window);
        self.range(lo, hi)
            .any(|j| self.entry(j).role == Role::Present)
    }
}

fn third_party() -> Effect {
    Effect::Signal(Signal::CrisisThirdParty)
}

fn crisis_self() -> Effect {
    Effect::Signal(Signal::CrisisSelf)
}
