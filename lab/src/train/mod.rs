//! `threadwarden-lab train --data DIR`: trains the learned component (`classify::model`) and writes
//! the weights file versioned in the repository (`src/classify/model.bin`).
//!
//! Licence rule: it learns only from sets whose licence allows it (MIT, Apache-2.0, CC-BY-4.0)
//! and from the examples in `examples.rs`, written for this project. NC and "none stated" sets
//! are never read here.
//!
//! Per head (category): logistic regression by SGD over hashed word unigrams and bigrams of the
//! normalised text, class-balanced, fixed seed, then i8 quantisation. A head is adopted (merged
//! into `classify` by maximum) only when k-fold cross-validation (fixed seed) shows that the
//! rules merged with the model beat the rules alone on F1 at the shipped threshold, without
//! raising the false-positive rate on the benign negatives above 1%. Deterministic: same data,
//! same seed → identical bytes.

pub mod examples;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::eval::data::{DataError, at, read_jsonl, read_table};
use crate::eval::metrics;
use threadwarden::classify::model::{Head, Model, bucket, for_each_feature};
use threadwarden::classify::{Classifier, normalize};
use threadwarden::domain::Category;
use threadwarden::policy::Policy;

/// Hash table size: 2^16 buckets per head (64 KiB as i8: stays in L2, so a 2 KiB message
/// costs a few hundred cache hits, not misses).
pub const BITS: u32 = 16;
/// The default seed.
pub const SEED: u64 = 20_251_123;

/// One training example.
#[derive(Clone, Debug)]
pub struct Example {
    pub text: String,
    pub label: bool,
    /// A benign negative (counts toward the false-positive rate), not just "not this category".
    pub benign: bool,
}

/// The training data of one head.
#[derive(Clone, Debug)]
pub struct HeadData {
    pub category: Category,
    pub examples: Vec<Example>,
    /// The sets it was built from, for the report.
    pub sources: Vec<String>,
}

/// Training hyper-parameters.
#[derive(Clone, Copy, Debug)]
pub struct Params {
    pub bits: u32,
    pub seed: u64,
    pub epochs: usize,
    pub lr: f32,
    pub l2: f32,
    pub folds: usize,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            bits: BITS,
            seed: SEED,
            epochs: 6,
            lr: 0.2,
            l2: 1e-6,
            folds: 5,
        }
    }
}

/// A small deterministic PRNG (xorshift64*).
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn shuffle<T>(&mut self, xs: &mut [T]) {
        for i in (1..xs.len()).rev() {
            let j = (self.next() % (i as u64 + 1)) as usize;
            xs.swap(i, j);
        }
    }
}

/// The sorted, deduplicated buckets of a text.
pub fn features(text: &str, bits: u32) -> Vec<u32> {
    let n = normalize(text);
    let mut v = Vec::new();
    for_each_feature(&n, |h| v.push(bucket(h, bits) as u32));
    v.sort_unstable();
    v.dedup();
    v
}

/// Trains one head on `docs` (features, label); returns an unadopted, quantised head.
pub fn fit(category: Category, docs: &[(&[u32], bool)], p: &Params, seed: u64) -> Head {
    let size = 1usize << p.bits;
    let mut w = vec![0f32; size];
    let mut b = 0f32;
    let pos = docs.iter().filter(|d| d.1).count().max(1) as f32;
    let neg = docs.iter().filter(|d| !d.1).count().max(1) as f32;
    let n = docs.len() as f32;
    // Partly balanced: the positive class is up-weighted by the square root of the balancing
    // factor, which keeps precision on ordinary text (false positives cost more than misses).
    let (cw_pos, cw_neg) = ((n / (2.0 * pos)).sqrt(), (n / (2.0 * neg)).sqrt());
    let mut order: Vec<usize> = (0..docs.len()).collect();
    let mut rng = Rng::new(seed);
    for epoch in 0..p.epochs {
        rng.shuffle(&mut order);
        let lr = p.lr / (1.0 + epoch as f32);
        for &i in &order {
            let (f, y) = docs[i];
            let z: f32 = b + f.iter().map(|&k| w[k as usize]).sum::<f32>();
            let prob = 1.0 / (1.0 + (-z).exp());
            let g = (prob - if y { 1.0 } else { 0.0 }) * if y { cw_pos } else { cw_neg };
            for &k in f {
                let wk = &mut w[k as usize];
                *wk -= lr * (g + p.l2 * *wk);
            }
            b -= lr * g;
        }
    }
    let max = w.iter().fold(0f32, |m, x| m.max(x.abs()));
    let scale = if max > 0.0 { max / 127.0 } else { 1.0 };
    let weights = w
        .iter()
        .map(|x| (x / scale).round().clamp(-127.0, 127.0) as i8)
        .collect();
    Head {
        category,
        adopted: false,
        bias: b,
        scale,
        weights,
    }
}

