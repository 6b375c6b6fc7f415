//! Validation of incoming events: every rejection names the field and says what is wrong.

use super::EventError;
use super::pb;
use crate::domain::{Category, Scores};

/// Longest id (event, thread, tenant, model) accepted, in bytes.
pub const MAX_ID_BYTES: usize = 256;
/// Most caller signals accepted on one event.
pub const MAX_SIGNALS: usize = 32;

/// Whether an id is acceptable: present if required, at most `MAX_ID_BYTES`.
fn id_ok(value: &str, required: bool) -> bool {
    !(required && value.is_empty()) && value.len() <= MAX_ID_BYTES
}

/// What is wrong with an id that `id_ok` rejected.
#[cold]
fn id_problem(value: &str) -> String {
    if value.is_empty() {
        "must not be empty".into()
    } else {
        format!("is {} bytes; the limit is {MAX_ID_BYTES}", value.len())
    }
}

fn id(field: &str, value: &str, required: bool) -> Result<(), EventError> {
    if id_ok(value, required) {
        Ok(())
    } else {
        Err(EventError::invalid(field, id_problem(value)))
    }
}

/// Maps a wire category to the domain, rejecting UNSPECIFIED and unknown values (the error is
/// what is wrong with the value).
fn category(value: i32) -> Result<Category, String> {
    match pb::Category::try_from(value) {
        Ok(pb::Category::Unspecified) => Err("must be set".into()),
        Ok(c) => Ok(super::convert::category_from_pb(c)),
        Err(_) => Err(format!("unknown enum value {value}")),
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
    // Field names are formatted only for an error: a valid signal allocates nothing.
    for (i, s) in event.signals.iter().enumerate() {
        category(s.category)
            .map_err(|m| EventError::invalid(format!("signals[{i}].category"), m))?;
        if !(0.0..=1.0).contains(&s.score) {
            return Err(EventError::invalid(
                format!("signals[{i}].score"),
                format!("{} is not a score between 0 and 1", s.score),
            ));
        }
        if !id_ok(&s.source, false) {
            return Err(EventError::invalid(
                format!("signals[{i}].source"),
                id_problem(&s.source),
            ));
        }
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
        if let Ok(c) = category(s.category) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use pb::conversation_event::Payload;

    fn event_with(signals: Vec<pb::Signal>) -> pb::ConversationEvent {
        pb::ConversationEvent {
            event_id: "e1".into(),
            thread_id: "t1".into(),
            signals,
            payload: Some(Payload::UserMessage(pb::UserMessage {
                text: "hello".into(),
            })),
            ..Default::default()
        }
    }

    fn signal(category: i32, score: f32, source: &str) -> pb::Signal {
        pb::Signal {
            category,
            score,
            source: source.into(),
        }
    }

    /// Each bad signal is named by its index and field; good ones pass and are merged.
    #[test]
    fn signals_are_checked_field_by_field() {
        let weapons = pb::Category::IndiscriminateWeapons as i32;
        let good = event_with(vec![signal(weapons, 0.9, "upstream")]);
        assert!(event(&good).is_ok());
        let cases = [
            (
                vec![signal(weapons, 0.5, ""), signal(0, 0.5, "")],
                "signals[1].category: must be set",
            ),
            (
                vec![signal(99, 0.5, "")],
                "signals[0].category: unknown enum value 99",
            ),
            (
                vec![
                    signal(weapons, 0.5, ""),
                    signal(weapons, 0.5, &"s".repeat(300)),
                ],
                "signals[1].source: is 300 bytes; the limit is 256",
            ),
        ];
        for (signals, expected) in cases {
            let err = event(&event_with(signals)).unwrap_err();
            assert_eq!(err.to_string(), expected);
        }
        let mut scores = Scores::default();
        merge_signals(&mut scores, &good.signals);
        assert_eq!(scores.get(Category::IndiscriminateWeapons), 0.9);
    }
}
