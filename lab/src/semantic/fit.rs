//! Fitting the semantic tier: the shared hidden layer and head logits (multi-task logistic
//! loss with unknown labels masked, Adam, fixed seed), the per-head combiner over the rules'
//! score and the semantic logits, and the calibration knots chosen on benign pools.
//!
//! Deterministic: the same examples, parameters and seed give the same bytes.

use threadwarden::classify::semantic::{DIMS, HEAD_COUNT, HEADS, Head, HeadParams, Heads, Knot};
use threadwarden::domain::{Category, Scores};
use threadwarden::policy::Policy;

use super::pool::{Label, NEG, POS};

/// Hyper-parameters of one fit.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct Params {
    /// Width of the hidden layer; 0 for linear heads.
    pub hidden: usize,
    pub epochs: usize,
    pub lr: f32,
    pub weight_decay: f32,
    pub batch: usize,
    pub seed: u64,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            hidden: 64,
            epochs: 12,
            lr: 2e-3,
            weight_decay: 1e-4,
            batch: 64,
            seed: 20_261_206,
        }
    }
}

/// A flag-rate budget on the two benign pools: the share of ordinary benign text (chat,
/// instructions, command descriptions) and of look-alike benign text (the corpus's hard
/// negatives, the Caia set, HateCheck's non-hateful cases, sad Reddit comments) that an
/// operating point may flag. The point satisfies both.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct Budget {
    pub ordinary: f64,
    pub lookalike: f64,
}

/// Flag-rate budgets per kind of head and operating point. Chosen for what a flag costs: a
/// REDIRECT of a benign request is a refusal; crisis support on a sad message is an offer of
/// help; suspicion only stops an END.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct Budgets {
    pub category: Budget,
    pub any_harm: Budget,
    pub crisis: Budget,
    pub crisis_suspect: Budget,
    pub third_party: Budget,
}

impl Default for Budgets {
    fn default() -> Self {
        Budgets {
            category: Budget {
                ordinary: 0.0015,
                lookalike: 0.015,
            },
            any_harm: Budget {
                ordinary: 0.003,
                lookalike: 0.03,
            },
            crisis: Budget {
                ordinary: 0.015,
                lookalike: 0.35,
            },
            crisis_suspect: Budget {
                ordinary: 0.08,
                lookalike: 0.9,
            },
            third_party: Budget {
                ordinary: 0.005,
                lookalike: 0.05,
            },
        }
    }
}

/// The crisis-suspect threshold the suspect knot maps onto (the policy's default).
pub fn suspect_threshold() -> f32 {
    Policy::default().thresholds.crisis_suspect
}

/// One training row: its vector (from the distilled table), token ids, labels and weight.
pub struct Row<'a> {
    pub x: &'a [f32; DIMS],
    pub ids: &'a [u32],
    pub labels: &'a [Label; HEAD_COUNT],
    pub weight: f32,
}

/// Fine-tuning of the token table during training: row-wise Adagrad on the rows a batch
/// touches, pulled back toward the distilled values by an L2 term.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct Tuning {
    pub lr: f32,
    pub l2: f32,
}

/// The unit-length mean of `ids`' rows of `table` (what the product computes).
pub fn vector_of(table: &[f32], ids: &[u32], out: &mut [f32; DIMS]) {
    *out = [0.0; DIMS];
    let rows = table.len() / DIMS;
    for &id in ids {
        let id = id as usize;
        if id < rows {
            for (o, t) in out.iter_mut().zip(&table[id * DIMS..(id + 1) * DIMS]) {
                *o += t;
            }
        }
    }
    let norm = out.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        out.iter_mut().for_each(|x| *x /= norm);
    }
}

/// A small deterministic PRNG (xorshift64*).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
    pub fn shuffle<T>(&mut self, xs: &mut [T]) {
        for i in (1..xs.len()).rev() {
            let j = (self.next_u64() % (i as u64 + 1)) as usize;
            xs.swap(i, j);
        }
    }
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// Adam state for one parameter vector.
struct Adam {
    m: Vec<f32>,
    v: Vec<f32>,
}

impl Adam {
    fn new(n: usize) -> Adam {
        Adam {
            m: vec![0.0; n],
            v: vec![0.0; n],
        }
    }

    fn step(&mut self, w: &mut [f32], g: &[f32], lr: f32, t: i32, decay: f32) {
        let (b1, b2) = (0.9f32, 0.999f32);
        let c1 = 1.0 - b1.powi(t);
        let c2 = 1.0 - b2.powi(t);
        for i in 0..w.len() {
            self.m[i] = b1 * self.m[i] + (1.0 - b1) * g[i];
            self.v[i] = b2 * self.v[i] + (1.0 - b2) * g[i] * g[i];
            let mh = self.m[i] / c1;
            let vh = self.v[i] / c2;
            w[i] -= lr * (mh / (vh.sqrt() + 1e-8) + decay * w[i]);
        }
    }
}

