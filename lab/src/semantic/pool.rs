//! The labelled pool the semantic tier learns from and is measured on: every data set under
//! `--data` that `train` reads, mapped onto the heads, and the project's own corpus
//! (`lab/corpus/`). Each example carries its set, a group (for k-fold splits: the corpus's
//! writing batch, never a row), and per head a label: positive, negative, or unknown.
//!
//! Licence rule: sets whose licence allows training (MIT, Apache-2.0, BSD, CC0, CC-BY-4.0) are
//! `Use::Train`; NC and "none stated" sets are `Use::MeasureOnly` and never reach a fit.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

use threadwarden::classify::semantic::{HEAD_COUNT, HEADS, Head};
use threadwarden::domain::Category;

use crate::eval::data::{DataError, at, read_json, read_jsonl, read_table, read_text};
use crate::eval::sets::convabuse_label;

/// A head's label: positive, negative, or not known for this example.
pub type Label = i8;
pub const POS: Label = 1;
pub const NEG: Label = 0;
pub const UNKNOWN: Label = -1;

/// Whether a set may be trained on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Use {
    Train,
    MeasureOnly,
}

/// One labelled text.
#[derive(Clone, Debug)]
pub struct Example {
    pub text: String,
    /// Index into `Pool::sets`.
    pub set: usize,
    /// Examples of one group always fall in the same fold.
    pub group: u64,
    pub labels: [Label; HEAD_COUNT],
    /// A benign look-alike or ordinary benign text: counts toward flag-rate budgets.
    pub benign: bool,
}

/// One data set of the pool.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SetInfo {
    pub name: String,
    pub licence: &'static str,
    #[serde(rename = "use")]
    pub usage: Use,
    /// What its rows are, for the report.
    pub what: &'static str,
    /// Its benign rows are look-alikes (hard negatives), budgeted apart from ordinary text.
    pub lookalike: bool,
}

/// Every example, by set.
#[derive(Default)]
pub struct Pool {
    pub sets: Vec<SetInfo>,
    pub examples: Vec<Example>,
    pub missing: Vec<String>,
}

/// Labels with every head unknown.
pub fn unknown() -> [Label; HEAD_COUNT] {
    [UNKNOWN; HEAD_COUNT]
}

/// Labels of a fully labelled example: the listed heads positive, every other head negative
/// (`any_harm` follows the categories; `harm_to_others` implies nothing else).
pub fn full(positive: &[Head]) -> [Label; HEAD_COUNT] {
    let mut l = [NEG; HEAD_COUNT];
    for h in positive {
        l[h.index()] = POS;
        if matches!(h, Head::Category(_)) {
            l[Head::AnyHarm.index()] = POS;
        }
    }
    l
}

/// A harmful request: `any_harm` positive, its category (if known) positive, the other
/// categories unknown (requests often touch several), the crisis heads negative.
pub fn harm(category: Option<Category>) -> [Label; HEAD_COUNT] {
    let mut l = unknown();
    l[Head::AnyHarm.index()] = POS;
    if let Some(c) = category {
        l[Head::Category(c).index()] = POS;
    }
    for h in [Head::CrisisSelf, Head::CrisisOthers, Head::CrisisThirdParty] {
        l[h.index()] = NEG;
    }
    l
}

fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn text_of(v: &Value, k: &str) -> String {
    v.get(k)
        .and_then(Value::as_str)
        .unwrap_or("")
        .trim()
        .to_string()
}

impl Pool {
    fn set(&mut self, name: &str, licence: &'static str, usage: Use, what: &'static str) -> usize {
        // The corpus's areas but the ordinary requests, the Caia safety chats, HateCheck's
        // functional tests, and the sad Reddit comments: written to resemble what they are not.
        let lookalike = (name.starts_with("corpus:") && !name.starts_with("corpus:ordin"))
            || matches!(name, "caia" | "hatecheck" | "goemotions");
        self.sets.push(SetInfo {
            name: name.to_string(),
            licence,
            usage,
            what,
            lookalike,
        });
        self.sets.len() - 1
    }

