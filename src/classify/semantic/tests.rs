use super::heads::sigmoid;
use super::*;

fn ids(t: &Tokenizer, text: &str) -> Vec<u32> {
    let mut out = Vec::new();
    t.encode(text, &mut tokenizer::Scratch::default(), &mut out);
    out
}

#[test]
fn wordpiece_matches_the_reference_tokenizer() {
    // Written by lab/distill/distill.py from the `tokenizers` package (0.23.3) on texts chosen
    // for the normaliser's edge cases: accents, CJK, scripts without spaces, control and
    // zero-width characters, emoji, over-long words.
    let t = Tokenizer::from_vocab(VOCAB);
    let reference = include_str!("testdata/wordpiece_reference.jsonl");
    let mut checked = 0;
    for line in reference.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let text = v["text"].as_str().unwrap();
        let want: Vec<u32> = v["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(ids(&t, text), want, "{text:?}");
        checked += 1;
    }
    assert!(checked >= 39, "{checked}");
}

#[test]
fn coverage_tells_english_from_other_languages() {
    let t = Tokenizer::from_vocab(VOCAB);
    let words = |text: &str| t.encode(text, &mut tokenizer::Scratch::default(), &mut Vec::new());
    assert!(words("what is the best way to learn spanish quickly").covered());
    assert!(!words("ich möchte nicht mehr leben, alles ist sinnlos").covered());
    assert!(!words("Я больше не хочу жить").covered());
    assert!(!words("").covered());
}

#[test]
fn wordpiece_splits_into_pieces_and_unknowns() {
    let t = Tokenizer::from_vocab("[PAD]\n[UNK]\nplay\n##ing\n##s\nthe\n!\n");
    assert_eq!(ids(&t, "Playing THE plays!"), vec![2, 3, 5, 2, 4, 6]);
    // An unmatched rest makes the whole word unknown; so does a word over 100 characters.
    assert_eq!(ids(&t, "playx the"), vec![1, 5]);
    assert_eq!(ids(&t, &"play".repeat(26)), vec![1]);
    assert_eq!(ids(&t, ""), Vec::<u32>::new());
}

#[test]
fn embeddings_parse_and_vectors_are_unit_length() {
    let s = Semantic::without_heads();
    assert_eq!(s.embeddings.rows(), VOCAB.lines().count());
    assert_eq!(s.tokenizer().len(), VOCAB.lines().count());
    let mut scratch = SemanticScratch::default();
    let mut v = [0.0; DIMS];
    let w = s.vector("how do I kill a python process", &mut scratch, &mut v);
    assert_eq!((w.words, w.whole), (7, 7));
    assert!(w.covered());
    let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-4, "{norm}");
    assert!(!s.vector("", &mut scratch, &mut v).covered());
    assert!(v.iter().all(|&x| x == 0.0));
}

#[test]
fn similar_requests_are_closer_than_unrelated_ones() {
    // The distilled table keeps the encoder's geometry: a paraphrase is nearer than a topic
    // change (a property, not a tuned figure).
    let s = Semantic::without_heads();
    let mut scratch = SemanticScratch::default();
    let vec = |t: &str| {
        let mut v = [0.0; DIMS];
        let mut sc = SemanticScratch::default();
        s.vector(t, &mut sc, &mut v);
        v
    };
    let _ = &mut scratch;
    let cos = |a: &[f32; DIMS], b: &[f32; DIMS]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
    let a = vec("I want to end my life tonight");
    let b = vec("I am going to kill myself tonight");
    let c = vec("what is a good recipe for banana bread");
    assert!(
        cos(&a, &b) > cos(&a, &c) + 0.1,
        "{} {}",
        cos(&a, &b),
        cos(&a, &c)
    );
}

#[test]
fn an_empty_heads_file_means_no_heads_and_a_bad_one_is_rejected() {
    assert_eq!(Heads::from_bytes(&[]), Ok(None));
    assert!(Heads::from_bytes(b"not a heads file at all").is_err());
}

fn sample_heads(hidden: usize) -> Heads {
    let input = if hidden == 0 { DIMS } else { hidden };
    Heads {
        hidden,
        w1: (0..hidden * DIMS)
            .map(|i| ((i % 7) as f32 - 3.0) / 50.0)
            .collect(),
        b1: (0..hidden).map(|i| i as f32 / 100.0).collect(),
        w2: (0..HEAD_COUNT * input)
            .map(|i| ((i % 5) as f32 - 2.0) / 10.0)
            .collect(),
        b2: (0..HEAD_COUNT).map(|i| -(i as f32) / 10.0).collect(),
        params: (0..HEAD_COUNT)
            .map(|i| HeadParams {
                adopted: i % 2 == 0,
                combiner: [1.5, 0.8, 0.2, -2.0],
                knots: vec![Knot { p: 0.3, score: 0.3 }, Knot { p: 0.7, score: 0.5 }],
            })
            .collect(),
    }
}

