//! The diff between what the database holds and what the API just returned.
//!
//! Pure: computing it touches no I/O, so `sync --dry-run` prints exactly what `sync`
//! would write, and the store applies exactly what was printed.

use std::collections::HashMap;
use std::fmt;

use chrono::{DateTime, SecondsFormat, Utc};

use crate::agent::{AgentRecord, Attributes};
use crate::agent_id::AgentId;

/// What the database holds for one agent, as far as diffing needs.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredAgent {
    pub attributes: Attributes,
    pub last_seen: DateTime<Utc>,
    pub last_command_execution_at: Option<DateTime<Utc>>,
    pub missing_since: Option<DateTime<Utc>>,
}

/// One field that differs, with both values as text for printing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldChange {
    pub field: &'static str,
    pub old: Option<String>,
    pub new: Option<String>,
}

/// How one fetched agent relates to its stored state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    New,
    Changed,
    Unchanged,
}

/// The diff for one fetched agent.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentDiff {
    pub id: AgentId,
    pub status: Status,
    pub fields: Vec<FieldChange>,
    /// A descriptive attribute changed: the current version closes and a new one opens.
    pub attributes_changed: bool,
    /// `last_seen` took a value not held before: one more `scan_agent_last_seen` row.
    pub last_seen_changed: bool,
    /// The agent was marked missing and the API returned it.
    pub returned: bool,
}

/// Everything one batch would change, in the order the agents were fetched.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Diff {
    /// One entry per distinct fetched agent, parallel to the deduplicated batch.
    pub agents: Vec<AgentDiff>,
    /// Stored agents the API confirmed absent that were not yet marked missing.
    pub went_missing: Vec<AgentId>,
    /// Confirmed absent and already marked: nothing to write.
    pub still_missing: usize,
    /// Confirmed absent but never stored: there is no row to mark (no `lastSeen` to keep).
    pub never_seen: Vec<AgentId>,
}

/// What a cycle changed, counted: a cycle applies batch after batch and keeps only this, so
/// its memory does not grow with the fleet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Tally {
    /// Agents seen for the first time.
    pub new: usize,
    /// Stored agents with at least one changed field (including returning from missing).
    pub changed: usize,
    /// Fetched agents identical to what is stored.
    pub unchanged: usize,
    /// Stored agents newly marked missing.
    pub went_missing: usize,
    /// Confirmed absent and already marked missing.
    pub still_missing: usize,
    /// Confirmed absent but never stored.
    pub never_seen: usize,
}

impl std::ops::AddAssign for Tally {
    fn add_assign(&mut self, other: Tally) {
        self.new += other.new;
        self.changed += other.changed;
        self.unchanged += other.unchanged;
        self.went_missing += other.went_missing;
        self.still_missing += other.still_missing;
        self.never_seen += other.never_seen;
    }
}

impl Diff {
    /// Compares a batch with the stored rows. `fetched` must hold each ID once (see
    /// [`dedup_batch`]); an ID both fetched and confirmed missing counts as fetched.
    pub fn compute(
        stored: &HashMap<AgentId, StoredAgent>,
        fetched: &[AgentRecord],
        missing: &[AgentId],
    ) -> Diff {
        Diff::compute_known(stored, fetched, &[], missing)
    }

    /// [`Diff::compute`], where `known_unchanged[i]` says the store already knows that
    /// `fetched[i]` is stored exactly as fetched and present (its fingerprint matched), so
    /// it is neither looked up in `stored` nor compared; a shorter slice means unknown.
    pub fn compute_known(
        stored: &HashMap<AgentId, StoredAgent>,
        fetched: &[AgentRecord],
        known_unchanged: &[bool],
        missing: &[AgentId],
    ) -> Diff {
        let agents: Vec<AgentDiff> = fetched
            .iter()
            .enumerate()
            .map(|(index, record)| match stored.get(&record.id) {
                None if known_unchanged.get(index) == Some(&true) => AgentDiff {
                    id: record.id.clone(),
                    status: Status::Unchanged,
                    fields: Vec::new(),
                    attributes_changed: false,
                    last_seen_changed: false,
                    returned: false,
                },
                None => AgentDiff {
                    id: record.id.clone(),
                    status: Status::New,
                    fields: Vec::new(),
                    attributes_changed: true,
                    last_seen_changed: true,
                    returned: false,
                },
                Some(old) => compare(old, record),
            })
            .collect();
        let fetched_ids: std::collections::HashSet<&AgentId> = fetched.iter().map(|r| &r.id).collect();
        let mut diff = Diff { agents, ..Diff::default() };
        for id in missing.iter().filter(|id| !fetched_ids.contains(id)) {
            match stored.get(id) {
                None => diff.never_seen.push(id.clone()),
                Some(old) if old.missing_since.is_some() => diff.still_missing += 1,
                Some(_) => diff.went_missing.push(id.clone()),
            }
        }
        diff
    }