/// Cross-validation figures of one head.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Cv {
    pub category: &'static str,
    pub n: usize,
    pub positives: usize,
    pub threshold: f32,
    pub rules: metrics::Prf,
    pub model: metrics::Prf,
    pub combined: metrics::Prf,
    pub rules_auprc: f64,
    pub model_auprc: f64,
    pub combined_auprc: f64,
    pub rules_benign_fpr: f64,
    pub combined_benign_fpr: f64,
    pub adopted: bool,
}

/// k-fold cross-validation of one head against the rules alone.
pub fn cross_validate(data: &HeadData, p: &Params, rules: &Classifier) -> Cv {
    let cat = data.category;
    let threshold = Policy::default().category(cat).threshold;
    let feats: Vec<Vec<u32>> = data
        .examples
        .iter()
        .map(|e| features(&e.text, p.bits))
        .collect();
    let rule_scores: Vec<f32> = data
        .examples
        .iter()
        .map(|e| rules.classify(&e.text).get(cat))
        .collect();
    let mut idx: Vec<usize> = (0..data.examples.len()).collect();
    Rng::new(p.seed ^ 0xcf).shuffle(&mut idx);
    let mut model_scores = vec![0f32; data.examples.len()];
    for fold in 0..p.folds {
        let train: Vec<(&[u32], bool)> = idx
            .iter()
            .enumerate()
            .filter(|(r, _)| r % p.folds != fold)
            .map(|(_, &i)| (feats[i].as_slice(), data.examples[i].label))
            .collect();
        let head = fit(cat, &train, p, p.seed + fold as u64);
        let m = Model {
            bits: p.bits,
            seed: p.seed,
            heads: vec![head],
        };
        for (r, &i) in idx.iter().enumerate() {
            if r % p.folds == fold {
                let mut out = [0f32; 1];
                m.score_into(&normalize(&data.examples[i].text), &mut out);
                model_scores[i] = out[0];
            }
        }
    }
    let labels: Vec<bool> = data.examples.iter().map(|e| e.label).collect();
    let pairs = |s: &dyn Fn(usize) -> f32| -> Vec<(f32, bool)> {
        (0..labels.len()).map(|i| (s(i), labels[i])).collect()
    };
    let r = pairs(&|i| rule_scores[i]);
    let m = pairs(&|i| model_scores[i]);
    let c = pairs(&|i| rule_scores[i].max(model_scores[i]));
    let benign_fpr = |s: &dyn Fn(usize) -> f32| {
        let b: Vec<usize> = (0..labels.len())
            .filter(|&i| data.examples[i].benign)
            .collect();
        metrics::rate(b.iter().filter(|&&i| s(i) >= threshold).count(), b.len())
    };
    let rules_m = metrics::prf(&r, threshold);
    let comb_m = metrics::prf(&c, threshold);
    let rules_fpr = benign_fpr(&|i| rule_scores[i]);
    let comb_fpr = benign_fpr(&|i| rule_scores[i].max(model_scores[i]));
    let adopted = comb_m.f1 > rules_m.f1 + MIN_F1_GAIN
        && comb_fpr <= MAX_BENIGN_FPR
        && comb_fpr <= rules_fpr + MAX_BENIGN_FPR_RISE;
    Cv {
        category: cat.name(),
        n: labels.len(),
        positives: labels.iter().filter(|&&y| y).count(),
        threshold,
        rules: rules_m,
        model: metrics::prf(&m, threshold),
        combined: comb_m,
        rules_auprc: metrics::auprc(&r),
        model_auprc: metrics::auprc(&m),
        combined_auprc: metrics::auprc(&c),
        rules_benign_fpr: rules_fpr,
        combined_benign_fpr: comb_fpr,
        adopted,
    }
}

