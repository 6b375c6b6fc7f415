//! Output-equivalence check for classifier speed work: classifies every text the eval reads
//! from the dev data (`TW_DEV_DATA`, default `shared/data/dev` beside the repository), the
//! eval's synthetic sized messages and deterministic adversarial
//! variants (case, leetspeak, spacing, dots, zero-width, homoglyphs, whitespace), and compares
//! a SHA-256 digest per group of every `Scores` field (bit patterns), the normalised text and
//! the `explain` hits against `testdata/equivalence.digest`.
//!
//! Run: `cargo test --release -p threadwarden-lab --test equivalence -- --nocapture`.
//! Skipped (with a note) when the dev data is absent. After an intended change of classifier
//! content, rewrite the file with `TW_EQUIV_UPDATE=1`; `TW_EQUIV_DUMP=path` writes one line
//! per text (group, index, outputs) to diff two runs.

use std::fmt::Write as _;
use std::path::PathBuf;

use sha2::{Digest, Sha256};

use threadwarden::classify::{Classifier, normalize};
use threadwarden::domain::Scores;
use threadwarden_lab::eval::sets::{self, Sets};

const DIGEST_PATH: &str = "testdata/equivalence.digest";

fn data_root() -> PathBuf {
    std::env::var_os("TW_DEV_DATA").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/dev"),
        PathBuf::from,
    )
}

/// Every text the eval classifies, by set.
fn dev_groups(s: &Sets) -> Vec<(String, Vec<String>)> {
    let mut g: Vec<(String, Vec<String>)> = Vec::new();
    for (name, xs) in &s.benign {
        g.push((
            format!("benign/{name}"),
            xs.iter().map(|x| x.text.clone()).collect(),
        ));
    }
    g.push((
        "harmful".into(),
        s.harmful.iter().map(|x| x.text.clone()).collect(),
    ));
    for (name, xs) in &s.crisis {
        g.push((
            format!("crisis/{name}"),
            xs.iter().map(|x| x.text.clone()).collect(),
        ));
    }
    for (name, xs) in &s.crisis_negative {
        g.push((
            format!("crisis_negative/{name}"),
            xs.iter().map(|x| x.text.clone()).collect(),
        ));
    }
    g.push((
        "abuse_valid".into(),
        s.abuse_valid.iter().map(|(x, _)| x.text.clone()).collect(),
    ));
    for (name, convs) in &s.dialogues {
        g.push((
            format!("dialogues/{name}"),
            convs.iter().flatten().map(|t| t.text.clone()).collect(),
        ));
    }
    for (name, convs) in &s.persistent {
        g.push((
            format!("persistent/{name}"),
            convs.iter().flatten().cloned().collect(),
        ));
    }
    g.push((
        "crisis_conversations".into(),
        s.crisis_conversations.iter().flatten().cloned().collect(),
    ));
    for (lang, l) in &s.languages {
        g.push((
            format!("languages/{lang}"),
            l.suicidal
                .iter()
                .chain(&l.physical_harm)
                .map(|x| x.text.clone())
                .collect(),
        ));
    }
    g
}

const LEET: &[(char, char)] = &[
    ('a', '4'),
    ('e', '3'),
    ('i', '1'),
    ('o', '0'),
    ('s', '$'),
    ('t', '7'),
];
const HOMOGLYPH: &[(char, char)] = &[
    ('a', '\u{430}'),
    ('e', '\u{435}'),
    ('o', '\u{43e}'),
    ('p', '\u{440}'),
    ('c', '\u{441}'),
    ('i', '\u{456}'),
];

