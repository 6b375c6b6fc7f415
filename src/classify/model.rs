//! The learned component: per-category logistic regression over hashed word unigrams and
//! bigrams of the normalised text, trained by `threadwarden-lab train` (lab/src/train/).
//!
//! Features are computed in one pass over the normalised text without allocating. Weights are
//! quantised to i8 (one scale per head) in a table of 2^`bits` buckets per head.
//!
//! File format (little endian): magic `TWLM1\0\0\0`, u32 bits, u32 heads, u64 seed; then per
//! head: u8 category index, u8 adopted, u16 reserved, f32 bias, f32 scale, 2^bits × i8.

use crate::domain::Category;

/// Magic bytes at the start of a weights file.
pub const MAGIC: &[u8; 8] = b"TWLM1\0\0\0";

/// One category's head.
#[derive(Clone, Debug, PartialEq)]
pub struct Head {
    pub category: Category,
    /// Cross-validation showed it beats the rules alone: merged into `classify` scores.
    pub adopted: bool,
    pub bias: f32,
    pub scale: f32,
    pub weights: Vec<i8>,
}

/// A trained model.
#[derive(Clone, Debug, PartialEq)]
pub struct Model {
    pub bits: u32,
    pub seed: u64,
    pub heads: Vec<Head>,
}

/// Why a weights file was rejected.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("model weights: {0}")]
pub struct ModelError(pub String);

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

fn mix(a: u64, b: u64) -> u64 {
    let mut x = a ^ b.rotate_left(29) ^ 0x9e37_79b9_7f4a_7c15;
    x = (x ^ (x >> 33)).wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^ (x >> 33)
}

/// Word bytes: ASCII letters and digits, and every byte of a non-ASCII char.
const WORD_BYTE: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        t[b] = (b as u8).is_ascii_alphanumeric() || b >= 0x80;
        b += 1;
    }
    t
};

#[inline(always)]
fn is_word_byte(b: u8) -> bool {
    WORD_BYTE[b as usize]
}

/// Calls `f` with the hash of every feature of `text` (normalised): a bias-free stream of word
/// unigrams and bigrams, in text order. Words longer than 32 bytes are hashed on their prefix.
#[inline]
pub fn for_each_feature(text: &str, mut f: impl FnMut(u64)) {
    let bytes = text.as_bytes();
    let mut prev: u64 = 0;
    let mut i = 0;
    while i < bytes.len() {
        while i < bytes.len() && !is_word_byte(bytes[i]) {
            i += 1;
        }
        if i >= bytes.len() {
            break;
        }
        // FNV-1a over the whole word, which is at most 32 bytes but for a rare long word: that
        // one is hashed again on its prefix. No per-byte length test.
        let start = i;
        let mut h = FNV_OFFSET;
        while i < bytes.len() && is_word_byte(bytes[i]) {
            h = (h ^ u64::from(bytes[i])).wrapping_mul(FNV_PRIME);
            i += 1;
        }
        if i - start > 32 {
            h = bytes[start..start + 32].iter().fold(FNV_OFFSET, |h, &b| {
                (h ^ u64::from(b)).wrapping_mul(FNV_PRIME)
            });
        }
        f(h);
        if prev != 0 {
            f(mix(prev, h));
        }
        prev = h;
    }
}

