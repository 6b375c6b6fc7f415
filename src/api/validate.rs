//! Validation of incoming events: every rejection names the field and says what is wrong.

use super::EventError;
use super::pb;
use crate::domain::{Category, Scores};

/// Longest id (event, thread, tenant, model) accepted, in bytes.
pub const MAX_ID_BYTES: usize = 256;
/// Most caller signals accepted on one event.
pub const MAX_SIGNALS: usize = 32;

fn id(field: &str, value: &str, required: bool) -> Result<(), EventError> {
    if required && value.is_empty() {
        return Err(EventError::invalid(field, "must not be empty"));
    }
    if value.len() > MAX_ID_BYTES {
        return Err(EventError::invalid(
            field,
            format!("is {} bytes; the limit is {MAX_ID_BYTES}", value.len()),
        ));
    }
    Ok(())
}

/// Maps a wire category to the domain, rejecting UNSPECIFIED and unknown values.
pub fn category(field: &str, value: i32) -> Result<Category, EventError> {
    match pb::Category::try_from(value) {
        Ok(pb::Category::Unspecified) => Err(EventError::invalid(field, "must be set")),
        Ok(c) => Ok(super::convert::category_from_pb(c)),
        Err(_) => Err(EventError::invalid(
            field,
            format!("unknown enum value {value}"),
        )),
    }
}

/// Checks an event and returns its payload (signals are merged later by `merge_signals`).
pub fn event(
    event: &pb::ConversationEvent,
) -> Result<&pb::conversation_event::Payload, EventError> {
    id("event_id", &event.event_id, true)?;
    id("thread_id", &event.thread_id, true)?;
    id("tenant_id", &event.tenant_id, false)?;
    id("model", &event.model, false)?;
    if event.locale.len() > 64 {
        return Err(EventError::invalid("locale", "is longer than 64 bytes"));
    }
    if event.signals.len() > MAX_SIGNALS {
        return Err(EventError::invalid(
            "signals",
            format!(
                "{} signals; the limit is {MAX_SIGNALS}",
                event.signals.len()
            ),
        ));
    }
    for (i, s) in event.signals.iter().enumerate() {
        category(&format!("signals[{i}].category"), s.category)?;
        if !(0.0..=1.0).contains(&s.score) {
            return Err(EventError::invalid(
                format!("signals[{i}].score"),
                format!("{} is not a score between 0 and 1", s.score),
            ));
        }
        id(&format!("signals[{i}].source"), &s.source, false)?;
    }
    use pb::conversation_event::Payload;
    let payload = event.payload.as_ref().ok_or_else(|| {
        EventError::invalid(
            "payload",
            "one of user_message, assistant_message, fork or confirm_end is required",
        )
    })?;
    if let Payload::Fork(fork) = payload {
        id("fork.parent_thread_id", &fork.parent_thread_id, true)?;
        if fork.parent_thread_id == event.thread_id {
            return Err(EventError::invalid(
                "fork.parent_thread_id",
                "must differ from thread_id (thread_id names the new branch)",
            ));
        }
    }
    Ok(payload)
}

/// Merges already-validated caller signals into our scores (maximum per category).
pub fn merge_signals(scores: &mut Scores, signals: &[pb::Signal]) {
    for s in signals {
        if let Ok(c) = category("", s.category) {
            scores.raise(c, s.score);
            // A caller's self-harm or harm-to-others label is a crisis signal in its own right.
            match c {
                Category::SelfHarm => scores.crisis_self = scores.crisis_self.max(s.score),
                Category::HarmToOthers => scores.crisis_others = scores.crisis_others.max(s.score),
                _ => {}
            }
        }
    }
}

/// Checks a feedback request.
pub fn feedback(req: &pb::SubmitFeedbackRequest) -> Result<pb::Rating, EventError> {
    id("thread_id", &req.thread_id, true)?;
    id("tenant_id", &req.tenant_id, false)?;
    id("event_id", &req.event_id, true)?;
    if req.comment.len() > 4096 {
        return Err(EventError::invalid("comment", "is longer than 4096 bytes"));
    }
    match pb::Rating::try_from(req.rating) {
        Ok(pb::Rating::Unspecified) => Err(EventError::invalid("rating", "must be set")),
        Ok(r) => Ok(r),
        Err(_) => Err(EventError::invalid(
            "rating",
            format!("unknown enum value {}", req.rating),
        )),
    }
}

/// Checks a thread lookup.
pub fn thread_ref(tenant_id: &str, thread_id: &str) -> Result<(), EventError> {
    id("thread_id", thread_id, true)?;
    id("tenant_id", tenant_id, false)
}
