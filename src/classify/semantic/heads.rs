//! The trained part of the semantic tier: a shared hidden layer, one logit per head, and per
//! head a combiner and its calibration knots.
//!
//! Combined score of head `h`: `p = σ(w_rule·rule + w_sem·logit_h + w_any·logit_any + b)`, then
//! the knots map `p` piecewise linearly onto the policy's score scale, so that the operating
//! point chosen on benign pools (`train`) lands exactly on the policy's default threshold.
//!
//! File format (little endian): magic `TWSH1\0\0\0`, u32 hidden (0: linear heads), u32 dims,
//! u32 heads; if hidden > 0, W1 (hidden × dims f32) and b1 (hidden f32); W2 (heads × (hidden or
//! dims) f32) and b2 (heads f32); then per head: u8 adopted, u8 knots, u16 reserved, 4 × f32
//! combiner (w_rule, w_sem, w_any, bias), knots × (f32 p, f32 score). An empty file means "no
//! heads trained".

use super::DIMS;
use crate::domain::{CATEGORY_COUNT, Category};

const MAGIC: &[u8; 8] = b"TWSH1\0\0\0";

/// Number of heads.
pub const HEAD_COUNT: usize = CATEGORY_COUNT + 4;

/// What one head predicts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Head {
    /// The message asks for harmful content of any category.
    AnyHarm,
    /// A harmful request of this category.
    Category(Category),
    /// The writer may be at risk of harming themself.
    CrisisSelf,
    /// The writer states an intent or risk of harming others.
    CrisisOthers,
    /// The writer is worried about someone else at risk.
    CrisisThirdParty,
}

/// Every head, in file order.
pub const HEADS: [Head; HEAD_COUNT] = {
    let mut h = [Head::AnyHarm; HEAD_COUNT];
    let mut i = 0;
    while i < CATEGORY_COUNT {
        h[i + 1] = Head::Category(Category::ALL[i]);
        i += 1;
    }
    h[CATEGORY_COUNT + 1] = Head::CrisisSelf;
    h[CATEGORY_COUNT + 2] = Head::CrisisOthers;
    h[CATEGORY_COUNT + 3] = Head::CrisisThirdParty;
    h
};

impl Head {
    /// Position in [`HEADS`].
    pub fn index(self) -> usize {
        match self {
            Head::AnyHarm => 0,
            Head::Category(c) => 1 + c.index(),
            Head::CrisisSelf => CATEGORY_COUNT + 1,
            Head::CrisisOthers => CATEGORY_COUNT + 2,
            Head::CrisisThirdParty => CATEGORY_COUNT + 3,
        }
    }

    /// The stable snake_case name (a category's own name for a category head).
    pub fn name(self) -> &'static str {
        match self {
            Head::AnyHarm => "any_harm",
            Head::Category(c) => c.name(),
            Head::CrisisSelf => "crisis_self",
            Head::CrisisOthers => "crisis_others",
            Head::CrisisThirdParty => "crisis_third_party",
        }
    }

    /// Parses a name.
    pub fn from_name(name: &str) -> Option<Head> {
        HEADS.into_iter().find(|h| h.name() == name)
    }
}

/// One calibration point: combined probability `p` maps to policy score `score`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Knot {
    pub p: f32,
    pub score: f32,
}

/// One head's combiner and calibration.
#[derive(Clone, Debug, PartialEq)]
pub struct HeadParams {
    /// Leave-one-dataset-out showed a gain: the combined score replaces the rules' score.
    pub adopted: bool,
    /// `[w_rule, w_sem, w_any, bias]`.
    pub combiner: [f32; 4],
    /// Increasing in both `p` and `score`; (0, 0) and (1, 1) are implied.
    pub knots: Vec<Knot>,
}

impl HeadParams {
    /// The combined probability, before calibration.
    pub fn probability(&self, rule: f32, logit: f32, any_logit: f32) -> f32 {
        let [wr, ws, wa, b] = self.combiner;
        sigmoid(wr * rule + ws * logit + wa * any_logit + b)
    }

    /// `p` on the policy's score scale.
    pub fn calibrate(&self, p: f32) -> f32 {
        let mut prev = Knot { p: 0.0, score: 0.0 };
        for &k in self
            .knots
            .iter()
            .chain(std::iter::once(&Knot { p: 1.0, score: 1.0 }))
        {
            if p <= k.p {
                let span = (k.p - prev.p).max(f32::EPSILON);
                return (prev.score + (p - prev.p) / span * (k.score - prev.score)).clamp(0.0, 1.0);
            }
            prev = k;
        }
        1.0
    }
}

/// The trained heads.
#[derive(Clone, Debug, PartialEq)]
pub struct Heads {
    /// Width of the hidden layer; 0 for linear heads.
    pub hidden: usize,
    /// `hidden × DIMS`, row-major (empty when linear).
    pub w1: Vec<f32>,
    pub b1: Vec<f32>,
    /// `HEAD_COUNT × (hidden or DIMS)`, row-major.
    pub w2: Vec<f32>,
    pub b2: Vec<f32>,
    pub params: Vec<HeadParams>,
}

/// Why a heads file was rejected.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("semantic heads: {0}")]
pub struct HeadsError(pub String);

pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

