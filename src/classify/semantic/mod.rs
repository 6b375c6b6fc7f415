//! The semantic tier: static token embeddings distilled from all-MiniLM-L6-v2 (Apache-2.0,
//! `NOTICE`), mean-pooled into one vector per message, and small per-head weights trained by
//! `threadwarden-lab train` on permissively licensed data and the project's own corpus.
//!
//! - [`Tokenizer`]: the encoder's uncased WordPiece (BERT's basic tokenizer, then greedy
//!   longest-match pieces), tested against the `tokenizers` package's output
//!   (`testdata/wordpiece_reference.jsonl`).
//! - [`Embeddings`]: the int8 table (`embeddings.bin`, one scale per row), written by
//!   `lab/distill/distill.py`.
//! - [`Heads`]: one hidden layer shared by every head, a logit per head, and per head a
//!   combiner over the rules' score and the semantic logits with the knots that map its output
//!   onto the policy's thresholds (`heads.bin`, written by `train`).
//!
//! Pure: no I/O (the tables are embedded), no allocation per message once the scratch buffers
//! have grown.

mod heads;
mod tokenizer;

pub use heads::{HEAD_COUNT, HEADS, Head, HeadParams, Heads, HeadsError, Knot, sigmoid};
pub use tokenizer::{Scratch as TokenizerScratch, Tokenizer, Words};

use crate::domain::{Category, Scores};

/// The embedding table written by `lab/distill/distill.py`.
pub const EMBEDDINGS_BYTES: &[u8] = include_bytes!("embeddings.bin");
/// The encoder's vocabulary, one token a line, in id order.
pub const VOCAB: &str = include_str!("vocab.txt");
/// The trained heads and combiners, written by `threadwarden-lab train`.
pub const HEADS_BYTES: &[u8] = include_bytes!("heads.bin");
/// The heads' model card, written by `threadwarden-lab train` beside them.
pub const HEADS_MANIFEST: &str = include_str!("heads.manifest.json");
/// The manifest format this build reads.
pub const MANIFEST_FORMAT: u64 = 1;

/// Path of the heads file in the repository, relative to the workspace root.
pub const HEADS_PATH: &str = "src/classify/semantic/heads.bin";

/// Dimensions of a message vector.
pub const DIMS: usize = 256;

const EMBEDDINGS_MAGIC: &[u8; 8] = b"TWSE1\0\0\0";

/// Why an embedded table was rejected.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("semantic tables: {0}")]
pub struct SemanticError(pub String);

/// The distilled token table: `rows` × [`DIMS`] int8, one f32 scale per row.
pub struct Embeddings {
    scales: Vec<f32>,
    /// The int8 values as their bytes (read with `as i8`): no copy of the embedded table.
    table: &'static [u8],
}

impl Embeddings {
    /// Parses an embeddings file (magic, u32 rows, u32 dims, rows × f32 scales, rows × dims i8).
    pub fn from_bytes(b: &'static [u8]) -> Result<Embeddings, SemanticError> {
        let bad = |m: &str| SemanticError(m.to_string());
        if b.len() < 16 || &b[..8] != EMBEDDINGS_MAGIC {
            return Err(bad("bad embeddings magic"));
        }
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]) as usize;
        let (rows, dims) = (u32_at(8), u32_at(12));
        if dims != DIMS || rows == 0 || b.len() != 16 + rows * 4 + rows * dims {
            return Err(bad("bad embeddings header or size"));
        }
        let scales = b[16..16 + rows * 4]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Ok(Embeddings {
            scales,
            table: &b[16 + rows * 4..],
        })
    }

    /// Number of token rows.
    pub fn rows(&self) -> usize {
        self.scales.len()
    }

    /// Adds token `id`'s row into `acc`.
    #[inline]
    fn add_row(&self, id: u32, acc: &mut [f32; DIMS]) {
        let id = id as usize;
        let row = &self.table[id * DIMS..(id + 1) * DIMS];
        let s = self.scales[id];
        for (a, &q) in acc.iter_mut().zip(row) {
            *a += s * f32::from(q as i8);
        }
    }
}

/// Most pieces a message vector is made of: the first and the last `MAX_PIECES / 2` (a long
/// post's opening and its end; the encoder itself reads 128).
pub const MAX_PIECES: usize = 256;

/// Keeps the first and last `MAX_PIECES / 2` of `ids` (what the vector is made of).
pub fn clip_pieces(ids: &mut Vec<u32>) {
    if ids.len() > MAX_PIECES {
        ids.drain(MAX_PIECES / 2..ids.len() - MAX_PIECES / 2);
    }
}

/// The semantic tier: tokenizer, embeddings and (when trained) the heads.
pub struct Semantic {
    tokenizer: Tokenizer,
    embeddings: Embeddings,
    heads: Option<Heads>,
}

/// Per-thread buffers of the semantic tier.
#[derive(Default)]
pub struct SemanticScratch {
    tokenizer: tokenizer::Scratch,
    ids: Vec<u32>,
}

impl Semantic {
    /// The embedded tokenizer and table with the embedded heads (none when the heads file is
    /// empty, as before the first `train`); panics only if the embedded data is broken.
    pub fn builtin() -> Semantic {
        let manifest: serde_json::Value =
            serde_json::from_str(HEADS_MANIFEST).expect("embedded heads.manifest.json is JSON");
        assert_eq!(
            manifest["format_version"].as_u64(),
            Some(MANIFEST_FORMAT),
            "heads.manifest.json: a format this build does not read"
        );
        let heads = Heads::from_bytes(HEADS_BYTES).expect("embedded heads.bin is valid");
        Semantic::without_heads().with_heads(heads)
    }