/// The network part of [`Heads`] (no combiners yet).
#[derive(Clone)]
pub struct Net {
    pub hidden: usize,
    pub w1: Vec<f32>,
    pub b1: Vec<f32>,
    pub w2: Vec<f32>,
    pub b2: Vec<f32>,
}

impl Net {
    /// The logits of one vector (through the product's own code).
    pub fn logits(&self, x: &[f32; DIMS], scratch: &mut Vec<f32>) -> [f32; HEAD_COUNT] {
        let mut out = [0.0; HEAD_COUNT];
        self.as_heads(Vec::new()).logits(x, scratch, &mut out);
        out
    }

    /// The product's heads with these weights and the given per-head parameters.
    pub fn as_heads(&self, params: Vec<HeadParams>) -> Heads {
        let params = if params.is_empty() {
            (0..HEAD_COUNT)
                .map(|_| HeadParams {
                    adopted: false,
                    combiner: [0.0, 1.0, 0.0, 0.0],
                    knots: Vec::new(),
                })
                .collect()
        } else {
            params
        };
        Heads {
            hidden: self.hidden,
            w1: self.w1.clone(),
            b1: self.b1.clone(),
            w2: self.w2.clone(),
            b2: self.b2.clone(),
            params,
        }
    }
}

/// Per-head positive weights: the square root of the negative-to-positive ratio, in [1, 8].
fn pos_weights(rows: &[Row]) -> [f32; HEAD_COUNT] {
    let mut out = [1.0; HEAD_COUNT];
    for (h, w) in out.iter_mut().enumerate() {
        let pos: f32 = rows
            .iter()
            .filter(|r| r.labels[h] == POS)
            .map(|r| r.weight)
            .sum();
        let neg: f32 = rows
            .iter()
            .filter(|r| r.labels[h] == NEG)
            .map(|r| r.weight)
            .sum();
        if pos > 0.0 {
            *w = (neg / pos).sqrt().clamp(1.0, 8.0);
        }
    }
    out
}

