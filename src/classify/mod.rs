//! TEMPORARY stub with the agreed API; replaced by the real classifier.
use crate::domain::{Category, Scores};
pub struct Classifier;
pub struct Explanation { pub normalized: String, pub hits: Vec<Hit>, pub scores: Scores }
pub struct Hit { pub rule: String, pub category: Option<Category>, pub signal: Option<&'static str>, pub weight: f32, pub span: (usize, usize), pub suppressed: bool }
impl Classifier {
    pub fn builtin() -> Classifier { Classifier }
    pub fn classify(&self, text: &str) -> Scores {
        let t = text.to_lowercase();
        let mut s = Scores::default();
        if t.contains("nerve agent") { s.raise(Category::IndiscriminateWeapons, 0.9); }
        if t.contains("idiot") { s.raise(Category::Abuse, 0.9); }
        if t.contains("kill myself") { s.crisis_self = 0.9; }
        if t.contains("end this chat") { s.end_request = 0.9; }
        if t.trim() == "yes" { s.affirmation = 0.9; }
        s
    }
    pub fn classify_bounded(&self, text: &str, window: usize) -> Scores {
        let mut s = self.classify(text); s.truncated = text.len() > 2 * window; s
    }
    pub fn explain(&self, text: &str) -> Explanation { Explanation { normalized: text.to_lowercase(), hits: vec![], scores: self.classify(text) } }
}
