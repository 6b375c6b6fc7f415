//! `threadwarden-lab train`: the semantic tier's heads, combiners and calibration, measured
//! honestly before anything is adopted.
//!
//! 1. The pool ([`pool`]): every permissively licensed dev set, mapped onto the heads, and the
//!    project's corpus; the NC and unlicensed sets are loaded too, but only ever measured.
//! 2. Features, once: the rules' scores (`Classifier` without the semantic tier) and the
//!    semantic vector of the normalised text (the product's own code).
//! 3. Grouped 5-fold out-of-fold logits over the trainable pool (the corpus is grouped by
//!    writing batch, dev sets by their natural units), from which the combiners are fitted and
//!    the operating points chosen on the benign pools (a flag-rate budget per head; never a
//!    recall target).
//! 4. Leave-one-dataset-out: for each trainable set, a network trained on every other set; its
//!    predictions on the held-out set. Every trainable example thus has an in-sample, a k-fold
//!    and a LODO prediction, and every head is reported all three ways.
//! 5. A head is adopted (its combined score replaces the rules' score in the product) only where
//!    LODO shows a gain: recall up by at least 0.02 at the operating point, with the benign flag
//!    rate no more than its budget above the rules'.
//! 6. The final network (all trainable data) and the heads file, with a manifest beside it (the
//!    model card: sets and licences, seed, command, parameters, figures at adoption).
//!
//! Deterministic for a given pool, seed and thread count.

pub mod fit;
pub mod pool;

use std::path::PathBuf;
use std::process::ExitCode;

use serde_json::{Value, json};

use threadwarden::classify::semantic::{
    self, DIMS, HEAD_COUNT, HEADS, Head, HeadParams, Heads, Semantic, SemanticScratch,
};
use threadwarden::classify::{Classifier, MODEL_BYTES, Model, normalize};
use threadwarden::domain::Scores;

use fit::{Budgets, Calibration, Net, Oof, Params, Row};
use pool::{Example, NEG, POS, Pool, Use};

/// Flags of `threadwarden-lab train`.
#[derive(clap::Args, Debug, Clone)]
pub struct TrainArgs {
    /// The dev data directory (the layout of `shared/data/dev/`).
    #[arg(long, default_value = "../shared/data/dev")]
    pub data: PathBuf,
    /// The project's corpus (JSONL batches; `labels/caia.jsonl` beside them).
    #[arg(long, default_value = "lab/corpus")]
    pub corpus: PathBuf,
    /// Where the heads file is written.
    #[arg(long, default_value = semantic::HEADS_PATH)]
    pub out: PathBuf,
    /// The full report as JSON (EVAL.md's tables are made from it).
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Hidden-layer width (0: linear heads). 64 measured as good as 128 in k-fold, at half
    /// the cost per message; linear heads were clearly worse (EVAL.md).
    #[arg(long, default_value_t = 64)]
    pub hidden: usize,
    /// Training epochs.
    #[arg(long, default_value_t = 12)]
    pub epochs: usize,
    /// Seed of every shuffle and initialisation.
    #[arg(long, default_value_t = 20_261_206)]
    pub seed: u64,
    /// Train the token table with the heads (row-wise Adagrad, pulled toward the distilled
    /// table); the tuned table replaces `embeddings.bin` when written.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub tune: bool,
    /// Step size of the table's Adagrad.
    #[arg(long, default_value_t = 0.1)]
    pub tune_lr: f32,
    /// Pull of a tuned row toward its distilled value.
    #[arg(long, default_value_t = 1e-3)]
    pub tune_l2: f32,
    /// The distilled table (`lab/distill/distill.py`).
    #[arg(long, default_value = "lab/distill/distilled.bin")]
    pub distilled: PathBuf,
    /// Where the product's table is written (tuned, or the distilled one as it is).
    #[arg(long, default_value = "src/classify/semantic/embeddings.bin")]
    pub table_out: PathBuf,
    /// Skip leave-one-dataset-out (nothing is adopted without it).
    #[arg(long)]
    pub no_lodo: bool,
    /// Write every example's set, labels, rules' scores and honest logits (JSONL, no text).
    #[arg(long)]
    pub dump: Option<PathBuf>,
    /// Worker threads for the folds.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
}

/// Precomputed inputs of every example.
pub struct Features {
    pub rules: Vec<Scores>,
    /// The unit-length mean of the distilled table's rows.
    pub vectors: Vec<[f32; DIMS]>,
    /// The WordPiece ids of the normalised text (for a tuned table).
    pub ids: Vec<Vec<u32>>,
    /// The vocabulary covers the text: the product applies the semantic tier to it.
    pub covered: Vec<bool>,
}