/// Highest benign false-positive rate an adopted head may reach in cross-validation.
pub const MAX_BENIGN_FPR: f64 = 0.01;
/// Most an adopted head may raise the benign false-positive rate over the rules alone (a head
/// that fits its own positives but fires more on ordinary text does not generalise).
pub const MAX_BENIGN_FPR_RISE: f64 = 0.002;
/// Least F1 gain over the rules alone for adoption.
pub const MIN_F1_GAIN: f64 = 0.01;

/// Trains every head on all of its data, with `adopted` from cross-validation.
pub fn train(heads: &[HeadData], p: &Params, rules: &Classifier) -> (Model, Vec<Cv>) {
    let mut out = Vec::new();
    let mut cvs = Vec::new();
    for data in heads {
        let cv = cross_validate(data, p, rules);
        let feats: Vec<Vec<u32>> = data
            .examples
            .iter()
            .map(|e| features(&e.text, p.bits))
            .collect();
        let docs: Vec<(&[u32], bool)> = feats
            .iter()
            .zip(&data.examples)
            .map(|(f, e)| (f.as_slice(), e.label))
            .collect();
        let mut head = fit(data.category, &docs, p, p.seed);
        head.adopted = cv.adopted;
        out.push(head);
        cvs.push(cv);
    }
    (
        Model {
            bits: p.bits,
            seed: p.seed,
            heads: out,
        },
        cvs,
    )
}

fn ex(text: impl Into<String>, label: bool, benign: bool) -> Example {
    Example {
        text: text.into(),
        label,
        benign,
    }
}

/// Builds the heads' data from the permissively licensed sets under `root` (and the
/// project's own examples). Missing sets are skipped.
pub fn load(root: &Path) -> Result<Vec<HeadData>, DataError> {
    // Benign negatives: MT-Bench-101 user turns (Apache-2.0), Counsel Chat questions (MIT).
    let mut benign: Vec<String> = Vec::new();
    let mut sources = Vec::new();
    if let Some(rows) = read_jsonl(&at(root, "mt-bench-101/mtbench101.jsonl"))? {
        for r in &rows {
            for h in r
                .get("history")
                .and_then(Value::as_array)
                .map(Vec::as_slice)
                .unwrap_or(&[])
            {
                benign.push(
                    h.get("user")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string(),
                );
            }
        }
        sources.push("mt-bench-101 (Apache-2.0)".to_string());
    }
    if let Some(t) = read_table(&at(root, "counsel-chat/20200325_counsel_chat.csv"))? {
        let mut seen = std::collections::BTreeSet::new();
        for r in &t.rows {
            if seen.insert(t.get(r, "questionID").to_string()) {
                benign.push(format!(
                    "{} {}",
                    t.get(r, "questionTitle"),
                    t.get(r, "questionText")
                ));
            }
        }
        sources.push("counsel-chat (MIT)".to_string());
    }
    benign.extend(examples::BENIGN.iter().map(|s| s.to_string()));
    sources.push("own examples".to_string());

    // Abuse: ConvAbuse train (CC-BY-4.0). The valid split is kept for `eval`.
    let mut abuse = Vec::new();
    let mut other_chat = Vec::new();
    if let Some(t) = read_table(&at(root, "convabuse/ConvAbuseEMNLPtrain.csv"))? {
        for r in &t.rows {
            let (_, system) = crate::eval::sets_convabuse_label(&t, r);
            let text = t.get(r, "user").to_string();
            if system {
                abuse.push(text);
            } else {
                other_chat.push(text);
            }
        }
    }
    abuse.extend(examples::ABUSE.iter().map(|s| s.to_string()));

    // Cyber: CySecBench (MIT), HarmBench cybercrime (MIT), JBB malware (MIT).
    let mut cyber = Vec::new();
    if let Some(t) = read_table(&at(root, "cysecbench/cysecbench.csv"))? {
        cyber.extend(t.rows.iter().map(|r| t.get(r, "Prompt").to_string()));
    }
    if let Some(t) = read_table(&at(root, "harmbench/harmbench_behaviors_text_val.csv"))? {
        cyber.extend(
            t.rows
                .iter()
                .filter(|r| t.get(r, "SemanticCategory") == "cybercrime_intrusion")
                .map(|r| t.get(r, "Behavior").to_string()),
        );
    }
    if let Some(t) = read_table(&at(root, "jbb/jbb_harmful_behaviors.csv"))? {
        cyber.extend(
            t.rows
                .iter()
                .filter(|r| {
                    t.get(r, "Category") == "Malware/Hacking"
                        && t.get(r, "Behavior") != "Exam cheating"
                })
                .map(|r| t.get(r, "Goal").to_string()),
        );
    }
    cyber.extend(examples::CYBER.iter().map(|s| s.to_string()));

    let mut heads = Vec::new();
    if abuse.len() > 20 {
        let mut e: Vec<Example> = abuse.into_iter().map(|t| ex(t, true, false)).collect();
        e.extend(other_chat.iter().cloned().map(|t| ex(t, false, false)));
        e.extend(benign.iter().cloned().map(|t| ex(t, false, true)));
        let mut s = sources.clone();
        s.push("convabuse train (CC-BY-4.0)".into());
        heads.push(HeadData {
            category: Category::Abuse,
            examples: e,
            sources: s,
        });
    }
    if cyber.len() > 20 {
        let mut e: Vec<Example> = cyber.into_iter().map(|t| ex(t, true, false)).collect();
        e.extend(other_chat.iter().cloned().map(|t| ex(t, false, true)));
        e.extend(benign.iter().cloned().map(|t| ex(t, false, true)));
        let mut s = sources.clone();
        s.extend(
            [
                "cysecbench (MIT)",
                "harmbench val cybercrime (MIT)",
                "jbb malware (MIT)",
                "convabuse train negatives (CC-BY-4.0)",
            ]
            .map(String::from),
        );
        heads.push(HeadData {
            category: Category::CyberAttack,
            examples: e,
            sources: s,
        });
    }
    Ok(heads)
}

