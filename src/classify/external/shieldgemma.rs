//! ShieldGemma over chat completions with logprobs: one request per policy, each scored by
//! P(Yes) from the first answer token's top logprobs. Pure: no I/O.
//!
//! The previous assistant turn is not sent: the prompt-classification template judges the user
//! message alone.

use serde_json::{Value, json};

use super::config::{ExternalConfig, ShieldPolicy, Target};
use super::{Failure, Judgement};

/// The request bodies for `text`, one per policy, in the order of `policies`.
pub fn requests(config: &ExternalConfig, policies: &[ShieldPolicy], text: &str) -> Vec<Value> {
    policies
        .iter()
        .map(|policy| {
            json!({
                "model": config.model,
                "messages": [{ "role": "user", "content": prompt(text, policy) }],
                "max_tokens": 1,
                "temperature": 0,
                "logprobs": true,
                "top_logprobs": 5,
            })
        })
        .collect()
}

/// ShieldGemma's prompt for a user message and one policy (its model card's template).
pub fn prompt(text: &str, policy: &ShieldPolicy) -> String {
    let principle = if policy.name.is_empty() {
        policy.text.clone()
    } else {
        format!("\"{}\": {}", policy.name, policy.text)
    };
    format!(
        "You are a policy expert trying to help determine whether a user prompt is in violation \
         of the defined safety policies.\n\n\
         <start_of_turn>\nHuman Question: {text}\n<end_of_turn>\n\n\
         Our safety principle is defined in the below:\n\n\
         * {principle}\n\n\
         Does the human question violate the above principle? Your answer must start with 'Yes' \
         or 'No'. And then walk through step by step to be sure we answer correctly.\n"
    )
}

/// P(Yes) in one chat-completions answer: `e^yes / (e^yes + e^no)` over
/// `choices[0].logprobs.content[0].top_logprobs` (tokens trimmed, any case; several spellings
/// of one answer add up). An answer with neither token is a [`Failure::Parse`].
pub fn p_yes(body: &[u8]) -> Result<f32, Failure> {
    let answer: Value = serde_json::from_slice(body).map_err(|_| Failure::Parse)?;
    let top = answer
        .pointer("/choices/0/logprobs/content/0/top_logprobs")
        .and_then(Value::as_array)
        .ok_or(Failure::Parse)?;
    let (mut yes, mut no) = (Vec::new(), Vec::new());
    for entry in top {
        let token = entry
            .get("token")
            .and_then(Value::as_str)
            .ok_or(Failure::Parse)?;
        let logprob = entry
            .get("logprob")
            .and_then(Value::as_f64)
            .ok_or(Failure::Parse)?;
        let token = token.trim();
        if token.eq_ignore_ascii_case("yes") {
            yes.push(logprob);
        } else if token.eq_ignore_ascii_case("no") {
            no.push(logprob);
        }
    }
    if yes.is_empty() && no.is_empty() {
        return Err(Failure::Parse);
    }
    let (yes, no) = (log_sum_exp(&yes), log_sum_exp(&no));
    // 1 / (1 + e^(no - yes)), which stays finite however small both are.
    let p = if no == f64::NEG_INFINITY {
        1.0
    } else if yes == f64::NEG_INFINITY {
        0.0
    } else {
        1.0 / (1.0 + (no - yes).exp())
    };
    Ok(p as f32)
}

fn log_sum_exp(xs: &[f64]) -> f64 {
    let max = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if max == f64::NEG_INFINITY {
        return max;
    }
    max + xs.iter().map(|x| (x - max).exp()).sum::<f64>().ln()
}

/// The judgement from one answer per policy (`bodies` in the order of `policies`).
pub fn parse(
    config: &ExternalConfig,
    policies: &[ShieldPolicy],
    bodies: &[bytes::Bytes],
) -> Result<Judgement, Failure> {
    if bodies.len() != policies.len() {
        return Err(Failure::Parse);
    }
    let mut judgement = Judgement::default();
    for (policy, body) in policies.iter().zip(bodies) {
        let p = p_yes(body)?;
        match policy.target {
            Target::Category(c) => {
                let i = c.index();
                judgement.scores[i] = judgement.scores[i].max(p);
                judgement.flagged[i] |= p >= config.shieldgemma.threshold;
            }
            Target::CrisisSelf => judgement.crisis_self = judgement.crisis_self.max(p),
            Target::CrisisOthers => judgement.crisis_others = judgement.crisis_others.max(p),
            Target::Ignore => {}
        }
    }
    Ok(judgement)
}