/// The bucket of a feature hash in a table of 2^`bits`.
pub fn bucket(h: u64, bits: u32) -> usize {
    (h >> (64 - bits)) as usize
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

impl Model {
    /// Probability per head for `text` (already normalised), in head order.
    pub fn score_into(&self, text: &str, out: &mut [f32]) {
        let n = self.heads.len().min(out.len());
        let mut acc = [0i32; 16];
        let size = 1usize << self.bits;
        match &self.heads[..n.min(16)] {
            // The shipped model has one adopted head: one table, no per-feature head loop, and
            // a mask (a no-op on a bucket) instead of a bounds check.
            [head] if head.weights.len() == size => {
                let w = &head.weights[..size];
                let mut a = 0i32;
                for_each_feature(text, |h| {
                    a += i32::from(w[bucket(h, self.bits) & (size - 1)]);
                });
                acc[0] = a;
            }
            heads => for_each_feature(text, |h| {
                let b = bucket(h, self.bits);
                for (k, head) in heads.iter().enumerate() {
                    acc[k] += i32::from(head.weights[b]);
                }
            }),
        }
        for (k, head) in self.heads.iter().take(n.min(16)).enumerate() {
            out[k] = sigmoid(head.bias + head.scale * acc[k] as f32);
        }
    }

    /// Serialises the model.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(MAGIC);
        v.extend_from_slice(&self.bits.to_le_bytes());
        v.extend_from_slice(&(self.heads.len() as u32).to_le_bytes());
        v.extend_from_slice(&self.seed.to_le_bytes());
        for h in &self.heads {
            v.push(h.category.index() as u8);
            v.push(u8::from(h.adopted));
            v.extend_from_slice(&[0, 0]);
            v.extend_from_slice(&h.bias.to_le_bytes());
            v.extend_from_slice(&h.scale.to_le_bytes());
            v.extend(h.weights.iter().map(|&w| w as u8));
        }
        v
    }

    /// Parses a weights file.
    pub fn from_bytes(b: &[u8]) -> Result<Model, ModelError> {
        let bad = |m: &str| ModelError(m.to_string());
        if b.len() < 24 || &b[..8] != MAGIC {
            return Err(bad("bad magic"));
        }
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let bits = u32_at(8);
        let n = u32_at(12) as usize;
        let mut seed = [0u8; 8];
        seed.copy_from_slice(&b[16..24]);
        if !(8..=22).contains(&bits) || n > 16 {
            return Err(bad("bad header"));
        }
        let size = 1usize << bits;
        let mut o = 24;
        let mut heads = Vec::with_capacity(n);
        for _ in 0..n {
            if b.len() < o + 12 + size {
                return Err(bad("truncated"));
            }
            let category = *Category::ALL
                .get(b[o] as usize)
                .ok_or_else(|| bad("bad category"))?;
            let adopted = b[o + 1] != 0;
            let f32_at = |o: usize| f32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
            let bias = f32_at(o + 4);
            let scale = f32_at(o + 8);
            o += 12;
            let weights = b[o..o + size].iter().map(|&x| x as i8).collect();
            o += size;
            heads.push(Head {
                category,
                adopted,
                bias,
                scale,
                weights,
            });
        }
        if o != b.len() {
            return Err(bad("trailing bytes"));
        }
        Ok(Model {
            bits,
            seed: u64::from_le_bytes(seed),
            heads,
        })
    }

    /// Only the adopted heads (what `classify` runs).
    pub fn adopted(&self) -> Model {
        Model {
            bits: self.bits,
            seed: self.seed,
            heads: self.heads.iter().filter(|h| h.adopted).cloned().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// The feature stream by its definition: words are maximal runs of word bytes, each
    /// hashed on its first 32 bytes, then each adjacent pair mixed.
    fn features_reference(text: &str) -> Vec<u64> {
        let mut out = Vec::new();
        let mut prev: u64 = 0;
        for word in text
            .as_bytes()
            .split(|&b| !is_word_byte(b))
            .filter(|w| !w.is_empty())
        {
            let h = word.iter().take(32).fold(FNV_OFFSET, |h, &b| {
                (h ^ u64::from(b)).wrapping_mul(FNV_PRIME)
            });
            out.push(h);
            if prev != 0 {
                out.push(mix(prev, h));
            }
            prev = h;
        }
        out
    }

    proptest! {
        /// Same hashes as the reference, long words (hashed on their 32-byte prefix) included.
        #[test]
        fn features_match_the_reference(words in prop::collection::vec("[a-z0-9é]{0,40}", 0..8)) {
            let text = words.join(" ");
            let mut got = Vec::new();
            for_each_feature(&text, |h| got.push(h));
            prop_assert_eq!(got, features_reference(&text));
        }
    }

    #[test]
    fn roundtrip_and_score() {
        let bits = 8;
        let mut w = vec![0i8; 1 << bits];
        for_each_feature("stupid bot", |h| w[bucket(h, bits)] = 100);
        let m = Model {
            bits,
            seed: 7,
            heads: vec![Head {
                category: Category::Abuse,
                adopted: true,
                bias: -2.0,
                scale: 0.02,
                weights: w,
            }],
        };
        let back = Model::from_bytes(&m.to_bytes()).unwrap();
        assert_eq!(back, m);
        let mut out = [0.0f32; 1];
        m.score_into("you stupid bot", &mut out);
        assert!(out[0] > 0.5, "{}", out[0]);
        m.score_into("hello there", &mut out);
        assert!(out[0] < 0.2, "{}", out[0]);
        assert!(Model::from_bytes(b"nope").is_err());
    }
}