/// Trains the network on `rows`; with `tuning`, the token `table` is trained with it.
// Index loops over the weight, gradient and activation arrays side by side read as the algebra.
#[allow(clippy::needless_range_loop)]
pub fn train(rows: &[Row], p: &Params, mut tuning: Option<(&mut Vec<f32>, Tuning)>) -> Net {
    let table0: Option<Vec<f32>> = tuning.as_ref().map(|(t, _)| t.to_vec());
    let mut adagrad: Vec<f32> = match &tuning {
        Some((t, _)) => vec![1e-6; t.len() / DIMS],
        None => Vec::new(),
    };
    let mut xbuf;
    let mut raw_norm = 0.0f32;
    let mut dx = vec![0.0f32; DIMS];
    let h = p.hidden;
    let input = if h == 0 { DIMS } else { h };
    let mut rng = Rng::new(p.seed);
    let init = |n: usize, fan_in: usize, rng: &mut Rng| -> Vec<f32> {
        let s = (6.0 / fan_in as f32).sqrt();
        (0..n).map(|_| (rng.uniform() * 2.0 - 1.0) * s).collect()
    };
    let mut net = Net {
        hidden: h,
        w1: init(h * DIMS, DIMS, &mut rng),
        b1: vec![0.0; h],
        w2: init(HEAD_COUNT * input, input, &mut rng)
            .into_iter()
            .map(|x| x * 0.5)
            .collect(),
        b2: vec![-2.0; HEAD_COUNT],
    };
    let posw = pos_weights(rows);
    let (mut a_w1, mut a_b1) = (Adam::new(net.w1.len()), Adam::new(h));
    let (mut a_w2, mut a_b2) = (Adam::new(net.w2.len()), Adam::new(HEAD_COUNT));
    let mut g_w1 = vec![0.0f32; net.w1.len()];
    let mut g_b1 = vec![0.0f32; h];
    let mut g_w2 = vec![0.0f32; net.w2.len()];
    let mut g_b2 = vec![0.0f32; HEAD_COUNT];
    let mut order: Vec<usize> = (0..rows.len()).collect();
    let mut hid = vec![0.0f32; h];
    let mut dh = vec![0.0f32; h];
    let mut t = 0;
    for epoch in 0..p.epochs {
        rng.shuffle(&mut order);
        // Cosine-free step decay: the last epochs refine.
        let lr = if epoch + 2 >= p.epochs {
            p.lr * 0.3
        } else {
            p.lr
        };
        for batch in order.chunks(p.batch) {
            g_w1.iter_mut().for_each(|g| *g = 0.0);
            g_b1.iter_mut().for_each(|g| *g = 0.0);
            g_w2.iter_mut().for_each(|g| *g = 0.0);
            g_b2.iter_mut().for_each(|g| *g = 0.0);
            let mut wsum = 0.0f32;
            for &i in batch {
                let r = &rows[i];
                let x: &[f32] = match &tuning {
                    Some((table, _)) => {
                        // Unit-length mean of the rows, and the mean's norm for the backward pass.
                        xbuf = [0.0; DIMS];
                        let n = table.len() / DIMS;
                        for &id in r.ids {
                            let id = id as usize;
                            if id < n {
                                for (o, t) in
                                    xbuf.iter_mut().zip(&table[id * DIMS..(id + 1) * DIMS])
                                {
                                    *o += t;
                                }
                            }
                        }
                        raw_norm = xbuf.iter().map(|v| v * v).sum::<f32>().sqrt();
                        if raw_norm > 0.0 {
                            xbuf.iter_mut().for_each(|v| *v /= raw_norm);
                        }
                        &xbuf
                    }
                    None => r.x,
                };
                let feat: &[f32] = if h == 0 {
                    x
                } else {
                    for j in 0..h {
                        let row = &net.w1[j * DIMS..(j + 1) * DIMS];
                        let s: f32 = row.iter().zip(x).map(|(a, b)| a * b).sum::<f32>() + net.b1[j];
                        hid[j] = s.max(0.0);
                    }
                    &hid
                };
                dh.iter_mut().for_each(|d| *d = 0.0);
                let tuned = tuning.is_some();
                if tuned {
                    dx.iter_mut().for_each(|d| *d = 0.0);
                }
                for k in 0..HEAD_COUNT {
                    let y = r.labels[k];
                    if y != POS && y != NEG {
                        continue;
                    }
                    let row = &net.w2[k * input..(k + 1) * input];
                    let z: f32 = row.iter().zip(feat).map(|(a, b)| a * b).sum::<f32>() + net.b2[k];
                    let target = if y == POS { 1.0 } else { 0.0 };
                    let w = r.weight * if y == POS { posw[k] } else { 1.0 };
                    let g = (sigmoid(z) - target) * w;
                    wsum += w;
                    g_b2[k] += g;
                    let gr = &mut g_w2[k * input..(k + 1) * input];
                    for (gi, f) in gr.iter_mut().zip(feat) {
                        *gi += g * f;
                    }
                    // Backwards into the hidden layer, or (no hidden layer) into the input.
                    if h > 0 {
                        for (d, wk) in dh.iter_mut().zip(row) {
                            *d += g * wk;
                        }
                    } else if tuned {
                        for (o, wk) in dx.iter_mut().zip(row) {
                            *o += g * wk;
                        }
                    }
                }
                if h > 0 {
                    for j in 0..h {
                        if hid[j] <= 0.0 || dh[j] == 0.0 {
                            continue;
                        }
                        let d = dh[j];
                        g_b1[j] += d;
                        let gr = &mut g_w1[j * DIMS..(j + 1) * DIMS];
                        for (gi, xi) in gr.iter_mut().zip(x) {
                            *gi += d * xi;
                        }
                        if tuned {
                            let row = &net.w1[j * DIMS..(j + 1) * DIMS];
                            for (o, w) in dx.iter_mut().zip(row) {
                                *o += d * w;
                            }
                        }
                    }
                }
                if let Some((table, t)) = tuning.as_mut()
                    && raw_norm > 0.0
                    && !r.ids.is_empty()
                {
                    // Through the normalisation, then the mean: every token row gets the same
                    // gradient, scaled by 1 / n. Per-example (not per-batch) sparse steps.
                    let xd: f32 = x.iter().zip(dx.iter()).map(|(a, b)| a * b).sum();
                    let scale = 1.0 / (raw_norm * r.ids.len() as f32 * p.batch as f32);
                    let graw: Vec<f32> = x
                        .iter()
                        .zip(dx.iter())
                        .map(|(xi, di)| (di - xi * xd) * scale)
                        .collect();
                    let g2: f32 = graw.iter().map(|g| g * g).sum::<f32>() / DIMS as f32;
                    let t0 = table0.as_ref().expect("kept with tuning");
                    let n = table.len() / DIMS;
                    for &id in r.ids {
                        let id = id as usize;
                        if id >= n {
                            continue;
                        }
                        adagrad[id] += g2;
                        let step = t.lr / adagrad[id].sqrt();
                        let row = &mut table[id * DIMS..(id + 1) * DIMS];
                        let init = &t0[id * DIMS..(id + 1) * DIMS];
                        for ((v, g), v0) in row.iter_mut().zip(&graw).zip(init) {
                            *v -= step * (g + t.l2 * (*v - v0));
                        }
                    }
                }
            }
            if wsum == 0.0 {
                continue;
            }
            let n = batch.len() as f32;
            for g in g_w1
                .iter_mut()
                .chain(&mut g_b1)
                .chain(&mut g_w2)
                .chain(&mut g_b2)
            {
                *g /= n;
            }
            t += 1;
            if h > 0 {
                a_w1.step(&mut net.w1, &g_w1, lr, t, p.weight_decay);
                a_b1.step(&mut net.b1, &g_b1, lr, t, 0.0);
            }
            a_w2.step(&mut net.w2, &g_w2, lr, t, p.weight_decay);
            a_b2.step(&mut net.b2, &g_b2, lr, t, 0.0);
        }
    }
    net
}