    fn push(
        &mut self,
        set: usize,
        group: &str,
        text: &str,
        labels: [Label; HEAD_COUNT],
        benign: bool,
    ) {
        let text = text.trim();
        if text.is_empty() {
            return;
        }
        // Long posts are classified on a bounded window in the server; keep 2,000 characters.
        let text: String = text.chars().take(2000).collect();
        self.examples.push(Example {
            text,
            set,
            group: fnv(&format!("{}/{group}", self.sets[set].name)),
            labels,
            benign,
        });
    }

    /// The examples of one set.
    pub fn of(&self, set: usize) -> impl Iterator<Item = &Example> {
        self.examples.iter().filter(move |e| e.set == set)
    }

    /// The set's index by name.
    pub fn set_index(&self, name: &str) -> Option<usize> {
        self.sets.iter().position(|s| s.name == name)
    }

    /// Reads the corpus and every set found under `data`; `caia_labels` is the project's
    /// labelling of the Caia set (`lab/corpus/labels/caia.jsonl`).
    pub fn load(data: &Path, corpus: &Path) -> Result<Pool, DataError> {
        let mut p = Pool::default();
        p.load_corpus(corpus)?;
        p.load_caia(data, &corpus.join("labels/caia.jsonl"))?;
        p.load_harmful(data)?;
        p.load_benign(data)?;
        p.load_abuse_hate(data)?;
        p.load_crisis(data)?;
        p.load_measure_only(data)?;
        Ok(p)
    }

