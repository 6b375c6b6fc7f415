//! Llama Guard 3/4 over chat completions (`POST /v1/chat/completions`): the request, in either
//! prompt mode, and the parsing of the `safe` / `unsafe\nS1,S10` answer. Pure: no I/O.
//!
//! `unsafe` with no category code is a [`Failure::Parse`], not a judgement: a judgement that
//! flags nothing would read as the model disagreeing with the built-in tiers (and could veto an
//! END it confirms), while the model said the opposite. As a failure the built-in tiers decide
//! alone, as for any answer threadwarden cannot read.

use serde_json::{Value, json};

use super::config::{ExternalConfig, Prompt, Target};
use super::{Failure, Judgement};

/// The answer's token budget: `unsafe` and a few codes.
const MAX_TOKENS: u32 = 24;

/// Llama Guard 3's categories, in its prompt's words.
const CATEGORIES: [&str; 14] = [
    "S1: Violent Crimes.",
    "S2: Non-Violent Crimes.",
    "S3: Sex Crimes.",
    "S4: Child Exploitation.",
    "S5: Defamation.",
    "S6: Specialized Advice.",
    "S7: Privacy.",
    "S8: Intellectual Property.",
    "S9: Indiscriminate Weapons.",
    "S10: Hate.",
    "S11: Self-Harm.",
    "S12: Sexual Content.",
    "S13: Elections.",
    "S14: Code Interpreter Abuse.",
];

/// The request body for `text`, after `context` (the previous assistant turn) when given.
pub fn request(config: &ExternalConfig, text: &str, context: Option<&str>) -> Value {
    let messages = match (config.prompt, context) {
        (Prompt::ServerTemplate, None) => json!([{ "role": "user", "content": text }]),
        // The template wants turns to alternate from a user turn.
        (Prompt::ServerTemplate, Some(context)) => json!([
            { "role": "user", "content": "" },
            { "role": "assistant", "content": context },
            { "role": "user", "content": text },
        ]),
        (Prompt::LlamaGuard3, context) => {
            json!([{ "role": "user", "content": llama_guard_3_prompt(text, context) }])
        }
    };
    json!({
        "model": config.model,
        "messages": messages,
        "temperature": 0,
        "max_tokens": MAX_TOKENS,
    })
}

/// Llama Guard 3's own prompt (its model card's format) for the last user message `text`.
pub fn llama_guard_3_prompt(text: &str, context: Option<&str>) -> String {
    let mut conversation = String::new();
    if let Some(context) = context {
        conversation.push_str("Agent: ");
        conversation.push_str(context);
        conversation.push_str("\n\n");
    }
    conversation.push_str("User: ");
    conversation.push_str(text);
    format!(
        "Task: Check if there is unsafe content in 'User' messages in conversations according our \
         safety policy with the below categories.\n\n\
         <BEGIN UNSAFE CONTENT CATEGORIES>\n{categories}\n<END UNSAFE CONTENT CATEGORIES>\n\n\
         <BEGIN CONVERSATION>\n\n{conversation}\n\n<END CONVERSATION>\n\n\
         Provide your safety assessment for ONLY THE LAST User message in the above conversation:\n \
         - First line must read 'safe' or 'unsafe'.\n \
         - If unsafe, a second line must include a comma-separated list of violated categories.",
        categories = CATEGORIES.join("\n"),
    )
}

/// The judgement in a chat-completions answer whose `choices[0].message.content` is Llama
/// Guard's verdict.
pub fn parse(config: &ExternalConfig, body: &[u8]) -> Result<Judgement, Failure> {
    let answer: Value = serde_json::from_slice(body).map_err(|_| Failure::Parse)?;
    let content = answer
        .pointer("/choices/0/message/content")
        .and_then(Value::as_str)
        .ok_or(Failure::Parse)?;
    verdict(config, content)
}

/// The judgement in Llama Guard's text: the first word `safe` or `unsafe` (any case, any
/// surrounding whitespace), then for `unsafe` the codes, split on commas and whitespace.
pub fn verdict(config: &ExternalConfig, content: &str) -> Result<Judgement, Failure> {
    let mut words = content
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|w| !w.is_empty());
    let first = words.next().ok_or(Failure::Parse)?;
    if first.eq_ignore_ascii_case("safe") {
        return Ok(Judgement::default());
    }
    if !first.eq_ignore_ascii_case("unsafe") {
        return Err(Failure::Parse);
    }
    let mut codes: Vec<String> = words.map(str::to_ascii_uppercase).collect();
    codes.sort_unstable();
    codes.dedup();
    if codes.is_empty() {
        return Err(Failure::Parse);
    }
    let mut judgement = Judgement::default();
    let score = config.unsafe_score;
    for code in &codes {
        match config.target(code) {
            Some(Target::Category(c)) => {
                judgement.scores[c.index()] = score;
                judgement.flagged[c.index()] = true;
            }
            Some(Target::CrisisSelf) => judgement.crisis_self = score,
            Some(Target::CrisisOthers) => judgement.crisis_others = score,
            Some(Target::Ignore) => {}
            None => judgement.unknown_codes += 1,
        }
    }
    Ok(judgement)
}