/// The rules' score for a head (what the combiner reads).
pub fn rule_score(s: &Scores, h: Head) -> f32 {
    match h {
        Head::AnyHarm => s.categories.iter().copied().fold(0.0, f32::max),
        Head::Category(c) => s.get(c),
        Head::CrisisSelf => s.crisis_self,
        Head::CrisisOthers => s.crisis_others,
        Head::CrisisThirdParty => s.crisis_third_party,
    }
}

/// Fits one head's combiner `[w_rule, w_sem, w_any, b]` by weighted logistic regression on
/// out-of-fold logits (full-batch gradient descent, fixed steps: deterministic).
pub fn fit_combiner(data: &[(f32, f32, f32, bool, f32)]) -> [f32; 4] {
    let mut w = [1.0f32, 1.0, 0.0, 0.0];
    if data.iter().all(|d| d.3) || data.iter().all(|d| !d.3) {
        return [2.0, 1.0, 0.0, -1.0];
    }
    let pos: f32 = data.iter().filter(|d| d.3).map(|d| d.4).sum();
    let neg: f32 = data.iter().filter(|d| !d.3).map(|d| d.4).sum();
    let pw = (neg / pos).sqrt().clamp(1.0, 8.0);
    let mut m = [0.0f32; 4];
    let mut v = [0.0f32; 4];
    for t in 1..=400 {
        let mut g = [0.0f32; 4];
        let mut total = 0.0;
        for &(r, s, a, y, wt) in data {
            let z = w[0] * r + w[1] * s + w[2] * a + w[3];
            let wt = wt * if y { pw } else { 1.0 };
            let e = (sigmoid(z) - if y { 1.0 } else { 0.0 }) * wt;
            g[0] += e * r;
            g[1] += e * s;
            g[2] += e * a;
            g[3] += e;
            total += wt;
        }
        for (i, gi) in g.iter_mut().enumerate() {
            *gi = *gi / total + if i < 3 { 1e-3 * w[i] } else { 0.0 };
        }
        for i in 0..4 {
            m[i] = 0.9 * m[i] + 0.1 * g[i];
            v[i] = 0.999 * v[i] + 0.001 * g[i] * g[i];
            let mh = m[i] / (1.0 - 0.9f32.powi(t));
            let vh = v[i] / (1.0 - 0.999f32.powi(t));
            w[i] -= 0.05 * mh / (vh.sqrt() + 1e-8);
        }
    }
    w
}

/// The probability above which at most `budget` of a benign pool (each set weighted equally)
/// is flagged.
pub fn operating_point(benign: &[(f32, usize)], budget: f64) -> f32 {
    if benign.is_empty() {
        return 0.0;
    }
    let mut per_set: std::collections::BTreeMap<usize, usize> = Default::default();
    for &(_, s) in benign {
        *per_set.entry(s).or_default() += 1;
    }
    let sets = per_set.len() as f64;
    let mut xs: Vec<(f32, f64)> = benign
        .iter()
        .map(|&(p, s)| (p, 1.0 / (per_set[&s] as f64 * sets)))
        .collect();
    xs.sort_by(|a, b| b.0.total_cmp(&a.0));
    let mut mass = 0.0;
    for (p, w) in &xs {
        if mass + w > budget {
            // Just above this benign score: it and everything below stay unflagged.
            return (p + 1e-6).min(0.999);
        }
        mass += w;
    }
    xs.last().map_or(0.5, |x| x.0)
}