    /// Agents seen for the first time.
    pub fn new_count(&self) -> usize {
        self.count(Status::New)
    }

    /// Stored agents with at least one changed field (including returning from missing).
    pub fn changed_count(&self) -> usize {
        self.count(Status::Changed)
    }

    /// Fetched agents identical to what is stored.
    pub fn unchanged_count(&self) -> usize {
        self.count(Status::Unchanged)
    }

    fn count(&self, status: Status) -> usize {
        self.agents.iter().filter(|a| a.status == status).count()
    }

    /// The counts of this diff.
    pub fn tally(&self) -> Tally {
        Tally {
            new: self.new_count(),
            changed: self.changed_count(),
            unchanged: self.unchanged_count(),
            went_missing: self.went_missing.len(),
            still_missing: self.still_missing,
            never_seen: self.never_seen.len(),
        }
    }

    /// Appends `other` (a later batch of the same cycle), keeping only what the dry-run report
    /// prints: unchanged agents are counted by [`Tally`], not kept.
    pub fn absorb(&mut self, other: Diff) {
        self.agents.extend(other.agents.into_iter().filter(|agent| agent.status != Status::Unchanged));
        self.went_missing.extend(other.went_missing);
        self.still_missing += other.still_missing;
        self.never_seen.extend(other.never_seen);
    }

    /// True when applying this diff would write no history and mark nothing.
    pub fn is_empty(&self) -> bool {
        self.went_missing.is_empty() && self.agents.iter().all(|a| a.status == Status::Unchanged)
    }
}

/// Keeps the last occurrence of each ID: pages fetched while the list changes may repeat
/// an agent, and the later copy is the fresher one.
pub fn dedup_batch(fetched: Vec<AgentRecord>) -> Vec<AgentRecord> {
    // Borrowed IDs: a list page's are a megabyte cloned, held next to the page.
    let keep: Vec<bool> = {
        let mut last_index: HashMap<&str, usize> = HashMap::with_capacity(fetched.len());
        for (i, record) in fetched.iter().enumerate() {
            last_index.insert(record.id.as_str(), i);
        }
        fetched.iter().enumerate().map(|(i, record)| last_index[record.id.as_str()] == i).collect()
    };
    fetched.into_iter().zip(keep).filter_map(|(record, keep)| keep.then_some(record)).collect()
}

fn compare(old: &StoredAgent, new: &AgentRecord) -> AgentDiff {
    let mut fields: Vec<FieldChange> = old
        .attributes
        .fields()
        .into_iter()
        .zip(new.attributes.fields())
        .filter(|((_, a), (_, b))| a != b)
        .map(|((field, a), (_, b))| FieldChange {
            field,
            old: a.map(str::to_owned),
            new: b.map(str::to_owned),
        })
        .collect();
    let attributes_changed = !fields.is_empty();
    let last_seen_changed = old.last_seen != new.last_seen;
    if last_seen_changed {
        fields.push(timestamp_change("last_seen", Some(old.last_seen), Some(new.last_seen)));
    }
    if old.last_command_execution_at != new.last_command_execution_at {
        fields.push(timestamp_change(
            "last_command_execution_at",
            old.last_command_execution_at,
            new.last_command_execution_at,
        ));
    }
    let returned = old.missing_since.is_some();
    if returned {
        fields.push(timestamp_change("missing_since", old.missing_since, None));
    }
    AgentDiff {
        id: new.id.clone(),
        status: if fields.is_empty() { Status::Unchanged } else { Status::Changed },
        fields,
        attributes_changed,
        last_seen_changed,
        returned,
    }
}

fn timestamp_change(
    field: &'static str,
    old: Option<DateTime<Utc>>,
    new: Option<DateTime<Utc>>,
) -> FieldChange {
    let text = |t: DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::AutoSi, true);
    FieldChange { field, old: old.map(text), new: new.map(text) }
}

/// The field-by-field lines of a diff, without the counts.
pub struct Changes<'a>(&'a Diff);

impl Diff {
    /// The lines `sync --dry-run` prints for each new, changed and missing agent.
    pub fn changes(&self) -> Changes<'_> {
        Changes(self)
    }
}

