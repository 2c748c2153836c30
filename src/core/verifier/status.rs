//! What a verifier's status says after a reconcile: a pure function of what the reconcile found.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

use crate::api::verifier::ApiTokenVerifierStatus;
use crate::core::conditions::flipped_condition;
use crate::core::verifier::render::{Overflow, Rendered};

/// What one reconcile found, for status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Tokens rendered; `None` when nothing was rendered (the last count stays).
    pub tokens: Option<u32>,
    pub rejected: u32,
    pub excluded: u32,
    pub reason: String,
    pub message: String,
    pub ok: bool,
    /// Waits on a human: `Stalled=True`.
    pub stalled: bool,
}

impl Outcome {
    /// The spec cannot be rendered: `Ready=False, reason=InvalidSpec`, stalled; nothing written.
    pub fn invalid(message: String) -> Self {
        Outcome {
            tokens: None,
            rejected: 0,
            excluded: 0,
            reason: "InvalidSpec".to_owned(),
            message,
            ok: false,
            stalled: true,
        }
    }

    /// An output's Secret `name` belongs to someone else and was left untouched.
    pub fn foreign(rendered: &Rendered, rejected: u32, name: &str) -> Self {
        Outcome {
            tokens: Some(count(rendered.tokens)),
            rejected,
            excluded: 0,
            reason: "SecretConflict".to_owned(),
            message: format!(
                "Secret {name} exists and is not controlled by this ApiTokenVerifier; it is left untouched"
            ),
            ok: false,
            stalled: true,
        }
    }

    /// Every output written from `rendered`: `Rendered`, or `OutputTooLarge` when an output
    /// overflowed (`overflow` says which); `excluded` tokens were left out alone.
    pub fn rendered(
        rendered: &Rendered,
        outputs: usize,
        rejected: u32,
        excluded: u32,
        overflow: Option<String>,
    ) -> Self {
        let tokens = Some(count(rendered.tokens));
        if let Some(message) = overflow {
            return Outcome {
                tokens,
                rejected,
                excluded,
                reason: Overflow::REASON.to_owned(),
                message,
                ok: false,
                stalled: false,
            };
        }
        let left_out = match rendered.excluded.as_slice() {
            [] => String::new(),
            [first, ..] => format!(
                "; {excluded} left out ({}: {first}{})",
                first.reason(),
                if rendered.excluded.len() > 1 {
                    ", and more"
                } else {
                    ""
                }
            ),
        };
        Outcome {
            tokens,
            rejected,
            excluded,
            reason: "Rendered".to_owned(),
            message: format!(
                "{} credentials of {} tokens in {outputs} outputs{left_out}",
                rendered.credentials, rendered.tokens,
            ),
            ok: true,
            stalled: false,
        }
    }

    /// The status to apply over `last`, for the verifier at `generation`.
    pub fn status(
        &self,
        last: &ApiTokenVerifierStatus,
        generation: Option<i64>,
        now: Timestamp,
    ) -> ApiTokenVerifierStatus {
        let mut conditions = vec![self.condition(last, "Ready", self.ok, generation, now)];
        if self.stalled {
            conditions.push(self.condition(last, "Stalled", true, generation, now));
        }
        ApiTokenVerifierStatus {
            observed_generation: generation,
            tokens: self.tokens.or(last.tokens),
            rejected: Some(self.rejected),
            excluded: (self.excluded > 0).then_some(self.excluded),
            conditions,
        }
    }

    fn condition(
        &self,
        last: &ApiTokenVerifierStatus,
        type_: &str,
        ok: bool,
        generation: Option<i64>,
        now: Timestamp,
    ) -> Condition {
        flipped_condition(
            &last.conditions,
            type_,
            generation,
            ok,
            &self.reason,
            self.message.clone(),
            now,
        )
    }
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rendered(tokens: usize, credentials: usize) -> Rendered {
        Rendered {
            tokens,
            credentials,
            ..Rendered::default()
        }
    }

    #[test]
    fn a_render_is_ready_and_counts_what_it_holds() {
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let outcome = Outcome::rendered(&rendered(3, 4), 2, 1, 0, None);
        let status = outcome.status(&ApiTokenVerifierStatus::default(), Some(5), now);
        assert_eq!(status.tokens, Some(3));
        assert_eq!(status.rejected, Some(1));
        assert_eq!(status.excluded, None);
        assert_eq!(status.observed_generation, Some(5));
        let [ready] = status.conditions.as_slice() else {
            panic!("{:?}", status.conditions)
        };
        assert_eq!(
            (
                ready.type_.as_str(),
                ready.status.as_str(),
                ready.reason.as_str()
            ),
            ("Ready", "True", "Rendered")
        );
        assert_eq!(ready.message, "4 credentials of 3 tokens in 2 outputs");
    }

    #[test]
    fn an_invalid_spec_or_a_foreign_secret_stalls_and_keeps_the_last_count() {
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let last = ApiTokenVerifierStatus {
            tokens: Some(7),
            ..ApiTokenVerifierStatus::default()
        };
        let status = Outcome::invalid("spec.outputs: empty".into()).status(&last, Some(2), now);
        assert_eq!(
            status.tokens,
            Some(7),
            "nothing rendered: the last count stays"
        );
        let types: Vec<_> = status
            .conditions
            .iter()
            .map(|c| (c.type_.as_str(), c.status.as_str(), c.reason.as_str()))
            .collect();
        assert_eq!(
            types,
            [
                ("Ready", "False", "InvalidSpec"),
                ("Stalled", "True", "InvalidSpec")
            ]
        );
        let foreign = Outcome::foreign(&rendered(2, 2), 0, "theirs");
        assert!(foreign.stalled && !foreign.ok);
        assert!(foreign.message.contains("Secret theirs exists"));
    }

    #[test]
    fn an_overflow_is_not_ready_but_not_stalled() {
        let outcome = Outcome::rendered(&rendered(1, 1), 1, 0, 0, Some("too big".into()));
        assert_eq!(outcome.reason, Overflow::REASON);
        assert!(!outcome.ok && !outcome.stalled);
    }
}