/// The point that satisfies a budget on both pools.
fn point_for(ordinary: &[(f32, usize)], lookalike: &[(f32, usize)], b: Budget) -> f32 {
    operating_point(ordinary, b.ordinary).max(operating_point(lookalike, b.lookalike))
}

/// The policy thresholds a head's knots map onto, lowest first.
pub fn policy_points(h: Head) -> Vec<f32> {
    let p = Policy::default();
    match h {
        Head::AnyHarm => vec![0.5],
        Head::Category(c) => vec![p.category(c).threshold],
        Head::CrisisSelf | Head::CrisisOthers => vec![suspect_threshold(), p.thresholds.crisis],
        Head::CrisisThirdParty => vec![p.thresholds.third_party],
    }
}

/// The budgets of a head's operating points, in the order of [`policy_points`].
pub fn budgets_of(h: Head, b: &Budgets) -> Vec<Budget> {
    match h {
        Head::AnyHarm => vec![b.any_harm],
        Head::Category(_) => vec![b.category],
        Head::CrisisSelf | Head::CrisisOthers => vec![b.crisis_suspect, b.crisis],
        Head::CrisisThirdParty => vec![b.third_party],
    }
}

/// Everything a head needs besides the network, fitted on out-of-fold logits.
pub struct Calibration {
    pub params: Vec<HeadParams>,
    /// Per head, the operating point of the semantic tier alone (σ(logit)), for the report.
    pub semantic_points: Vec<f32>,
}

/// One out-of-fold example: its rules' scores, logits, labels, weight, set, benign flag.
pub struct Oof<'a> {
    pub rules: &'a Scores,
    pub logits: [f32; HEAD_COUNT],
    pub labels: &'a [Label; HEAD_COUNT],
    pub weight: f32,
    pub set: usize,
    pub benign: bool,
    /// Its set is a look-alike pool (see [`Budget`]).
    pub lookalike: bool,
}

/// Fits every head's combiner and knots on out-of-fold predictions.
pub fn calibrate(oof: &[Oof], budgets: &Budgets) -> Calibration {
    let mut params = Vec::with_capacity(HEAD_COUNT);
    let mut semantic_points = Vec::with_capacity(HEAD_COUNT);
    for h in HEADS {
        let k = h.index();
        let data: Vec<(f32, f32, f32, bool, f32)> = oof
            .iter()
            .filter(|o| o.labels[k] == POS || o.labels[k] == NEG)
            .map(|o| {
                (
                    rule_score(o.rules, h),
                    o.logits[k],
                    o.logits[Head::AnyHarm.index()],
                    o.labels[k] == POS,
                    o.weight,
                )
            })
            .collect();
        let combiner = fit_combiner(&data);
        let hp = HeadParams {
            adopted: true,
            combiner,
            knots: Vec::new(),
        };
        let pool = |lookalike: bool, f: &dyn Fn(&Oof) -> f32| -> Vec<(f32, usize)> {
            oof.iter()
                .filter(|o| o.benign && o.labels[k] != POS && o.lookalike == lookalike)
                .map(|o| (f(o), o.set))
                .collect()
        };
        let combined = |o: &Oof| {
            hp.probability(
                rule_score(o.rules, h),
                o.logits[k],
                o.logits[Head::AnyHarm.index()],
            )
        };
        let semantic = |o: &Oof| sigmoid(o.logits[k]);
        let (c_ord, c_look) = (pool(false, &combined), pool(true, &combined));
        let (s_ord, s_look) = (pool(false, &semantic), pool(true, &semantic));
        let last = *budgets_of(h, budgets).last().expect("a budget");
        semantic_points.push(point_for(&s_ord, &s_look, last));
        let mut knots: Vec<Knot> = Vec::new();
        for (score, budget) in policy_points(h).into_iter().zip(budgets_of(h, budgets)) {
            let mut p = point_for(&c_ord, &c_look, budget);
            if let Some(prev) = knots.last() {
                // Strictly increasing in p: a wider budget can only lower the point.
                p = p.max(prev.p + 1e-4);
            }
            knots.push(Knot {
                p: p.clamp(1e-4, 0.9995),
                score,
            });
        }
        params.push(HeadParams { knots, ..hp });
    }
    Calibration {
        params,
        semantic_points,
    }
}

/// Whether a category's final score flags it (at the default policy's threshold).
pub fn flagged(scores: &Scores) -> bool {
    let p = Policy::default();
    Category::ALL
        .into_iter()
        .any(|c| scores.get(c) >= p.category(c).threshold)
}