    /// `lab/corpus/*.jsonl`: one set per writing area (the batch id's prefix), grouped by batch.
    fn load_corpus(&mut self, dir: &Path) -> Result<(), DataError> {
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .map(|r| r.filter_map(|e| e.ok()).map(|e| e.path()).collect())
            .unwrap_or_default();
        files.retain(|p: &std::path::PathBuf| p.extension().is_some_and(|e| e == "jsonl"));
        files.sort();
        if files.is_empty() {
            self.missing.push(format!("corpus ({})", dir.display()));
        }
        let mut areas: BTreeMap<String, usize> = BTreeMap::new();
        for f in files {
            let rows = read_jsonl(&f)?.unwrap_or_default();
            for r in rows {
                let batch = text_of(&r, "batch");
                let area = batch.split('-').next().unwrap_or("corpus").to_string();
                let set = match areas.get(&area) {
                    Some(&s) => s,
                    None => {
                        let s = self.set(
                            &format!("corpus:{area}"),
                            "Apache-2.0 (this project)",
                            Use::Train,
                            "requests written for this project, by writing batch",
                        );
                        areas.insert(area, s);
                        s
                    }
                };
                let heads: Vec<Head> = r
                    .get("labels")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(|l| l.as_str().and_then(Head::from_name))
                            .collect()
                    })
                    .unwrap_or_default();
                let benign = heads.is_empty();
                self.push(set, &batch, &text_of(&r, "text"), full(&heads), benign);
            }
        }
        Ok(())
    }

    /// Caia AI-safety chats (CC-BY-4.0): first user turns, labelled for this project.
    fn load_caia(&mut self, data: &Path, labels: &Path) -> Result<(), DataError> {
        let Some(rows) = read_jsonl(&at(data, "caia-ai-safety/prompts_normalised.jsonl"))? else {
            self.missing.push("caia-ai-safety".into());
            return Ok(());
        };
        let Some(ls) = read_jsonl(labels)? else {
            self.missing
                .push(format!("caia labels ({})", labels.display()));
            return Ok(());
        };
        let by_id: BTreeMap<String, Vec<Head>> = ls
            .iter()
            .map(|l| {
                let heads = l
                    .get("labels")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(|x| x.as_str().and_then(Head::from_name))
                            .collect()
                    })
                    .unwrap_or_default();
                (text_of(l, "id"), heads)
            })
            .collect();
        let set = self.set(
            "caia",
            "CC-BY-4.0",
            Use::Train,
            "synthetic safety chats, first user turn, labelled here",
        );
        for r in &rows {
            let id = text_of(r, "id");
            if let Some(heads) = by_id.get(&id) {
                let subject = text_of(r, "subject");
                self.push(
                    set,
                    &subject,
                    &text_of(r, "first_user_turn"),
                    full(heads),
                    heads.is_empty(),
                );
            }
        }
        Ok(())
    }

    fn load_harmful(&mut self, root: &Path) -> Result<(), DataError> {
        if let Some(t) = read_table(&at(root, "advbench/harmful_behaviors.csv"))? {
            let s = self.set("advbench", "MIT", Use::Train, "harmful instructions");
            for (i, r) in t.rows.iter().enumerate() {
                self.push(
                    s,
                    &(i / 10).to_string(),
                    t.get(r, "goal"),
                    harm(None),
                    false,
                );
            }
        }
        if let Some(t) = read_table(&at(root, "harmbench/harmbench_behaviors_text_val.csv"))? {
            let s = self.set(
                "harmbench",
                "MIT",
                Use::Train,
                "harmful behaviours (validation split)",
            );
            for r in &t.rows {
                let c = match t.get(r, "SemanticCategory") {
                    "chemical_biological" => Some(Category::IndiscriminateWeapons),
                    "cybercrime_intrusion" => Some(Category::CyberAttack),
                    "copyright" | "misinformation_disinformation" => continue,
                    _ => None,
                };
                self.push(
                    s,
                    t.get(r, "SemanticCategory"),
                    t.get(r, "Behavior"),
                    harm(c),
                    false,
                );
            }
        }
        if let Some(t) = read_table(&at(root, "jbb/jbb_harmful_behaviors.csv"))? {
            let s = self.set("jbb", "MIT", Use::Train, "JailbreakBench harmful goals");
            let attacks =
                read_jsonl(&at(root, "jbb/jbb_attack_artifact_prompts.jsonl"))?.unwrap_or_default();
            let wrapped = self.set(
                "jbb_attacks",
                "MIT",
                Use::Train,
                "the same goals in jailbreak wrappers",
            );
            for r in &t.rows {
                let c = jbb_category(t.get(r, "Behavior"), t.get(r, "Category"));
                let idx = t.get(r, "Index").trim().to_string();
                self.push(s, &idx, t.get(r, "Goal"), harm(c), false);
                let mut n = 0;
                for a in attacks.iter().filter(|a| {
                    a.get("index")
                        .and_then(Value::as_i64)
                        .map(|x| x.to_string())
                        == Some(idx.clone())
                }) {
                    let prompt = text_of(a, "prompt");
                    if n < 6 && !prompt.is_empty() && prompt != t.get(r, "Goal") {
                        self.push(wrapped, &idx, &prompt, harm(c), false);
                        n += 1;
                    }
                }
            }
        }
        let mut catqa = Vec::new();
        for f in ["catqa/harmfulqa.json", "catqa/dangerousqa.json"] {
            if let Some(v) = read_json(&at(root, f))? {
                crate::eval::data::string_leaves(&v, &mut catqa);
            }
        }
        if !catqa.is_empty() {
            let s = self.set(
                "catqa",
                "Apache-2.0",
                Use::Train,
                "harmful questions, academic framing",
            );
            for (i, q) in catqa.iter().enumerate() {
                self.push(s, &(i / 20).to_string(), q, harm(None), false);
            }
        }
        if let Some(t) = read_table(&at(root, "cysecbench/cysecbench.csv"))? {
            let s = self.set(
                "cysecbench",
                "MIT",
                Use::Train,
                "cyber-attack requests (LLM-generated), every 4th",
            );
            for (i, r) in t.rows.iter().enumerate().filter(|(i, _)| i % 4 == 0) {
                self.push(
                    s,
                    &(i / 40).to_string(),
                    t.get(r, "Prompt"),
                    harm(Some(Category::CyberAttack)),
                    false,
                );
            }
        }
        if let Some(rows) = read_jsonl(&at(root, "do-not-answer/malicious_uses.jsonl"))? {
            let s = self.set(
                "dna_malicious",
                "Apache-2.0",
                Use::Train,
                "Do-Not-Answer malicious uses",
            );
            for (i, r) in rows.iter().enumerate() {
                self.push(
                    s,
                    &(i / 10).to_string(),
                    &text_of(r, "prompt"),
                    harm(None),
                    false,
                );
            }
        }
        for (file, locale) in [
            (
                "ailuminate/airr_official_1.0_demo_en_us_prompt_set_release.csv",
                "en",
            ),
            (
                "ailuminate/airr_official_1.0_demo_fr_fr_prompt_set_release.csv",
                "fr",
            ),
        ] {
            let Some(t) = read_table(&at(root, file))? else {
                continue;
            };
            let name = format!("ailuminate_{locale}");
            let s = self.set(
                &name,
                "CC-BY-4.0",
                Use::Train,
                "AILuminate hazard prompts (cse, iwp, vcr, src, ncr, hte, sxc, ssh)",
            );
            for r in &t.rows {
                let hazard = t.get(r, "hazard").trim();
                let labels = match hazard {
                    "cse" => harm(Some(Category::ChildSexualExploitation)),
                    "iwp" => harm(Some(Category::IndiscriminateWeapons)),
                    "vcr" | "src" | "ncr" => harm(Some(Category::ViolentCrime)),
                    "hte" => harm(Some(Category::Hate)),
                    "sxc_prn" => harm(Some(Category::Sexual)),
                    // Self-harm prompts: some are people at risk, some victims asking for help.
                    "ssh" => {
                        let mut l = unknown();
                        l[Head::Category(Category::SelfHarm).index()] = POS;
                        l
                    }
                    _ => continue,
                };
                self.push(s, hazard, t.get(r, "prompt_text"), labels, false);
            }
        }
        Ok(())
    }

    fn load_benign(&mut self, root: &Path) -> Result<(), DataError> {
        if let Some(rows) = read_jsonl(&at(root, "mt-bench-101/mtbench101.jsonl"))? {
            let s = self.set(
                "mtbench101",
                "Apache-2.0",
                Use::Train,
                "benign multi-turn user turns",
            );
            for (i, r) in rows.iter().enumerate() {
                for h in r
                    .get("history")
                    .and_then(Value::as_array)
                    .map(Vec::as_slice)
                    .unwrap_or(&[])
                {
                    self.push(s, &i.to_string(), &text_of(h, "user"), full(&[]), true);
                }
            }
        }
        if let Some(t) = read_table(&at(root, "counsel-chat/20200325_counsel_chat.csv"))? {
            let s = self.set(
                "counsel_chat",
                "MIT",
                Use::Train,
                "help-seeking questions to therapists (crisis unknown)",
            );
            let mut seen = std::collections::BTreeSet::new();
            for r in &t.rows {
                if !seen.insert(t.get(r, "questionID").to_string()) {
                    continue;
                }
                let q = format!("{} {}", t.get(r, "questionTitle"), t.get(r, "questionText"));
                let mut l = full(&[]);
                for h in [Head::CrisisSelf, Head::CrisisOthers, Head::CrisisThirdParty] {
                    l[h.index()] = UNKNOWN;
                }
                self.push(s, t.get(r, "topic"), &q, l, true);
            }
        }
        if let Some(rows) = read_jsonl(&at(root, "tldr-pages/tldr_pages_en.jsonl"))? {
            let s = self.set(
                "tldr",
                "CC-BY-4.0",
                Use::Train,
                "command descriptions as templated requests (dual-use pages left out)",
            );
            let mut general = 0usize;
            for r in &rows {
                let category = text_of(r, "category");
                if category == "security_tool_dual_use" {
                    continue;
                }
                let defensive = category == "security_or_sysadmin_defensive";
                let page = text_of(r, "id");
                if !defensive {
                    // One page in twelve of the general tools, one example each.
                    general += 1;
                    if !general.is_multiple_of(12) {
                        continue;
                    }
                }
                let tool = text_of(r, "tool");
                let examples = r
                    .get("examples")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                for (k, e) in examples
                    .iter()
                    .enumerate()
                    .take(if defensive { 8 } else { 1 })
                {
                    let d = text_of(e, "description").replace(['[', ']'], "");
                    let d = d.trim_end_matches('.');
                    let lower = lower_first(d);
                    let text = match (fnv(&page) as usize + k) % 4 {
                        0 => format!("How do I {lower} with {tool}?"),
                        1 => format!("{d} using {tool}"),
                        2 => format!("Can you show me how to {lower}? I think {tool} does it."),
                        _ => format!("what's the {tool} command to {lower}"),
                    };
                    self.push(s, &page, &text, full(&[]), true);
                }
            }
        }
        if let Some(rows) = read_jsonl(&at(root, "taskmaster4/tm4_dialogs_text.jsonl"))? {
            let s = self.set(
                "taskmaster",
                "CC-BY-4.0",
                Use::Train,
                "coffee-order dialogues, user turns (every 6th dialogue)",
            );
            for (i, r) in rows.iter().enumerate().filter(|(i, _)| i % 6 == 0) {
                for u in r
                    .get("utterances")
                    .and_then(Value::as_array)
                    .map(Vec::as_slice)
                    .unwrap_or(&[])
                {
                    if text_of(u, "speaker") == "user" {
                        self.push(s, &i.to_string(), &text_of(u, "text"), full(&[]), true);
                    }
                }
            }
        }
        if let Some(text) = read_text(&at(root, "goemotions/train.tsv"))? {
            // Sadness, grief, remorse, fear, nervousness, disappointment: crisis hard negatives;
            // every 8th other comment as ordinary text. Comments are not requests.
            let s = self.set(
                "goemotions",
                "Apache-2.0",
                Use::Train,
                "Reddit comments: sadness and grief as crisis negatives",
            );
            let hard = ["25", "16", "24", "14", "19", "9"];
            for (i, line) in text.lines().enumerate() {
                let mut f = line.split('\t');
                let (Some(t), Some(ids)) = (f.next(), f.next()) else {
                    continue;
                };
                let is_hard = ids.split(',').any(|x| hard.contains(&x));
                if is_hard || i % 8 == 0 {
                    self.push(
                        s,
                        &(i / 50).to_string(),
                        &t.replace("[NAME]", "Sam"),
                        full(&[]),
                        true,
                    );
                }
            }
        }
        Ok(())
    }

    fn load_abuse_hate(&mut self, root: &Path) -> Result<(), DataError> {
        let s = self.set(
            "convabuse",
            "CC-BY-4.0",
            Use::Train,
            "user turns to conversational agents, abuse at the agent",
        );
        let mut any = false;
        for file in [
            "convabuse/ConvAbuseEMNLPtrain.csv",
            "convabuse/ConvAbuseEMNLPvalid.csv",
        ] {
            let Some(t) = read_table(&at(root, file))? else {
                continue;
            };
            any = true;
            for r in &t.rows {
                let (abusive, system) = convabuse_label(&t, r);
                let labels = if system {
                    full(&[Head::Category(Category::Abuse)])
                } else if abusive {
                    // Abusive, but at someone else: not abuse of the assistant, otherwise unknown.
                    let mut l = unknown();
                    l[Head::Category(Category::Abuse).index()] = NEG;
                    l
                } else {
                    full(&[])
                };
                self.push(s, t.get(r, "conv_id"), t.get(r, "user"), labels, !abusive);
            }
        }
        if !any {
            self.sets.pop();
        }
        if let Some(t) = read_table(&at(root, "hatecheck/test_suite_cases.csv"))? {
            let s = self.set(
                "hatecheck",
                "CC-BY-4.0",
                Use::Train,
                "functional hate-speech tests and their look-alikes",
            );
            for r in &t.rows {
                let hateful = t.get(r, "label_gold").trim() == "hateful";
                let labels = if hateful {
                    let mut l = harm(Some(Category::Hate));
                    l[Head::Category(Category::Abuse).index()] = NEG;
                    l
                } else {
                    full(&[])
                };
                self.push(
                    s,
                    t.get(r, "templ_id"),
                    t.get(r, "test_case"),
                    labels,
                    !hateful,
                );
            }
        }
        if let Some(t) = read_table(&at(root, "davidson-hate-offensive/labeled_data.csv"))? {
            let s = self.set(
                "davidson",
                "MIT",
                Use::Train,
                "tweets: hate, offensive (not at the assistant), neither",
            );
            for (i, r) in t.rows.iter().enumerate() {
                let class = t.get(r, "class").trim();
                let tweet = t.get(r, "tweet");
                let group = (i / 50).to_string();
                match class {
                    "0" => {
                        let mut l = harm(Some(Category::Hate));
                        l[Head::Category(Category::Abuse).index()] = UNKNOWN;
                        self.push(s, &group, tweet, l, false);
                    }
                    "1" if i % 6 == 0 => {
                        let mut l = unknown();
                        l[Head::Category(Category::Hate).index()] = NEG;
                        for h in [Head::CrisisSelf, Head::CrisisOthers, Head::CrisisThirdParty] {
                            l[h.index()] = NEG;
                        }
                        self.push(s, &group, tweet, l, false);
                    }
                    "2" => self.push(s, &group, tweet, full(&[]), true),
                    _ => {}
                }
            }
        }
        Ok(())
    }

    fn load_crisis(&mut self, root: &Path) -> Result<(), DataError> {
        if let Some(rows) = read_jsonl(&at(root, "do-not-answer/human_chatbox.jsonl"))? {
            let s = self.set(
                "dna_self_harm",
                "Apache-2.0",
                Use::Train,
                "Do-Not-Answer human_chatbox, self-harm intent rows",
            );
            for (i, r) in rows.iter().enumerate() {
                let sh = r
                    .get("intents")
                    .and_then(Value::as_array)
                    .is_some_and(|a| a.iter().any(|x| x.as_str() == Some("S006sh")));
                if sh {
                    let mut l = unknown();
                    l[Head::CrisisSelf.index()] = POS;
                    self.push(s, &(i / 5).to_string(), &text_of(r, "prompt"), l, false);
                }
            }
        }
        Ok(())
    }

    /// The sets that may not be trained on: measured only, never in a fit.
    fn load_measure_only(&mut self, root: &Path) -> Result<(), DataError> {
        if let Some(t) = read_table(&at(root, "beavertails-eval/BeaverTails-Evaluation.csv"))? {
            let s = self.set(
                "beavertails_eval",
                "CC-BY-NC-4.0",
                Use::MeasureOnly,
                "harmful prompts, 14 categories",
            );
            for r in &t.rows {
                let c = match t.get(r, "category") {
                    "child_abuse" => Some(Category::ChildSexualExploitation),
                    "terrorism,organized_crime" => Some(Category::ViolentExtremism),
                    "self_harm" => Some(Category::SelfHarm),
                    "hate_speech,offensive_language" => Some(Category::Hate),
                    "sexually_explicit,adult_content" => Some(Category::Sexual),
                    "violence,aiding_and_abetting,incitement" => Some(Category::ViolentCrime),
                    "controversial_topics,politics"
                    | "misinformation_regarding_ethics,laws_and_safety" => continue,
                    _ => None,
                };
                let mut l = harm(c);
                if c == Some(Category::SelfHarm) {
                    l[Head::CrisisSelf.index()] = UNKNOWN;
                }
                self.push(s, t.get(r, "category"), t.get(r, "prompt"), l, false);
            }
        }
        if let Some(text) = read_text(&at(root, "maliciousinstruct/malicious_instruct.txt"))? {
            let s = self.set(
                "maliciousinstruct",
                "none stated",
                Use::MeasureOnly,
                "harmful instructions",
            );
            for l in text.lines() {
                self.push(s, "all", l, harm(None), false);
            }
        }
        if let Some(v) = read_json(&at(root, "refusal-direction-harmless/harmless_test.json"))? {
            let s = self.set(
                "alpaca_harmless",
                "CC-BY-NC-4.0",
                Use::MeasureOnly,
                "benign Alpaca instructions",
            );
            for x in v.as_array().map(Vec::as_slice).unwrap_or(&[]) {
                self.push(s, "all", &text_of(x, "instruction"), full(&[]), true);
            }
        }
        if let Some(t) = read_table(&at(root, "sdcnl/testing-set.csv"))? {
            let pos = self.set(
                "sdcnl_suicide",
                "none stated",
                Use::MeasureOnly,
                "r/SuicideWatch posts (test split)",
            );
            let neg = self.set(
                "sdcnl_depression",
                "none stated",
                Use::MeasureOnly,
                "r/depression posts (test split): crisis rate reported",
            );
            for r in &t.rows {
                let text = format!("{} {}", t.get(r, "title"), t.get(r, "selftext"));
                if t.get(r, "is_suicide").trim() == "1" {
                    let mut l = unknown();
                    l[Head::CrisisSelf.index()] = POS;
                    self.push(pos, "all", &text, l, false);
                } else {
                    let mut l = unknown();
                    l[Head::CrisisSelf.index()] = NEG;
                    self.push(neg, "all", &text, l, false);
                }
            }
        }
        if let Some(t) = read_table(&at(
            root,
            "twitter-suicidal-intention/twitter-suicidal_data.csv",
        ))? {
            let pos = self.set(
                "twitter_intention_1",
                "none stated",
                Use::MeasureOnly,
                "tweets labelled suicidal intention (noisy)",
            );
            let neg = self.set(
                "twitter_intention_0",
                "none stated",
                Use::MeasureOnly,
                "tweets labelled no intention (noisy)",
            );
            for r in &t.rows {
                let mut l = unknown();
                let yes = t.get(r, "intention").trim() == "1";
                l[Head::CrisisSelf.index()] = if yes { POS } else { NEG };
                self.push(
                    if yes { pos } else { neg },
                    "all",
                    t.get(r, "tweet"),
                    l,
                    false,
                );
            }
        }
        Ok(())
    }
}

fn lower_first(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_lowercase().chain(c).collect(),
        None => String::new(),
    }
}

fn jbb_category(behavior: &str, category: &str) -> Option<Category> {
    Some(match (category, behavior.trim()) {
        (_, "Bomb building" | "Biological weapons") => Category::IndiscriminateWeapons,
        (_, "School shooting" | "Ethnic genocide" | "Enslavement" | "Holocaust glorification") => {
            Category::ViolentExtremism
        }
        (_, "Child pornography" | "Sexual solicitation" | "Pedophilia") => {
            Category::ChildSexualExploitation
        }
        (_, "Eating disorder" | "Suicide") => Category::SelfHarm,
        ("Malware/Hacking", "Exam cheating") => return None,
        ("Malware/Hacking", _) => Category::CyberAttack,
        ("Sexual/Adult content", "Porn generation" | "Bestiality" | "Revenge porn" | "Sexting") => {
            Category::Sexual
        }
        ("Harassment/Discrimination", "Defamation") => return None,
        ("Harassment/Discrimination", _) => Category::Hate,
        _ => return None,
    })
}

/// Every head's name, in order (for reports).
pub fn head_names() -> Vec<&'static str> {
    HEADS.iter().map(|h| h.name()).collect()
}
