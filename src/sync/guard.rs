//! The mass-disappearance guard: when one cycle would newly mark most of the fleet missing,
//! the API is far likelier to be answering for another fleet (a wrong tenant or API host, a
//! revoked consent, a proxy answering in its place) than the fleet to be gone. Marking it
//! would page on-call once per agent, so nothing is marked, the run fails saying why, and one
//! `ScanAgentFleetVanished` alert fires instead. A real decommission goes through with
//! `sync --accept-mass-missing`.

/// Below this many known agents a share says little (two of three agents gone is news, not
/// a wrong tenant), so the guard stays out of the way.
pub const MIN_KNOWN: u64 = 10;

/// At least this many by-ID answers, all 404, are taken for a wrong URL rather than news,
/// however few agents are known.
const UNANIMOUS_NOT_FOUND: u64 = 2;

/// How a cycle's missing agents are judged.
#[derive(Debug, Clone, Copy)]
pub struct Guard {
    /// `stale.mass_missing_guard`: the share of known agents that may vanish in one cycle.
    pub share: f64,
    /// `sync --accept-mass-missing`: mark them anyway.
    pub accept: bool,
}

/// The guard's answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Mark the agents missing.
    Mark,
    /// Mark none: the fleet probably did not vanish, the answers are wrong. The text is the
    /// run's error.
    Refuse { error: String, alert: bool },
}

impl Guard {
    /// A complete list would newly mark `vanishing` of `known` agents missing.
    pub fn judge_list(&self, vanishing: u64, known: u64) -> Verdict {
        if !self.too_many(vanishing, known) {
            return Verdict::Mark;
        }
        Verdict::Refuse {
            error: format!(
                "{vanishing} of the {known} known agents are absent from a complete list (more than \
                 stale.mass_missing_guard = {}), so none was marked missing. {}",
                self.share,
                causes()
            ),
            alert: true,
        }
    }

    /// Of `answered` by-ID requests, `not_found` answered 404 and `vanishing` of those would
    /// newly be marked missing.
    pub fn judge_by_id(&self, vanishing: u64, not_found: u64, answered: u64) -> Verdict {
        if self.too_many(vanishing, answered) {
            return Verdict::Refuse {
                error: format!(
                    "{vanishing} of the {answered} agents asked for answered 404 Not Found and would newly \
                     be missing (more than stale.mass_missing_guard = {}), so none was marked missing. {}",
                    self.share,
                    causes()
                ),
                alert: true,
            };
        }
        // A wrong path answers 404 too; with every answer a 404 that is likelier than every
        // agent deleted at once, whatever the guard's share.
        if !self.accept && not_found == answered && answered >= UNANIMOUS_NOT_FOUND {
            return Verdict::Refuse {
                error: format!(
                    "all {answered} agents asked for answered 404 Not Found, so none was marked missing: \
                     check defender.api_base_url (a wrong host or path answers 404 too); if the agents \
                     really were removed from Defender, remove them from agents.ids / agents.ids_file"
                ),
                alert: false,
            };
        }
        Verdict::Mark
    }

    fn too_many(&self, vanishing: u64, known: u64) -> bool {
        !self.accept && known >= MIN_KNOWN && vanishing as f64 > self.share * known as f64
    }
}

fn causes() -> &'static str {
    "The API probably answers for another fleet: check defender.tenant_id and defender.api_base_url, \
     whether an administrator revoked the app's consent, and whether a proxy answers for the API. If the \
     agents really were decommissioned, run `scan-agent-sync sync --accept-mass-missing` once."
}

#[cfg(test)]
mod tests {
    use super::*;

    const GUARD: Guard = Guard { share: 0.5, accept: false };

    #[test]
    fn more_than_the_share_of_at_least_ten_known_agents_is_refused() {
        assert_eq!(GUARD.judge_list(5, 10), Verdict::Mark, "exactly the share is allowed");
        assert!(matches!(GUARD.judge_list(6, 10), Verdict::Refuse { alert: true, .. }));
        assert_eq!(GUARD.judge_list(9, 9), Verdict::Mark, "too few known agents to judge");
        assert_eq!(Guard { accept: true, ..GUARD }.judge_list(100, 100), Verdict::Mark);
        let Verdict::Refuse { error, .. } = GUARD.judge_list(94_902, 100_000) else { panic!() };
        assert!(error.contains("94902 of the 100000") && error.contains("--accept-mass-missing"), "{error}");
    }

    #[test]
    fn by_id_answers_are_judged_by_share_and_by_unanimity() {
        assert!(matches!(GUARD.judge_by_id(8, 8, 10), Verdict::Refuse { alert: true, .. }));
        assert_eq!(GUARD.judge_by_id(1, 1, 10), Verdict::Mark);
        // Two agents, both 404: a wrong URL, refused without a fleet alert.
        let Verdict::Refuse { error, alert } = GUARD.judge_by_id(2, 2, 2) else { panic!() };
        assert!(!alert && error.contains("defender.api_base_url"), "{error}");
        assert_eq!(GUARD.judge_by_id(1, 1, 1), Verdict::Mark, "one 404 is news");
        assert_eq!(Guard { accept: true, ..GUARD }.judge_by_id(2, 2, 2), Verdict::Mark);
    }
}