impl fmt::Display for Changes<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = |v: &Option<String>| v.clone().unwrap_or_else(|| "null".to_owned());
        for agent in &self.0.agents {
            match agent.status {
                Status::Unchanged => {}
                Status::New => writeln!(f, "new       {}", agent.id)?,
                Status::Changed => {
                    let label = if agent.returned { "returned" } else { "changed" };
                    writeln!(f, "{label:<9} {}", agent.id)?;
                    for change in &agent.fields {
                        writeln!(
                            f,
                            "            {}: {} -> {}",
                            change.field,
                            shown(&change.old),
                            shown(&change.new)
                        )?;
                    }
                }
            }
        }
        for id in &self.0.went_missing {
            writeln!(f, "missing   {id}")?;
        }
        for id in &self.0.never_seen {
            writeln!(f, "not found {id} (never stored; nothing to mark)")?;
        }
        Ok(())
    }
}

impl fmt::Display for Tally {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} new, {} changed, {} unchanged, {} newly missing, {} still missing",
            self.new, self.changed, self.unchanged, self.went_missing, self.still_missing
        )
    }
}

/// The field-by-field report: every change, then the counts.
impl fmt::Display for Diff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.changes())?;
        writeln!(f, "{}", self.tally())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record(id: &str, version: &str, seen: &str) -> AgentRecord {
        AgentRecord::from_json(json!({"id": id, "lastSeen": seen, "scannerSoftwareVersion": version}))
            .unwrap()
    }

    fn stored(r: &AgentRecord) -> StoredAgent {
        StoredAgent {
            attributes: r.attributes.clone(),
            last_seen: r.last_seen,
            last_command_execution_at: r.last_command_execution_at,
            missing_since: None,
        }
    }

    #[test]
    fn classifies_new_changed_unchanged_and_missing() {
        let a = record("a", "1", "2024-01-01T00:00:00Z");
        let b = record("b", "1", "2024-01-01T00:00:00Z");
        let mut db = HashMap::new();
        db.insert(a.id.clone(), stored(&a));
        db.insert(AgentId::parse("gone").unwrap(), stored(&record("gone", "1", "2024-01-01T00:00:00Z")));
        let a2 = record("a", "2", "2024-01-01T00:00:00Z");
        let missing = vec![AgentId::parse("gone").unwrap(), AgentId::parse("ghost").unwrap()];
        let diff = Diff::compute(&db, &[a2, b], &missing);
        assert_eq!(diff.agents[0].status, Status::Changed);
        assert!(diff.agents[0].attributes_changed && !diff.agents[0].last_seen_changed);
        assert_eq!(
            diff.agents[0].fields,
            vec![FieldChange {
                field: "scanner_software_version",
                old: Some("1".into()),
                new: Some("2".into())
            }]
        );
        assert_eq!(diff.agents[1].status, Status::New);
        assert_eq!(diff.went_missing, vec![AgentId::parse("gone").unwrap()]);
        assert_eq!(diff.never_seen, vec![AgentId::parse("ghost").unwrap()]);
        let text = diff.to_string();
        assert!(text.contains("scanner_software_version: 1 -> 2"), "{text}");
        assert!(text.contains("1 new, 1 changed, 0 unchanged, 1 newly missing"), "{text}");
    }

    #[test]
    fn identical_record_is_unchanged_and_returned_agent_is_a_change() {
        let a = record("a", "1", "2024-01-01T00:00:00Z");
        let mut db = HashMap::new();
        db.insert(a.id.clone(), stored(&a));
        assert!(Diff::compute(&db, std::slice::from_ref(&a), &[]).is_empty());
        db.get_mut(&a.id).unwrap().missing_since = Some(a.last_seen);
        let diff = Diff::compute(&db, &[a], &[]);
        assert!(diff.agents[0].returned && !diff.agents[0].attributes_changed);
        assert_eq!(diff.changed_count(), 1);
    }

    #[test]
    fn known_unchanged_agents_are_unchanged_without_a_stored_row() {
        let a = record("a", "1", "2024-01-01T00:00:00Z");
        let b = record("b", "1", "2024-01-01T00:00:00Z");
        let c = record("c", "1", "2024-01-01T00:00:00Z");
        let diff = Diff::compute_known(&HashMap::new(), &[a, b, c], &[true, false], &[]);
        let statuses: Vec<Status> = diff.agents.iter().map(|agent| agent.status).collect();
        // Past the end of the slice, as for `false`, an agent not stored is new.
        assert_eq!(statuses, vec![Status::Unchanged, Status::New, Status::New]);
        assert!(!diff.agents[0].attributes_changed && !diff.agents[0].last_seen_changed);
    }

    #[test]
    fn dedup_keeps_the_last_copy() {
        let batch = vec![
            record("a", "1", "2024-01-01T00:00:00Z"),
            record("b", "1", "2024-01-01T00:00:00Z"),
            record("a", "2", "2024-01-01T00:00:00Z"),
        ];
        let kept = dedup_batch(batch);
        assert_eq!(kept.len(), 2);
        assert_eq!(kept[1].attributes.scanner_software_version.as_deref(), Some("2"));
    }
}