/// A trained network, with its tuned token table when the table was trained too.
pub struct Trained {
    pub net: Net,
    pub table: Option<Vec<f32>>,
}

/// The distilled table (`lab/distill/distilled.bin`), dequantised: the starting point of
/// tuning, and the product's table when tuning is off.
pub fn distilled_table(path: &std::path::Path) -> Result<Vec<f32>, String> {
    let b = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if b.len() < 16 || &b[..8] != b"TWSE1\0\0\0" {
        return Err(format!("{}: not a token table", path.display()));
    }
    let rows = u32::from_le_bytes([b[8], b[9], b[10], b[11]]) as usize;
    let scales: Vec<f32> = b[16..16 + rows * 4]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let q = &b[16 + rows * 4..];
    if q.len() != rows * DIMS {
        return Err(format!("{}: truncated table", path.display()));
    }
    Ok((0..rows * DIMS)
        .map(|i| scales[i / DIMS] * f32::from(q[i] as i8))
        .collect())
}

/// A table as the product stores it: int8 rows with one scale each (same format as distilled).
pub fn quantise(table: &[f32]) -> Vec<u8> {
    let rows = table.len() / DIMS;
    let mut out = Vec::with_capacity(16 + rows * (4 + DIMS));
    out.extend_from_slice(b"TWSE1\0\0\0");
    out.extend_from_slice(&(rows as u32).to_le_bytes());
    out.extend_from_slice(&(DIMS as u32).to_le_bytes());
    let mut q = Vec::with_capacity(rows * DIMS);
    for row in table.chunks_exact(DIMS) {
        let max = row.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let scale = if max > 0.0 { max / 127.0 } else { 1.0 };
        out.extend_from_slice(&scale.to_le_bytes());
        q.extend(
            row.iter()
                .map(|v| (v / scale).round().clamp(-127.0, 127.0) as i8 as u8),
        );
    }
    out.extend_from_slice(&q);
    out
}

/// `quantise` and back: the values the product will compute with.
pub fn requantised(table: &[f32]) -> Vec<f32> {
    let mut out = Vec::with_capacity(table.len());
    for row in table.chunks_exact(DIMS) {
        let max = row.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let scale = if max > 0.0 { max / 127.0 } else { 1.0 };
        out.extend(
            row.iter()
                .map(|v| (v / scale).round().clamp(-127.0, 127.0) * scale),
        );
    }
    out
}

/// The rules as the product runs them before the semantic tier (lexicon, rules, adopted n-gram
/// heads).
pub fn rules_classifier() -> Classifier {
    let model = Model::from_bytes(MODEL_BYTES)
        .expect("embedded model.bin")
        .adopted();
    Classifier::rules_only().with_model(Some(model))
}

/// Features of every example, computed on `threads` threads.
pub fn features(examples: &[Example], threads: usize) -> Features {
    let rules = rules_classifier();
    let sem = Semantic::without_heads();
    let n = examples.len();
    let mut out_rules = vec![Scores::default(); n];
    let mut out_vecs = vec![[0.0f32; DIMS]; n];
    let mut out_ids = vec![Vec::new(); n];
    let mut out_covered = vec![false; n];
    let chunk = n.div_ceil(threads.max(1)).max(1);
    std::thread::scope(|s| {
        for ((((ex, r), v), ids), covered) in examples
            .chunks(chunk)
            .zip(out_rules.chunks_mut(chunk))
            .zip(out_vecs.chunks_mut(chunk))
            .zip(out_ids.chunks_mut(chunk))
            .zip(out_covered.chunks_mut(chunk))
        {
            let (rules, sem) = (&rules, &sem);
            s.spawn(move || {
                let mut scratch = SemanticScratch::default();
                let mut tok = threadwarden::classify::semantic::TokenizerScratch::default();
                for ((((e, r), v), ids), covered) in ex.iter().zip(r).zip(v).zip(ids).zip(covered) {
                    *r = rules.classify(&e.text);
                    let normalized = normalize(&e.text);
                    *covered = sem.vector(&normalized, &mut scratch, v).covered();
                    sem.tokenizer().encode(&normalized, &mut tok, ids);
                    semantic::clip_pieces(ids);
                }
            });
        }
    });
    Features {
        rules: out_rules,
        vectors: out_vecs,
        ids: out_ids,
        covered: out_covered,
    }
}