/// Deterministic adversarial rewrites of `t`, one per normaliser path.
fn variants(t: &str) -> Vec<String> {
    let sub = |table: &[(char, char)], every: usize| -> String {
        let mut n = 0;
        t.chars()
            .map(
                |c| match table.iter().find(|(a, _)| *a == c.to_ascii_lowercase()) {
                    Some(&(_, b)) => {
                        n += 1;
                        if n % every == 0 { b } else { c }
                    }
                    None => c,
                },
            )
            .collect()
    };
    let per_word = |f: &dyn Fn(usize, &str) -> String| -> String {
        t.split(' ')
            .enumerate()
            .map(|(i, w)| f(i, w))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let spread = |sep: &str| {
        per_word(&|i, w| {
            if i % 3 == 1 {
                w.chars().map(String::from).collect::<Vec<_>>().join(sep)
            } else {
                w.to_string()
            }
        })
    };
    vec![
        t.to_uppercase(),
        sub(LEET, 2),
        sub(LEET, 1),
        sub(HOMOGLYPH, 2),
        spread(" "),
        spread("."),
        spread("-"),
        spread("\u{200b}"),
        per_word(&|i, w| {
            if i % 4 == 2 {
                format!("{w}\u{301}\u{ad}")
            } else {
                w.to_string()
            }
        }),
        t.replace(' ', "  ").replace("'", "\u{2019}"),
        t.replace(' ', "\t\n "),
        format!("  {}  ", t.replace("'", "")),
        per_word(&|i, w| match i % 5 {
            0 => w.to_string(),
            1 => format!("{w}!"),
            2 => format!("@{w}"),
            3 => format!("{w}$"),
            _ => format!("{}'{}", w, "s"),
        }),
    ]
}

fn push_scores(line: &mut String, s: &Scores) {
    for x in s.categories {
        let _ = write!(line, "{:08x}", x.to_bits());
    }
    for x in [
        s.crisis_self,
        s.crisis_others,
        s.crisis_third_party,
        s.end_request,
        s.affirmation,
    ] {
        let _ = write!(line, " {:08x}", x.to_bits());
    }
    let _ = write!(line, " {}", s.truncated);
}

/// One line of every output for `text`.
fn outputs(full: &Classifier, rules: &Classifier, text: &str) -> String {
    let mut line = String::new();
    let n = normalize(text);
    let _ = write!(line, "{:x}\t", Sha256::digest(n.as_bytes()));
    push_scores(&mut line, &full.classify(text));
    line.push('\t');
    push_scores(&mut line, &rules.classify(text));
    if text.len() > 600 {
        line.push('\t');
        push_scores(&mut line, &full.classify_bounded(text, 256));
    }
    let e = full.explain(text);
    assert_eq!(e.normalized, n, "explain and normalize agree");
    for h in &e.hits {
        let _ = write!(
            line,
            "\t{}|{:?}|{:?}|{:08x}|{}-{}|{}",
            h.rule,
            h.category,
            h.signal,
            h.weight.to_bits(),
            h.span.0,
            h.span.1,
            h.suppressed
        );
    }
    line
}

#[test]
// Some 100,000 texts through both tiers: minutes unoptimised, seconds in release.
#[cfg_attr(
    debug_assertions,
    ignore = "release only: cargo test --release -p threadwarden-lab --test equivalence (scripts/test.sh runs it)"
)]
fn classifier_outputs_match_committed_digest() {
    let root = data_root();
    if !root.is_dir() {
        eprintln!(
            "classify equivalence: no dev data at {} (set TW_DEV_DATA); skipped",
            root.display()
        );
        return;
    }
    let sets = Sets::load(&root).expect("dev data loads");
    let mut groups = dev_groups(&sets);
    // The eval's speed messages, from the same pool.
    let pool = sets.speed_pool();
    for size in [50usize, 300, 2048] {
        groups.push((
            format!("sized/{size}"),
            sets::sized_messages(&pool, size, 400),
        ));
    }
    // Adversarial rewrites of every 7th text of the single-turn sets.
    let mut adv = Vec::new();
    for x in sets
        .harmful
        .iter()
        .chain(sets.benign.iter().flat_map(|(_, xs)| xs))
        .chain(sets.crisis.iter().flat_map(|(_, xs)| xs))
        .chain(sets.abuse_valid.iter().map(|(x, _)| x))
        .step_by(7)
    {
        let t: String = x.text.chars().take(400).collect();
        adv.extend(variants(&t));
    }
    groups.push(("adversarial".into(), adv));

    let full = Classifier::shared();
    let rules = Classifier::rules_only();
    let mut dump = String::new();
    let mut report = String::new();
    for (name, texts) in &groups {
        let mut h = Sha256::new();
        for (i, t) in texts.iter().enumerate() {
            let line = outputs(&full, &rules, t);
            h.update(line.as_bytes());
            h.update(b"\n");
            if std::env::var_os("TW_EQUIV_DUMP").is_some() {
                let _ = writeln!(dump, "{name}\t{i}\t{line}");
            }
        }
        let _ = writeln!(report, "{name} {} {:x}", texts.len(), h.finalize());
    }
    if let Some(p) = std::env::var_os("TW_EQUIV_DUMP") {
        std::fs::write(p, &dump).expect("write dump");
    }
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(DIGEST_PATH);
    if std::env::var_os("TW_EQUIV_UPDATE").is_some() {
        std::fs::write(&path, &report).expect("write digest");
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_default();
    let diff: Vec<&str> = report
        .lines()
        .filter(|l| !expected.lines().any(|e| e == *l))
        .collect();
    assert!(
        diff.is_empty() && expected.lines().count() == report.lines().count(),
        "classifier outputs changed for groups:\n{}\n(expected file {DIGEST_PATH})",
        diff.join("\n")
    );
}
