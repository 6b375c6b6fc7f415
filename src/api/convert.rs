//! Domain ↔ wire: enums one to one, and a domain verdict dressed with the policy's text and
//! the crisis directory's resources.

use super::pb;
use crate::crisis::Directory;
use crate::domain::{CATEGORY_COUNT, Category, CrisisKind, Scores};
use crate::policy::{Action, Policy, Reason, Summary, Verdict};

/// The wire category of a domain category.
pub fn category_to_pb(c: Category) -> pb::Category {
    match c {
        Category::ChildSexualExploitation => pb::Category::ChildSexualExploitation,
        Category::IndiscriminateWeapons => pb::Category::IndiscriminateWeapons,
        Category::ViolentExtremism => pb::Category::ViolentExtremism,
        Category::ViolentCrime => pb::Category::ViolentCrime,
        Category::CyberAttack => pb::Category::CyberAttack,
        Category::Abuse => pb::Category::Abuse,
        Category::Hate => pb::Category::Hate,
        Category::Sexual => pb::Category::Sexual,
        Category::SelfHarm => pb::Category::SelfHarm,
        Category::HarmToOthers => pb::Category::HarmToOthers,
    }
}

/// The domain category of a (specified) wire category.
pub fn category_from_pb(c: pb::Category) -> Category {
    // The wire enum is the domain enum shifted by UNSPECIFIED = 0.
    let i = (c as i32 - 1).clamp(0, CATEGORY_COUNT as i32 - 1) as usize;
    Category::ALL[i]
}

/// The wire action.
pub fn action_to_pb(a: Action) -> pb::Action {
    match a {
        Action::Continue => pb::Action::Continue,
        Action::Redirect => pb::Action::Redirect,
        Action::End => pb::Action::End,
    }
}

/// The wire reason.
pub fn reason_to_pb(r: Reason) -> pb::Reason {
    match r {
        Reason::Benign => pb::Reason::Benign,
        Reason::HarmfulRequest => pb::Reason::HarmfulRequest,
        Reason::Abuse => pb::Reason::Abuse,
        Reason::Crisis => pb::Reason::Crisis,
        Reason::PersistentHarm => pb::Reason::PersistentHarm,
        Reason::PersistentAbuse => pb::Reason::PersistentAbuse,
        Reason::UserRequested => pb::Reason::UserRequested,
        Reason::ModelRequested => pb::Reason::ModelRequested,
        Reason::AlreadyEnded => pb::Reason::AlreadyEnded,
        Reason::AssistantOutput => pb::Reason::AssistantOutput,
    }
}

/// The wire crisis kind.
pub fn crisis_kind_to_pb(k: CrisisKind) -> pb::CrisisKind {
    match k {
        CrisisKind::SelfHarm => pb::CrisisKind::SelfHarm,
        CrisisKind::HarmToOthers => pb::CrisisKind::HarmToOthers,
        CrisisKind::ThirdParty => pb::CrisisKind::ThirdParty,
    }
}

/// The wire summary.
pub fn summary_to_pb(s: &Summary) -> pb::ThreadSummary {
    pb::ThreadSummary {
        turn: s.turn,
        harmful_turns: u32::from(s.harmful_turns),
        redirects: u32::from(s.redirects),
        warned: s.warned,
        ended: s.ended,
        crisis_active: s.crisis_active,
        crisis_suspected: s.crisis_suspected,
        exposures: u32::from(s.exposures),
    }
}

/// Everything `verdict_to_pb` needs besides the domain verdict.
pub struct Dress<'a> {
    pub policy: &'a Policy,
    pub directory: &'a Directory,
    pub thread_id: &'a str,
    pub locale: &'a str,
    pub scores: &'a Scores,
}

/// The full wire verdict: the domain decision plus guidance, notices and resources.
pub fn verdict_to_pb(v: &Verdict, d: &Dress<'_>) -> pb::Verdict {
    let m = &d.policy.messages;
    let categories = Category::ALL
        .into_iter()
        .filter(|c| d.scores.get(*c) > 0.0)
        .map(|c| pb::CategoryScore {
            category: category_to_pb(c) as i32,
            score: d.scores.get(c),
        })
        .collect();
    let decided_redirect = v.action == Action::Redirect || v.shadow_action == Action::Redirect;
    let redirect = if decided_redirect || v.warning {
        let base = match v.reason {
            Reason::Abuse | Reason::PersistentAbuse => &m.redirect_abuse,
            Reason::Crisis => &m.redirect_crisis,
            Reason::AssistantOutput => &m.redirect_assistant_output,
            _ => &m.redirect_harm,
        };
        let guidance = if v.warning {
            format!("{base} {}", m.warning)
        } else {
            base.clone()
        };
        Some(pb::Redirect {
            guidance,
            warning: v.warning,
            user_notice: if v.warning {
                m.warning_user_notice.clone()
            } else {
                String::new()
            },
        })
    } else if v.end_confirmation_required {
        // CONTINUE, but the model must ask the user to confirm: the guidance says how.
        Some(pb::Redirect {
            guidance: m.end_confirmation.clone(),
            warning: false,
            user_notice: String::new(),
        })
    } else {
        None
    };
    let end = (v.action == Action::End || v.shadow_action == Action::End).then(|| {
        let message = match v.reason {
            Reason::UserRequested => &m.end_notice_user_requested,
            _ => &m.end_notice,
        };
        pb::EndNotice {
            message: message.clone(),
            options: vec![
                pb::UserOption::NewChat as i32,
                pb::UserOption::EditAndRetry as i32,
                pb::UserOption::Feedback as i32,
            ],
        }
    });
    let crisis = v.crisis.map(|kind| {
        let support = d.directory.support(kind, d.locale);
        pb::CrisisSupport {
            kind: crisis_kind_to_pb(kind) as i32,
            message: support.message.to_string(),
            guidance: support.guidance.to_string(),
            resources: support
                .resources
                .iter()
                .map(|r| pb::CrisisResource {
                    name: r.name.clone(),
                    phone: r.phone.clone(),
                    sms: r.sms.clone(),
                    url: r.url.clone(),
                    hours: r.hours.clone(),
                    country: r.country.clone(),
                })
                .collect(),
        }
    });
    pb::Verdict {
        thread_id: d.thread_id.to_string(),
        action: action_to_pb(v.action) as i32,
        reason: reason_to_pb(v.reason) as i32,
        categories,
        redirect,
        end,
        crisis,
        thread: Some(summary_to_pb(&v.summary)),
        enforced: v.enforced,
        shadow_action: action_to_pb(v.shadow_action) as i32,
        end_confirmation_required: v.end_confirmation_required,
        end_denied: v.end_denied.is_some(),
        end_denied_detail: v
            .end_denied
            .map(|d| d.code().to_string())
            .unwrap_or_default(),
        policy_version: d.policy.version.clone(),
        truncated: v.truncated,
        replayed: v.replayed,
        degraded: false,
        tiers: Vec::new(),
        external: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn categories_round_trip_through_the_wire() {
        for c in Category::ALL {
            assert_eq!(category_from_pb(category_to_pb(c)), c);
        }
    }
}