    /// The tokenizer and table alone (what `train` computes features with).
    pub fn without_heads() -> Semantic {
        Semantic {
            tokenizer: Tokenizer::from_vocab(VOCAB),
            embeddings: Embeddings::from_bytes(EMBEDDINGS_BYTES)
                .expect("embedded embeddings.bin is valid"),
            heads: None,
        }
    }

    /// The same tables with other heads.
    pub fn with_heads(mut self, heads: Option<Heads>) -> Semantic {
        self.heads = heads;
        self
    }

    /// The trained heads, if any.
    pub fn heads(&self) -> Option<&Heads> {
        self.heads.as_ref()
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The message vector of `text`: the mean of its tokens' rows, scaled to unit length
    /// (zero for a text without tokens). Returns the vocabulary's coverage of the text.
    pub fn vector(
        &self,
        text: &str,
        scratch: &mut SemanticScratch,
        out: &mut [f32; DIMS],
    ) -> Words {
        scratch.ids.clear();
        let words = self
            .tokenizer
            .encode(text, &mut scratch.tokenizer, &mut scratch.ids);
        clip_pieces(&mut scratch.ids);
        *out = [0.0; DIMS];
        for &id in &scratch.ids {
            if (id as usize) < self.embeddings.rows() {
                self.embeddings.add_row(id, out);
            }
        }
        let norm = out.iter().map(|x| x * x).sum::<f32>().sqrt();
        if norm > 0.0 {
            for x in out.iter_mut() {
                *x /= norm;
            }
        }
        words
    }
}

/// Whether the combined score of `h` is floored at the rules' score.
pub fn keeps_rules(h: Head) -> bool {
    match h {
        Head::AnyHarm => false,
        Head::Category(c) => matches!(
            c,
            Category::ChildSexualExploitation
                | Category::IndiscriminateWeapons
                | Category::ViolentExtremism
                | Category::SelfHarm
                | Category::HarmToOthers
        ),
        Head::CrisisSelf | Head::CrisisOthers | Head::CrisisThirdParty => true,
    }
}

/// Combined scores below this are reported as zero.
pub const SCORE_FLOOR: f32 = 0.1;

/// One semantic head's output for one message, for `threadwarden check`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TierHead {
    pub head: Head,
    /// σ(logit): the semantic tier alone.
    pub semantic: f32,
    /// The combiner's calibrated output.
    pub combined: f32,
    /// Adopted by `train`: `combined` replaced the rules' score.
    pub adopted: bool,
}

/// Replaces each adopted head's score in `scores` (the rules') by its combined score, given the
/// heads' logits for the message; lists every head's outputs when `explain` is given. Pure:
/// `train` measures exactly this function on precomputed logits.
pub fn merge(
    heads: &Heads,
    logits: &[f32; HEAD_COUNT],
    scores: &mut Scores,
    mut explain: Option<&mut Vec<TierHead>>,
) {
    let any_rule = scores.categories.iter().copied().fold(0.0f32, f32::max);
    let any_logit = logits[Head::AnyHarm.index()];
    let mut any_flagged = false;
    for (h, params) in HEADS.into_iter().zip(&heads.params) {
        let rule = match h {
            Head::AnyHarm => any_rule,
            Head::Category(c) => scores.get(c),
            Head::CrisisSelf => scores.crisis_self,
            Head::CrisisOthers => scores.crisis_others,
            Head::CrisisThirdParty => scores.crisis_third_party,
        };
        let logit = logits[h.index()];
        let combined = params.calibrate(params.probability(rule, logit, any_logit));
        if let Some(out) = explain.as_deref_mut() {
            out.push(TierHead {
                head: h,
                semantic: sigmoid(logit),
                combined,
                adopted: params.adopted,
            });
        }
        if !params.adopted {
            continue;
        }
        // Below the floor a calibrated score is noise: keeping it would list every category on
        // every verdict and span.
        let combined = if combined >= SCORE_FLOOR {
            combined
        } else {
            0.0
        };
        // Where a miss costs a life or a severe harm, the tier may add but never take away
        // what the rules found: crisis signals, self-harm and harm-to-others, the severe
        // categories. Elsewhere the combiner may also overrule a rule's false positive.
        let combined = if keeps_rules(h) {
            combined.max(rule)
        } else {
            combined
        };
        match h {
            Head::AnyHarm => {
                any_flagged = params.knots.last().is_some_and(|k| combined >= k.score);
            }
            Head::Category(c) => scores.categories[c.index()] = combined,
            Head::CrisisSelf => scores.crisis_self = combined,
            Head::CrisisOthers => scores.crisis_others = combined,
            Head::CrisisThirdParty => scores.crisis_third_party = combined,
        }
    }
    // A harmful request that no category claims is still harmful: it takes the category the
    // semantic tier finds most likely, at that category's operating point.
    if any_flagged {
        let best = Category::ALL
            .into_iter()
            .max_by(|a, b| {
                logits[Head::Category(*a).index()].total_cmp(&logits[Head::Category(*b).index()])
            })
            .expect("ten categories");
        let floor = heads.params[Head::Category(best).index()]
            .knots
            .last()
            .map_or(0.5, |k| k.score);
        let flagged = Category::ALL.into_iter().any(|c| {
            let k = heads.params[Head::Category(c).index()].knots.last();
            scores.get(c) >= k.map_or(0.5, |k| k.score)
        });
        if !flagged {
            scores.raise(best, floor);
        }
    }
}

#[cfg(test)]
mod tests;