/// Example weights: each set's total weight grows as the square root of its size, so that a
/// large set does not drown the others.
fn weights(pool: &Pool) -> Vec<f32> {
    let mut counts = vec![0usize; pool.sets.len()];
    for e in &pool.examples {
        counts[e.set] += 1;
    }
    pool.examples
        .iter()
        .map(|e| (2000.0 / counts[e.set].max(1) as f32).min(1.0).sqrt())
        .collect()
}

/// The fold of a group (0..k).
fn fold_of(group: u64, k: usize, seed: u64) -> usize {
    let mut x = group ^ seed.rotate_left(17);
    x = (x ^ (x >> 33)).wrapping_mul(0xff51_afd7_ed55_8ccd);
    x = (x ^ (x >> 33)).wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    ((x ^ (x >> 33)) % k as u64) as usize
}

struct Ctx<'a> {
    pool: &'a Pool,
    feats: &'a Features,
    weights: &'a [f32],
    params: Params,
    tuning: Option<fit::Tuning>,
    table0: &'a [f32],
}

impl Ctx<'_> {
    fn train(&self, idx: &[usize], seed: u64) -> Trained {
        // Only text the product applies the tier to.
        let rows: Vec<Row> = idx
            .iter()
            .filter(|&&i| self.feats.covered[i])
            .map(|&i| Row {
                x: &self.feats.vectors[i],
                ids: &self.feats.ids[i],
                labels: &self.pool.examples[i].labels,
                weight: self.weights[i],
            })
            .collect();
        let p = Params {
            seed,
            ..self.params
        };
        match self.tuning {
            Some(t) => {
                let mut table = self.table0.to_vec();
                let net = fit::train(&rows, &p, Some((&mut table, t)));
                Trained {
                    net,
                    // What the product will hold: int8 rows.
                    table: Some(requantised(&table)),
                }
            }
            None => Trained {
                net: fit::train(&rows, &p, None),
                table: None,
            },
        }
    }

    fn logits(&self, m: &Trained, idx: &[usize]) -> Vec<(usize, [f32; HEAD_COUNT])> {
        let mut scratch = Vec::new();
        let mut v = [0.0f32; DIMS];
        idx.iter()
            .map(|&i| {
                let x = match &m.table {
                    Some(t) => {
                        fit::vector_of(t, &self.feats.ids[i], &mut v);
                        &v
                    }
                    None => &self.feats.vectors[i],
                };
                (i, m.net.logits(x, &mut scratch))
            })
            .collect()
    }

    fn oof<'b>(&'b self, logits: &'b [[f32; HEAD_COUNT]], idx: &[usize]) -> Vec<Oof<'b>> {
        idx.iter()
            .filter(|&&i| self.feats.covered[i])
            .map(|&i| {
                let e = &self.pool.examples[i];
                Oof {
                    rules: &self.feats.rules[i],
                    logits: logits[i],
                    labels: &e.labels,
                    weight: self.weights[i],
                    set: e.set,
                    benign: e.benign,
                    lookalike: self.pool.sets[e.set].lookalike,
                }
            })
            .collect()
    }
}

/// A fold to run: the logits it predicts, by example.
type Job<'j> = Box<dyn FnOnce() -> Vec<(usize, [f32; HEAD_COUNT])> + Send + 'j>;

/// Runs `jobs` on `threads` workers, results in job order.
fn parallel<T: Send>(threads: usize, jobs: Vec<Box<dyn FnOnce() -> T + Send + '_>>) -> Vec<T> {
    let n = jobs.len();
    let queue = std::sync::Mutex::new(jobs.into_iter().enumerate().collect::<Vec<_>>());
    let results = std::sync::Mutex::new((0..n).map(|_| None).collect::<Vec<Option<T>>>());
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| {
                loop {
                    let job = queue.lock().unwrap().pop();
                    let Some((i, f)) = job else { break };
                    let r = f();
                    results.lock().unwrap()[i] = Some(r);
                }
            });
        }
    });
    results
        .into_inner()
        .unwrap()
        .into_iter()
        .map(|r| r.expect("every job ran"))
        .collect()
}

/// The scores the product would give: the rules' scores merged with the heads' logits.
/// The scores the product gives: the rules' scores merged with the heads' logits where the
/// vocabulary covers the text, the rules' alone elsewhere.
fn merged(rules: &Scores, logits: &[f32; HEAD_COUNT], heads: &Heads, covered: bool) -> Scores {
    let mut s = *rules;
    if covered {
        semantic::merge(heads, logits, &mut s, None);
    }
    s
}