impl Heads {
    /// Width of the layer the head weights read.
    pub fn input(&self) -> usize {
        if self.hidden == 0 { DIMS } else { self.hidden }
    }

    /// The logit of every head for a message vector; `hidden` is scratch of `self.hidden`.
    pub fn logits(&self, v: &[f32; DIMS], hidden: &mut Vec<f32>, out: &mut [f32; HEAD_COUNT]) {
        let x: &[f32] = if self.hidden == 0 {
            v
        } else {
            hidden.clear();
            hidden.extend(
                self.w1
                    .chunks_exact(DIMS)
                    .zip(&self.b1)
                    .map(|(row, b)| (dot(row, v) + b).max(0.0)),
            );
            hidden
        };
        let n = self.input();
        for (k, (row, b)) in self.w2.chunks_exact(n).zip(&self.b2).enumerate() {
            out[k] = dot(row, x) + b;
        }
    }

    /// Whether any head is adopted.
    pub fn any_adopted(&self) -> bool {
        self.params.iter().any(|p| p.adopted)
    }

    /// Serialises the heads.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(MAGIC);
        for n in [self.hidden, DIMS, HEAD_COUNT] {
            v.extend_from_slice(&(n as u32).to_le_bytes());
        }
        for x in self
            .w1
            .iter()
            .chain(&self.b1)
            .chain(&self.w2)
            .chain(&self.b2)
        {
            v.extend_from_slice(&x.to_le_bytes());
        }
        for p in &self.params {
            v.push(u8::from(p.adopted));
            v.push(p.knots.len() as u8);
            v.extend_from_slice(&[0, 0]);
            for x in p.combiner {
                v.extend_from_slice(&x.to_le_bytes());
            }
            for k in &p.knots {
                v.extend_from_slice(&k.p.to_le_bytes());
                v.extend_from_slice(&k.score.to_le_bytes());
            }
        }
        v
    }

    /// Parses a heads file; `None` for an empty one.
    pub fn from_bytes(b: &[u8]) -> Result<Option<Heads>, HeadsError> {
        if b.is_empty() {
            return Ok(None);
        }
        let bad = |m: &str| HeadsError(m.to_string());
        if b.len() < 20 || &b[..8] != MAGIC {
            return Err(bad("bad magic"));
        }
        let mut r = Reader { b, o: 8 };
        let hidden = r.u32()? as usize;
        let (dims, heads) = (r.u32()? as usize, r.u32()? as usize);
        if dims != DIMS || heads != HEAD_COUNT || hidden > 4096 {
            return Err(bad("bad header"));
        }
        let input = if hidden == 0 { DIMS } else { hidden };
        let w1 = r.f32s(hidden * DIMS)?;
        let b1 = r.f32s(hidden)?;
        let w2 = r.f32s(HEAD_COUNT * input)?;
        let b2 = r.f32s(HEAD_COUNT)?;
        let mut params = Vec::with_capacity(HEAD_COUNT);
        for _ in 0..HEAD_COUNT {
            let head = r.bytes(4)?;
            let (adopted, n) = (head[0] != 0, head[1] as usize);
            let c = r.f32s(4)?;
            let raw = r.f32s(2 * n)?;
            let knots: Vec<Knot> = raw
                .chunks_exact(2)
                .map(|k| Knot {
                    p: k[0],
                    score: k[1],
                })
                .collect();
            let increasing = knots
                .windows(2)
                .all(|w| w[0].p < w[1].p && w[0].score <= w[1].score)
                && knots
                    .iter()
                    .all(|k| (0.0..=1.0).contains(&k.p) && (0.0..=1.0).contains(&k.score));
            if !increasing {
                return Err(bad("knots not increasing within [0, 1]"));
            }
            params.push(HeadParams {
                adopted,
                combiner: [c[0], c[1], c[2], c[3]],
                knots,
            });
        }
        if r.o != b.len() {
            return Err(bad("trailing bytes"));
        }
        let all = w1.iter().chain(&b1).chain(&w2).chain(&b2);
        if !all.clone().all(|x| x.is_finite())
            || !params
                .iter()
                .all(|p| p.combiner.iter().all(|x| x.is_finite()))
        {
            return Err(bad("non-finite weight"));
        }
        Ok(Some(Heads {
            hidden,
            w1,
            b1,
            w2,
            b2,
            params,
        }))
    }
}

#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Eight lanes the compiler keeps in registers: vectorises without fast-math.
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

struct Reader<'a> {
    b: &'a [u8],
    o: usize,
}

impl Reader<'_> {
    fn bytes(&mut self, n: usize) -> Result<&[u8], HeadsError> {
        let end = self.o.checked_add(n).filter(|&e| e <= self.b.len());
        let end = end.ok_or_else(|| HeadsError("truncated".into()))?;
        let s = &self.b[self.o..end];
        self.o = end;
        Ok(s)
    }

    fn u32(&mut self) -> Result<u32, HeadsError> {
        let s = self.bytes(4)?;
        Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }

    fn f32s(&mut self, n: usize) -> Result<Vec<f32>, HeadsError> {
        let s = self.bytes(n.checked_mul(4).ok_or_else(|| HeadsError("size".into()))?)?;
        Ok(s.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }
}