#[test]
fn heads_round_trip_and_compute_logits() {
    for hidden in [0, 16] {
        let h = sample_heads(hidden);
        let back = Heads::from_bytes(&h.to_bytes()).unwrap().unwrap();
        assert_eq!(back, h);
        let mut v = [0.0; DIMS];
        v[0] = 1.0;
        v[3] = -0.5;
        let mut out = [0.0; HEAD_COUNT];
        back.logits(&v, &mut Vec::new(), &mut out);
        // The reference computation, spelled out.
        let x: Vec<f32> = if hidden == 0 {
            v.to_vec()
        } else {
            (0..hidden)
                .map(|j| {
                    let s: f32 = (0..DIMS).map(|i| h.w1[j * DIMS + i] * v[i]).sum();
                    (s + h.b1[j]).max(0.0)
                })
                .collect()
        };
        for (k, got) in out.iter().enumerate() {
            let want: f32 = x
                .iter()
                .enumerate()
                .map(|(i, xi)| h.w2[k * x.len() + i] * xi)
                .sum::<f32>()
                + h.b2[k];
            assert!((got - want).abs() < 1e-5, "{hidden} {k}: {got} vs {want}");
        }
    }
    let mut bytes = sample_heads(0).to_bytes();
    bytes.pop();
    assert!(Heads::from_bytes(&bytes).is_err(), "truncated");
}

#[test]
fn calibration_maps_the_operating_points_onto_the_policy_scale() {
    let p = &sample_heads(0).params[0];
    assert_eq!(p.calibrate(0.0), 0.0);
    assert!((p.calibrate(0.3) - 0.3).abs() < 1e-6);
    assert!((p.calibrate(0.7) - 0.5).abs() < 1e-6);
    assert!((p.calibrate(0.5) - 0.4).abs() < 1e-6);
    assert!((p.calibrate(1.0) - 1.0).abs() < 1e-6);
    // Monotone everywhere.
    let mut prev = -1.0;
    for i in 0..=100 {
        let s = p.calibrate(i as f32 / 100.0);
        assert!(s >= prev);
        prev = s;
    }
    assert!((p.probability(1.0, 0.0, 0.0) - sigmoid(-0.5)).abs() < 1e-6);
}

#[test]
fn head_names_and_indices_agree() {
    for (i, h) in HEADS.iter().enumerate() {
        assert_eq!(h.index(), i);
        assert_eq!(Head::from_name(h.name()), Some(*h));
    }
    assert_eq!(
        Head::from_name("cyber_attack"),
        Some(Head::Category(crate::domain::Category::CyberAttack))
    );
}

#[test]
fn the_embedded_files_are_the_ones_the_manifest_describes() {
    use sha2::{Digest, Sha256};
    let m: serde_json::Value = serde_json::from_str(HEADS_MANIFEST).unwrap();
    assert_eq!(m["format_version"].as_u64(), Some(MANIFEST_FORMAT));
    let hex = |b: &[u8]| format!("{:x}", Sha256::digest(b));
    assert_eq!(
        m["sha256"].as_str(),
        Some(hex(HEADS_BYTES).as_str()),
        "heads.bin"
    );
    assert_eq!(
        m["table"]["sha256"].as_str(),
        Some(hex(EMBEDDINGS_BYTES).as_str()),
        "embeddings.bin"
    );
    // Every adopted head in the manifest is adopted in the file, and no other.
    let heads = Heads::from_bytes(HEADS_BYTES)
        .unwrap()
        .expect("trained heads");
    let listed: Vec<&str> = m["adopted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for (h, p) in HEADS.iter().zip(&heads.params) {
        assert_eq!(p.adopted, listed.contains(&h.name()), "{}", h.name());
    }
}

#[test]
fn the_tier_never_lowers_a_rule_hit_where_a_miss_is_severe() {
    // A combiner that, for every head, says "benign" whatever the input.
    let mut h = sample_heads(0);
    for p in &mut h.params {
        p.adopted = true;
        p.combiner = [0.0, 0.0, 0.0, -20.0];
    }
    let logits = [0.0; HEAD_COUNT];
    let mut s = Scores {
        crisis_self: 0.9,
        ..Scores::default()
    };
    s.raise(crate::domain::Category::IndiscriminateWeapons, 0.95);
    s.raise(crate::domain::Category::CyberAttack, 0.8);
    merge(&h, &logits, &mut s, None);
    assert_eq!(s.crisis_self, 0.9, "kept");
    assert_eq!(
        s.get(crate::domain::Category::IndiscriminateWeapons),
        0.95,
        "kept"
    );
    // A cyber rule hit is the combiner's to overrule.
    assert_eq!(s.get(crate::domain::Category::CyberAttack), 0.0);
}

#[test]
fn long_texts_keep_their_opening_and_their_end() {
    let mut ids: Vec<u32> = (0..1000).collect();
    clip_pieces(&mut ids);
    assert_eq!(ids.len(), MAX_PIECES);
    assert_eq!(ids[..3], [0, 1, 2]);
    assert_eq!(ids[MAX_PIECES - 1], 999);
    let mut short: Vec<u32> = (0..10).collect();
    clip_pieces(&mut short);
    assert_eq!(short.len(), 10);
}