/// A head's score in final scores.
fn head_score(s: &Scores, h: Head) -> f32 {
    fit::rule_score(s, h)
}

/// The head's decision threshold on the policy scale (the last knot's score).
fn threshold(h: Head) -> f32 {
    *fit::policy_points(h).last().expect("a point")
}

/// Per-head figures of one prediction source over a set of examples.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
struct HeadFigures {
    positives: usize,
    recall: f64,
    /// Share of benign texts flagged, each set weighted equally.
    benign_flag_rate: f64,
    benign_sets: usize,
}

fn head_figures(pool: &Pool, idx: &[usize], h: Head, score: impl Fn(usize) -> f32) -> HeadFigures {
    let k = h.index();
    let t = threshold(h);
    let (mut pos, mut hit) = (0usize, 0usize);
    let mut per_set: std::collections::BTreeMap<usize, (usize, usize)> = Default::default();
    for &i in idx {
        let e = &pool.examples[i];
        if e.labels[k] == POS {
            pos += 1;
            hit += usize::from(score(i) >= t);
        } else if e.benign && e.labels[k] == NEG {
            let c = per_set.entry(e.set).or_default();
            c.0 += 1;
            c.1 += usize::from(score(i) >= t);
        }
    }
    let rates: Vec<f64> = per_set
        .values()
        .map(|(n, f)| *f as f64 / *n as f64)
        .collect();
    HeadFigures {
        positives: pos,
        recall: if pos > 0 {
            hit as f64 / pos as f64
        } else {
            f64::NAN
        },
        benign_flag_rate: if rates.is_empty() {
            f64::NAN
        } else {
            rates.iter().sum::<f64>() / rates.len() as f64
        },
        benign_sets: rates.len(),
    }
}

/// What a set's examples get, by tier: the figure that matters for its kind.
#[derive(Clone, Debug, Default, serde::Serialize)]
struct SetFigures {
    set: String,
    licence: &'static str,
    #[serde(rename = "use")]
    usage: Option<Use>,
    n: usize,
    /// Harmful requests flagged (any category at its threshold): rules, semantic alone, combined.
    harm: Option<[f64; 3]>,
    harm_n: usize,
    /// People at risk routed to crisis support (crisis_self ≥ the crisis threshold).
    crisis: Option<[f64; 3]>,
    crisis_n: usize,
    /// Crisis suspicion or better (≥ the suspect threshold), combined only.
    crisis_suspected: Option<f64>,
    /// Benign texts flagged (any category).
    benign_flagged: Option<[f64; 3]>,
    benign_n: usize,
    /// Texts of people not at risk (crisis label negative: benign texts, depression posts)
    /// routed to crisis support.
    benign_crisis: Option<[f64; 3]>,
    not_at_risk_n: usize,
}

/// Per-set figures for `idx` (all one set) under the three tiers.
fn set_figures(
    ctx: &Ctx,
    set: usize,
    idx: &[usize],
    logits: &[[f32; HEAD_COUNT]],
    heads: &Heads,
    semantic_points: &[f32],
) -> SetFigures {
    let info = &ctx.pool.sets[set];
    let policy = threadwarden::policy::Policy::default();
    let crisis_t = policy.thresholds.crisis;
    let suspect_t = policy.thresholds.crisis_suspect;
    let sem_flag = |l: &[f32; HEAD_COUNT]| {
        HEADS.iter().any(|h| {
            matches!(h, Head::AnyHarm | Head::Category(_))
                && semantic::sigmoid(l[h.index()]) >= semantic_points[h.index()]
        })
    };
    let sem_crisis = |l: &[f32; HEAD_COUNT]| {
        let k = Head::CrisisSelf.index();
        semantic::sigmoid(l[k]) >= semantic_points[k]
    };
    let mut f = SetFigures {
        set: info.name.clone(),
        licence: info.licence,
        usage: Some(info.usage),
        n: idx.len(),
        ..SetFigures::default()
    };
    let (mut harm, mut crisis, mut benign, mut benign_crisis) =
        ([0usize; 3], [0usize; 3], [0usize; 3], [0usize; 3]);
    let mut suspected = 0usize;
    for &i in idx {
        let e = &ctx.pool.examples[i];
        let rules = &ctx.feats.rules[i];
        let l = &logits[i];
        let covered = ctx.feats.covered[i];
        let comb = merged(rules, l, heads, covered);
        let flags = [
            fit::flagged(rules),
            covered && sem_flag(l),
            fit::flagged(&comb),
        ];
        let routes = [
            rules.crisis_self >= crisis_t,
            covered && sem_crisis(l),
            comb.crisis_self >= crisis_t,
        ];
        if e.labels[Head::AnyHarm.index()] == POS
            || HEADS
                .iter()
                .any(|h| matches!(h, Head::Category(_)) && e.labels[h.index()] == POS)
        {
            f.harm_n += 1;
            for t in 0..3 {
                harm[t] += usize::from(flags[t]);
            }
        }
        if e.labels[Head::CrisisSelf.index()] == POS {
            f.crisis_n += 1;
            for t in 0..3 {
                crisis[t] += usize::from(routes[t]);
            }
            suspected += usize::from(comb.crisis_self >= suspect_t);
        }
        if e.benign {
            f.benign_n += 1;
            for t in 0..3 {
                benign[t] += usize::from(flags[t]);
            }
        }
        if e.labels[Head::CrisisSelf.index()] == NEG && (e.benign || !e.labels.contains(&POS)) {
            f.not_at_risk_n += 1;
            for t in 0..3 {
                benign_crisis[t] += usize::from(routes[t]);
            }
        }
    }
    let rate = |c: [usize; 3], n: usize| (n > 0).then(|| c.map(|x| x as f64 / n as f64));
    f.harm = rate(harm, f.harm_n);
    f.crisis = rate(crisis, f.crisis_n);
    f.crisis_suspected = (f.crisis_n > 0).then(|| suspected as f64 / f.crisis_n as f64);
    f.benign_flagged = rate(benign, f.benign_n);
    f.benign_crisis = rate(benign_crisis, f.not_at_risk_n);
    f
}