/// Flags of `threadwarden-lab train`.
#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    /// The data directory, laid out as `shared/data/dev/` (only permissive sets are read).
    #[arg(long, default_value = "../shared/data/dev")]
    pub data: PathBuf,
    /// Where to write the weights.
    #[arg(long, default_value = threadwarden::classify::MODEL_PATH)]
    pub out: PathBuf,
    /// The seed (shuffles, folds).
    #[arg(long, default_value_t = SEED)]
    pub seed: u64,
    /// Print the cross-validation report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `threadwarden-lab train` entry point.
pub fn main(args: TrainArgs) -> std::process::ExitCode {
    let heads = match load(&args.data) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let p = Params {
        seed: args.seed,
        ..Params::default()
    };
    let (model, cvs) = train(&heads, &p, &Classifier::rules_only());
    let bytes = model.to_bytes();
    if let Err(e) = std::fs::write(&args.out, &bytes) {
        eprintln!("error: writing {}: {e}", args.out.display());
        return std::process::ExitCode::FAILURE;
    }
    let report = json!({
        "out": args.out.display().to_string(), "bytes": bytes.len(), "seed": p.seed,
        "heads": heads.iter().map(|h| json!({"category": h.category.name(), "n": h.examples.len(), "sources": h.sources})).collect::<Vec<_>>(),
        "cv": cvs,
    });
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        println!(
            "wrote {} ({} bytes, seed {})",
            args.out.display(),
            bytes.len(),
            p.seed
        );
        println!(
            "| head | n | pos | thr | rules P/R/F1 | model P/R/F1 | rules∨model P/R/F1 | AUPRC rules/model/comb | benign FPR rules/comb | adopted |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|");
        for c in &cvs {
            println!(
                "| {} | {} | {} | {:.2} | {:.3}/{:.3}/{:.3} | {:.3}/{:.3}/{:.3} | {:.3}/{:.3}/{:.3} | {:.3}/{:.3}/{:.3} | {:.4}/{:.4} | {} |",
                c.category,
                c.n,
                c.positives,
                c.threshold,
                c.rules.precision,
                c.rules.recall,
                c.rules.f1,
                c.model.precision,
                c.model.recall,
                c.model.f1,
                c.combined.precision,
                c.combined.recall,
                c.combined.f1,
                c.rules_auprc,
                c.model_auprc,
                c.combined_auprc,
                c.rules_benign_fpr,
                c.combined_benign_fpr,
                c.adopted
            );
        }
    }
    std::process::ExitCode::SUCCESS
}
