//! OpenAI's moderation API (`POST /v1/moderations`) and compatible servers: the request and
//! the parsing of its answer. Pure: no I/O.
//!
//! The previous assistant turn is not sent: the API judges one input.
//!
//! A crisis target takes the category's score, raised to at least [`FLAGGED_CRISIS`] when the
//! API flags the category: the API flags with its own calibrated thresholds, and a crisis it
//! flagged must reach the default crisis threshold (0.5) even when its raw score is low.

use serde_json::{Map, Value, json};

use super::config::{ExternalConfig, Target};
use super::{Failure, Judgement};

/// The crisis score a flagged crisis category stands for at least.
pub const FLAGGED_CRISIS: f32 = 0.5;

/// The request body for `text`.
pub fn request(config: &ExternalConfig, text: &str) -> Value {
    let mut body = json!({ "input": text });
    if !config.model.is_empty() {
        body["model"] = Value::String(config.model.clone());
    }
    body
}

/// The judgement in an answer `{"results": [{"categories": {..}, "category_scores": {..}}]}`;
/// several results (never sent, but allowed) merge by maximum.
pub fn parse(config: &ExternalConfig, body: &[u8]) -> Result<Judgement, Failure> {
    let answer: Value = serde_json::from_slice(body).map_err(|_| Failure::Parse)?;
    let results = answer
        .get("results")
        .and_then(Value::as_array)
        .filter(|r| !r.is_empty())
        .ok_or(Failure::Parse)?;
    let mut judgement = Judgement::default();
    for result in results {
        let flags = object(result, "categories")?;
        let scores = object(result, "category_scores")?;
        let mut names: Vec<&String> = flags.keys().chain(scores.keys()).collect();
        names.sort_unstable();
        names.dedup();
        for name in names {
            let flagged = match flags.get(name) {
                None | Some(Value::Null) => false,
                Some(v) => v.as_bool().ok_or(Failure::Parse)?,
            };
            let score = match scores.get(name) {
                None | Some(Value::Null) => 0.0,
                Some(v) => v.as_f64().ok_or(Failure::Parse)?.clamp(0.0, 1.0) as f32,
            };
            match config.target(name) {
                Some(Target::Category(c)) => {
                    let i = c.index();
                    judgement.scores[i] = judgement.scores[i].max(score);
                    judgement.flagged[i] |= flagged;
                }
                Some(Target::CrisisSelf) => {
                    judgement.crisis_self = judgement.crisis_self.max(crisis(score, flagged));
                }
                Some(Target::CrisisOthers) => {
                    judgement.crisis_others = judgement.crisis_others.max(crisis(score, flagged));
                }
                Some(Target::Ignore) => {}
                None => judgement.unknown_codes += 1,
            }
        }
    }
    Ok(judgement)
}

fn object<'a>(result: &'a Value, field: &str) -> Result<&'a Map<String, Value>, Failure> {
    result
        .get(field)
        .and_then(Value::as_object)
        .ok_or(Failure::Parse)
}

fn crisis(score: f32, flagged: bool) -> f32 {
    if flagged {
        score.max(FLAGGED_CRISIS)
    } else {
        score
    }
}