fn heads_with(net: &Net, calib: &Calibration, adopted: Option<&[bool]>) -> Heads {
    let params: Vec<HeadParams> = calib
        .params
        .iter()
        .enumerate()
        .map(|(k, p)| HeadParams {
            adopted: adopted.is_none_or(|a| a[k]),
            ..p.clone()
        })
        .collect();
    net.as_heads(params)
}

/// Runs the whole procedure and writes the heads; returns the report.
pub fn run(args: &TrainArgs) -> Result<Value, String> {
    let started = std::time::Instant::now();
    let pool = Pool::load(&args.data, &args.corpus).map_err(|e| e.to_string())?;
    if pool.examples.is_empty() {
        return Err(format!(
            "no examples under {} or {}",
            args.data.display(),
            args.corpus.display()
        ));
    }
    eprintln!(
        "pool: {} examples in {} sets ({} trainable); missing: {:?}",
        pool.examples.len(),
        pool.sets.len(),
        pool.examples
            .iter()
            .filter(|e| pool.sets[e.set].usage == Use::Train)
            .count(),
        pool.missing
    );
    let feats = features(&pool.examples, args.threads);
    eprintln!("features: {:.1}s", started.elapsed().as_secs_f64());
    let weights = weights(&pool);
    let params = Params {
        hidden: args.hidden,
        epochs: args.epochs,
        seed: args.seed,
        ..Params::default()
    };
    let table0 = distilled_table(&args.distilled)?;
    let tuning = args.tune.then_some(fit::Tuning {
        lr: args.tune_lr,
        l2: args.tune_l2,
    });
    let ctx = Ctx {
        pool: &pool,
        feats: &feats,
        weights: &weights,
        params,
        tuning,
        table0: &table0,
    };
    let budgets = Budgets::default();
    let n = pool.examples.len();
    let trainable: Vec<usize> = (0..n)
        .filter(|&i| pool.sets[pool.examples[i].set].usage == Use::Train)
        .collect();
    let measure_only: Vec<usize> = (0..n)
        .filter(|&i| pool.sets[pool.examples[i].set].usage == Use::MeasureOnly)
        .collect();

    // Grouped k-fold: out-of-fold logits for every trainable example.
    const K: usize = 5;
    let mut jobs: Vec<Job> = Vec::new();
    for fold in 0..K {
        let (train, test): (Vec<usize>, Vec<usize>) = trainable
            .iter()
            .partition(|&&i| fold_of(pool.examples[i].group, K, args.seed) != fold);
        let ctx = &ctx;
        let seed = args.seed + fold as u64 + 1;
        jobs.push(Box::new(move || {
            let m = ctx.train(&train, seed);
            ctx.logits(&m, &test)
        }));
    }
    let mut kfold = vec![[0.0f32; HEAD_COUNT]; n];
    for part in parallel(args.threads, jobs) {
        for (i, l) in part {
            kfold[i] = l;
        }
    }
    eprintln!("k-fold: {:.1}s", started.elapsed().as_secs_f64());
    // Leave one dataset out: a network that never saw the set predicts it.
    let train_sets: Vec<usize> = (0..pool.sets.len())
        .filter(|&s| pool.sets[s].usage == Use::Train)
        .collect();
    let mut lodo = vec![[0.0f32; HEAD_COUNT]; n];
    if !args.no_lodo {
        let mut jobs: Vec<Job> = Vec::new();
        for &s in &train_sets {
            let (train, test): (Vec<usize>, Vec<usize>) =
                trainable.iter().partition(|&&i| pool.examples[i].set != s);
            let ctx = &ctx;
            let seed = args.seed + 100 + s as u64;
            jobs.push(Box::new(move || {
                let m = ctx.train(&train, seed);
                ctx.logits(&m, &test)
            }));
        }
        for part in parallel(args.threads, jobs) {
            for (i, l) in part {
                lodo[i] = l;
            }
        }
        eprintln!("LODO: {:.1}s", started.elapsed().as_secs_f64());
    }
    // The honest prediction of every trainable example: a dev set's rows from the network that
    // never saw the set, the corpus's rows from the one that never saw their writing batch.
    // Combiners and operating points are fitted on these, so the thresholds are chosen on
    // benign text of a kind the network had not seen (a flag-rate budget, never a recall).
    let corpus_row = |i: usize| pool.sets[pool.examples[i].set].name.starts_with("corpus:");
    let honest: Vec<[f32; HEAD_COUNT]> = (0..n)
        .map(|i| {
            if args.no_lodo || corpus_row(i) {
                kfold[i]
            } else {
                lodo[i]
            }
        })
        .collect();
    let calib = fit::calibrate(&ctx.oof(&honest, &trainable), &budgets);
    // Per held-out set, the same fitted without that set's rows.
    let lodo_calib: Vec<(usize, Calibration)> = if args.no_lodo {
        Vec::new()
    } else {
        train_sets
            .iter()
            .map(|&s| {
                let rest: Vec<usize> = trainable
                    .iter()
                    .copied()
                    .filter(|&i| pool.examples[i].set != s)
                    .collect();
                (s, fit::calibrate(&ctx.oof(&honest, &rest), &budgets))
            })
            .collect()
    };

    // The final network on every trainable example.
    let trained = ctx.train(&trainable, args.seed);
    let mut insample = vec![[0.0f32; HEAD_COUNT]; n];
    for (i, l) in ctx.logits(&trained, &(0..n).collect::<Vec<_>>()) {
        insample[i] = l;
    }
    let net = trained.net.clone();
    if let Some(path) = &args.dump {
        // Per example (no text): set, labels, rules' scores, and the honest logits of a
        // trainable example or the final model's of a measure-only one.
        let mut out = String::new();
        for (i, e) in pool.examples.iter().enumerate() {
            let train = pool.sets[e.set].usage == Use::Train;
            let l = if train { honest[i] } else { insample[i] };
            let rules: Vec<f32> = HEADS
                .iter()
                .map(|h| fit::rule_score(&feats.rules[i], *h))
                .collect();
            out.push_str(&json!({"set": pool.sets[e.set].name, "train": train, "benign": e.benign, "labels": e.labels.to_vec(), "rules": rules, "logits": l.to_vec()}).to_string());
            out.push('\n');
        }
        std::fs::write(path, out).map_err(|e| e.to_string())?;
    }
    eprintln!("final: {:.1}s", started.elapsed().as_secs_f64());

    let all_heads = heads_with(&net, &calib, None);
    let calib_of = |s: usize| {
        lodo_calib
            .iter()
            .find(|(x, _)| *x == s)
            .map(|(_, c)| c)
            .unwrap_or(&calib)
    };

    // Per head, three ways: combined scores under in-sample, k-fold and LODO predictions.
    let by_set = |idx: &[usize]| {
        let mut m: std::collections::BTreeMap<usize, Vec<usize>> = Default::default();
        for &i in idx {
            m.entry(pool.examples[i].set).or_default().push(i);
        }
        m
    };
    // The per-head LODO column: the honest predictions (a corpus area is not held out whole
    // here: leave-one-area-out is in the per-set table).
    let lodo_scores: Vec<Scores> = (0..n)
        .map(|i| {
            let s = pool.examples[i].set;
            let c = if corpus_row(i) { &calib } else { calib_of(s) };
            merged(
                &feats.rules[i],
                &honest[i],
                &heads_with(&net, c, None),
                feats.covered[i],
            )
        })
        .collect();
    let mut head_rows = Vec::new();
    let mut adopted = [false; HEAD_COUNT];
    for h in HEADS {
        let rules = head_figures(&pool, &trainable, h, |i| head_score(&feats.rules[i], h));
        let ins = head_figures(&pool, &trainable, h, |i| {
            head_score(
                &merged(&feats.rules[i], &insample[i], &all_heads, feats.covered[i]),
                h,
            )
        });
        let kf = head_figures(&pool, &trainable, h, |i| {
            head_score(
                &merged(&feats.rules[i], &kfold[i], &all_heads, feats.covered[i]),
                h,
            )
        });
        let lo = head_figures(&pool, &trainable, h, |i| head_score(&lodo_scores[i], h));
        let budget = *fit::budgets_of(h, &budgets).last().unwrap();
        let gain = lo.recall - rules.recall;
        let rise = lo.benign_flag_rate - rules.benign_flag_rate;
        // The benign flag rate here averages both pools' sets: allow the rise their budgets
        // average to.
        let allowed = (budget.ordinary + budget.lookalike) / 2.0;
        let adopt = !args.no_lodo && gain >= 0.02 && rise <= allowed;
        adopted[h.index()] = adopt;
        head_rows.push(json!({
            "head": h.name(),
            "positives": rules.positives,
            "rules": rules,
            "in_sample": ins,
            "k_fold": kf,
            "lodo": lo,
            "lodo_recall_gain": gain,
            "lodo_benign_flag_rise": rise,
            "budget": budget,
            "allowed_benign_rise": allowed,
            "adopted": adopt,
        }));
    }
    let final_heads = heads_with(&net, &calib, Some(&adopted));

    // Per set: LODO for the trainable sets, the final model for the measure-only ones.
    let mut lodo_sets = Vec::new();
    if !args.no_lodo {
        for (s, idx) in by_set(&trainable) {
            let h = heads_with(&net, calib_of(s), Some(&adopted));
            lodo_sets.push(set_figures(
                &ctx,
                s,
                &idx,
                &lodo,
                &h,
                &calib_of(s).semantic_points,
            ));
        }
    }
    let mut kfold_sets = Vec::new();
    let mut insample_sets = Vec::new();
    for (s, idx) in by_set(&trainable) {
        kfold_sets.push(set_figures(
            &ctx,
            s,
            &idx,
            &kfold,
            &final_heads,
            &calib.semantic_points,
        ));
        insample_sets.push(set_figures(
            &ctx,
            s,
            &idx,
            &insample,
            &final_heads,
            &calib.semantic_points,
        ));
    }
    let mut never = Vec::new();
    for (s, idx) in by_set(&measure_only) {
        never.push(set_figures(
            &ctx,
            s,
            &idx,
            &insample,
            &final_heads,
            &calib.semantic_points,
        ));
    }

    let bytes = final_heads.to_bytes();
    std::fs::write(&args.out, &bytes).map_err(|e| format!("{}: {e}", args.out.display()))?;
    let q = quantise(trained.table.as_deref().unwrap_or(&table0));
    std::fs::write(&args.table_out, &q)
        .map_err(|e| format!("{}: {e}", args.table_out.display()))?;
    let table_sha = sha256_hex(&q);
    let manifest = json!({
        "format_version": 1,
        "what": "threadwarden's semantic heads: hidden layer, per-head logits, combiners, calibration knots",
        "embeddings": "src/classify/semantic/manifest.json",
        "command": format!(
            "threadwarden-lab train --data {} --corpus {} --hidden {} --epochs {} --seed {} --threads {}",
            args.data.display(), args.corpus.display(), args.hidden, args.epochs, args.seed, args.threads
        ),
        "params": params,
        "tuning": tuning,
        "table": json!({"path": args.table_out.display().to_string(), "sha256": table_sha,
            "from": args.distilled.display().to_string(), "tuned": args.tune}),
        "budgets": budgets,
        "sha256": sha256_hex(&bytes),
        "trained_on": pool.sets.iter().enumerate().filter(|(_, s)| s.usage == Use::Train).map(|(i, s)| json!({
            "set": s.name, "licence": s.licence, "what": s.what,
            "examples": pool.of(i).count(),
        })).collect::<Vec<_>>(),
        "never_trained_on": pool.sets.iter().enumerate().filter(|(_, s)| s.usage == Use::MeasureOnly).map(|(i, s)| json!({
            "set": s.name, "licence": s.licence, "examples": pool.of(i).count(),
        })).collect::<Vec<_>>(),
        "heads": head_rows,
        "adopted": HEADS.iter().filter(|h| adopted[h.index()]).map(|h| h.name()).collect::<Vec<_>>(),
    });
    let manifest_path = args.out.with_extension("manifest.json");
    std::fs::write(
        &manifest_path,
        serde_json::to_string_pretty(&manifest).unwrap() + "\n",
    )
    .map_err(|e| format!("{}: {e}", manifest_path.display()))?;
    let report = json!({
        "manifest": manifest,
        "lodo_sets": lodo_sets,
        "kfold_sets": kfold_sets,
        "in_sample_sets": insample_sets,
        "never_trained_on": never,
        "seconds": started.elapsed().as_secs_f64(),
    });
    Ok(report)
}

fn sha256_hex(b: &[u8]) -> String {
    use sha2::Digest;
    format!("{:x}", sha2::Sha256::digest(b))
}

fn pct(x: Option<f64>) -> String {
    match x {
        Some(v) if v.is_finite() => format!("{:.1}%", v * 100.0),
        _ => "–".into(),
    }
}

fn tiers(x: &Value) -> String {
    match x.as_array() {
        Some(a) if a.len() == 3 => a
            .iter()
            .map(|v| pct(v.as_f64()))
            .collect::<Vec<_>>()
            .join(" / "),
        _ => "–".into(),
    }
}

/// The report as Markdown tables (EVAL.md's generalisation section).
pub fn markdown(report: &Value) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "### Per head: in-sample, k-fold, leave-one-dataset-out (combined tier; rules alone beside)\n"
    );
    let _ = writeln!(
        out,
        "| head | positives | rules recall / benign flag | in-sample | k-fold | LODO | adopted |"
    );
    let _ = writeln!(out, "|---|---:|---|---|---|---|---|");
    for h in report["manifest"]["heads"].as_array().into_iter().flatten() {
        let f = |k: &str| {
            format!(
                "{} / {}",
                pct(h[k]["recall"].as_f64()),
                pct(h[k]["benign_flag_rate"].as_f64())
            )
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} |",
            h["head"].as_str().unwrap_or(""),
            h["positives"],
            f("rules"),
            f("in_sample"),
            f("k_fold"),
            f("lodo"),
            if h["adopted"].as_bool() == Some(true) {
                "yes"
            } else {
                "no"
            }
        );
    }
    for (title, key) in [
        (
            "Leave-one-dataset-out, per held-out set (rules / semantic alone / combined)",
            "lodo_sets",
        ),
        (
            "Never trained on (final model; rules / semantic alone / combined)",
            "never_trained_on",
        ),
    ] {
        let _ = writeln!(out, "\n### {title}\n");
        let _ = writeln!(
            out,
            "| set | licence | n | harmful flagged | at risk routed to crisis | suspected or routed | benign flagged | not at risk, routed to crisis |"
        );
        let _ = writeln!(out, "|---|---|---:|---|---|---|---|---|");
        for s in report[key].as_array().into_iter().flatten() {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                s["set"].as_str().unwrap_or(""),
                s["licence"].as_str().unwrap_or(""),
                s["n"],
                if s["harm_n"].as_u64() > Some(0) {
                    format!("{} (n={})", tiers(&s["harm"]), s["harm_n"])
                } else {
                    "–".into()
                },
                if s["crisis_n"].as_u64() > Some(0) {
                    format!("{} (n={})", tiers(&s["crisis"]), s["crisis_n"])
                } else {
                    "–".into()
                },
                pct(s["crisis_suspected"].as_f64()),
                if s["benign_n"].as_u64() > Some(0) {
                    format!("{} (n={})", tiers(&s["benign_flagged"]), s["benign_n"])
                } else {
                    "–".into()
                },
                tiers(&s["benign_crisis"]),
            );
        }
    }
    out
}

/// `threadwarden-lab train` entry point.
pub fn main(args: TrainArgs) -> ExitCode {
    match run(&args) {
        Ok(report) => {
            if let Some(p) = &args.report
                && let Err(e) = std::fs::write(p, serde_json::to_string_pretty(&report).unwrap())
            {
                eprintln!("error: {}: {e}", p.display());
                return ExitCode::FAILURE;
            }
            print!("{}", markdown(&report));
            eprintln!(
                "wrote {} and its manifest; adopted: {}",
                args.out.display(),
                report["manifest"]["adopted"]
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
