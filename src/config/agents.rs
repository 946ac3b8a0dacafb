//! The `[agents]` section: which agent IDs to track, inline and from a file that can be
//! re-read on SIGHUP.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::error::{ConfigError, ConfigProblem};
use super::{Finish, de};
use crate::agent_id::AgentId;

/// The tracked agent IDs.
#[derive(Debug, Clone)]
pub struct AgentsSettings {
    /// Inline IDs followed by those of `ids_file`, in order, without duplicates.
    pub ids: Vec<AgentId>,
    /// File with one ID per line, re-read by [`Self::reload`].
    pub ids_file: Option<PathBuf>,
    /// Track every agent the list endpoint returns, not only `ids`.
    pub track_all: bool,
    /// The inline IDs alone, kept so a reload can merge them with the file's new contents.
    inline_ids: Vec<AgentId>,
    /// Where these keys are configured: `agents`, or a `[[tenants]]` entry such as
    /// `tenants[2]`; errors name keys below it.
    section: String,
}

impl AgentsSettings {
    /// The inline IDs alone, for the redacted configuration.
    pub(crate) fn inline_ids(&self) -> &[AgentId] {
        &self.inline_ids
    }

    /// Re-reads `ids_file` and merges it with the inline IDs, validated as at load; for
    /// SIGHUP, so a bad edit is reported and the running list kept.
    pub fn reload(&self) -> Result<Vec<AgentId>, ConfigError> {
        merge(&self.section, self.placed_ids()?.into_iter())
    }

    /// Whether any ID is configured, inline or by file (the file may still be empty).
    pub(crate) fn selects_ids(&self) -> bool {
        !self.inline_ids.is_empty() || self.ids_file.is_some()
    }

    /// Every configured ID with where it is configured (a key or `FILE:LINE`), repeats
    /// included, so IDs configured for two tenants can be reported with both places.
    pub(crate) fn placed_ids(&self) -> Result<Vec<(AgentId, String)>, ConfigError> {
        let inline = self
            .inline_ids
            .iter()
            .enumerate()
            .map(|(index, id)| (id.clone(), inline_place(&self.section, index)));
        let from_file = match &self.ids_file {
            Some(path) => read_ids_file(&self.section, path)?,
            None => Vec::new(),
        };
        Ok(inline.chain(from_file).collect())
    }
}

/// Where an inline ID is configured, as a key.
fn inline_place(section: &str, index: usize) -> String {
    format!("{section}.ids[{index}]")
}

/// Reads an ID file and parses it as [`parse_ids_file`] does, naming `SECTION.ids_file`.
fn read_ids_file(section: &str, path: &Path) -> Result<Vec<(AgentId, String)>, ConfigError> {
    let key = format!("{section}.ids_file");
    let text = std::fs::read_to_string(path).map_err(|error| {
        ConfigProblem::new(
            &key,
            format!("cannot read {}: {error}", path.display()),
            "check the path and that this service's user may read the file",
        )
        .at(path.display())
    })?;
    parse_ids_file_at(&key, &text, &path.display().to_string())
}

/// Parses the text of an ID file: one ID per line; blank lines, whole-line `#` comments and
/// `#` comments after whitespace are ignored. Each ID comes with its `NAME:LINE` (`name` is
/// how the file is shown, usually its path) for error messages; every bad line is reported.
///
/// Public, apart from the file reading, so the fuzz target (`fuzz/`) can feed it any text.
pub fn parse_ids_file(text: &str, name: &str) -> Result<Vec<(AgentId, String)>, ConfigError> {
    parse_ids_file_at("agents.ids_file", text, name)
}

/// [`parse_ids_file`] for the file configured at `key`.
fn parse_ids_file_at(key: &str, text: &str, name: &str) -> Result<Vec<(AgentId, String)>, ConfigError> {
    let mut ids = Vec::new();
    let mut problems = Vec::new();
    // Windows editors save UTF-8 with a byte-order mark; kept, it would become part of the
    // first ID, which would then never match an agent.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    for (index, line) in text.lines().enumerate() {
        let place = format!("{name}:{}", index + 1);
        let entry = strip_comment(line).trim();
        if entry.is_empty() {
            continue;
        }
        match AgentId::parse(entry) {
            Ok(id) => ids.push((id, place)),
            Err(error) => problems.push(
                ConfigProblem::new(
                    key,
                    error.to_string(),
                    "correct or remove the line; the file holds one ID per line, comments start with #",
                )
                .at(place),
            ),
        }
    }
    if problems.is_empty() { Ok(ids) } else { Err(ConfigError::new(problems)) }
}

/// The line without a comment: `#` at its start or after whitespace begins one, so an ID
/// that happens to contain `#` survives.
fn strip_comment(line: &str) -> &str {
    let mut previous_is_space = true;
    for (at, c) in line.char_indices() {
        if c == '#' && previous_is_space {
            return &line[..at];
        }
        previous_is_space = c.is_whitespace();
    }
    line
}

/// Keeps the order and rejects repeats, naming both places: a repeated ID is almost always a
/// copy-paste slip, and silently dropping it would hide which list the operator meant.
fn merge(
    section: &str,
    entries: impl Iterator<Item = (AgentId, String)>,
) -> Result<Vec<AgentId>, ConfigError> {
    let mut first_place: HashMap<AgentId, String> = HashMap::new();
    let mut ids = Vec::new();
    let mut problems = Vec::new();
    for (id, place) in entries {
        if let Some(first) = first_place.get(&id) {
            problems.push(duplicate(section, &id, first, place));
        } else {
            first_place.insert(id.clone(), place);
            ids.push(id);
        }
    }
    if problems.is_empty() { Ok(ids) } else { Err(ConfigError::new(problems)) }
}

/// The problem for `id` found again at `place`, a key or a `FILE:LINE`.
fn duplicate(section: &str, id: &AgentId, first: &str, place: String) -> ConfigProblem {
    placed_problem(
        section,
        place,
        format!("agent ID {id} is listed twice, first at {first}"),
        "remove one of the two entries",
    )
}

/// A problem with the ID at `place` of `section`: a key (`agents.ids[3]`) is the problem's
/// key; a `FILE:LINE` is its source, under the key `SECTION.ids_file`.
pub(super) fn placed_problem(section: &str, place: String, problem: String, fix: &str) -> ConfigProblem {
    if place.starts_with(&format!("{section}.ids[")) {
        ConfigProblem::new(&place, problem, fix)
    } else {
        ConfigProblem::new(&format!("{section}.ids_file"), problem, fix).at(place)
    }
}

/// `[agents]` as written.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawAgents {
    #[serde(deserialize_with = "de::list")]
    ids: Vec<String>,
    #[serde(deserialize_with = "de::non_empty")]
    ids_file: Option<PathBuf>,
    track_all: bool,
}

impl RawAgents {
    /// A selection written in a `[[tenants]]` entry.
    pub(super) fn new(ids: Vec<String>, ids_file: Option<PathBuf>, track_all: bool) -> Self {
        Self { ids, ids_file, track_all }
    }

    /// Validates the inline IDs and reads `ids_file`, naming keys below `section`.
    pub(super) fn finish_at(self, section: &str, problems: &mut Vec<ConfigProblem>) -> AgentsSettings {
        let mut inline_ids = Vec::with_capacity(self.ids.len());
        for (index, raw) in self.ids.iter().enumerate() {
            match AgentId::parse(raw.trim()) {
                Ok(id) => inline_ids.push(id),
                Err(error) => problems.push(ConfigProblem::new(
                    &inline_place(section, index),
                    error.to_string(),
                    "correct or remove the ID; IDs look like `orgGuid_machineId`",
                )),
            }
        }
        let mut settings = AgentsSettings {
            ids: Vec::new(),
            ids_file: self.ids_file,
            track_all: self.track_all,
            inline_ids,
            section: section.to_owned(),
        };
        match settings.reload() {
            Ok(ids) => settings.ids = ids,
            Err(error) => problems.extend_from_slice(error.problems()),
        }
        settings
    }
}

/// Validates the inline IDs and reads `ids_file`.
impl Finish for RawAgents {
    type Output = AgentsSettings;

    fn finish(self, _env: &HashMap<String, String>, problems: &mut Vec<ConfigProblem>) -> AgentsSettings {
        self.finish_at("agents", problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comments_need_whitespace_before_them() {
        assert_eq!(strip_comment("# whole line"), "");
        assert_eq!(strip_comment("abc # trailing"), "abc ");
        assert_eq!(strip_comment("abc\t#trailing"), "abc\t");
        assert_eq!(strip_comment("ab#c"), "ab#c");
    }

    #[test]
    fn a_byte_order_mark_is_not_part_of_the_first_id() {
        let ids = parse_ids_file("\u{feff}first\nsecond\n", "/f").unwrap();
        assert_eq!(ids[0], (AgentId::parse("first").unwrap(), "/f:1".to_owned()));
    }

    #[test]
    fn duplicates_name_both_places() {
        let id = AgentId::parse("a").unwrap();
        let entries = [(id.clone(), inline_place("agents", 0)), (id, "/f:3".to_owned())];
        let error = merge("agents", entries.into_iter()).unwrap_err();
        let text = error.to_string();
        assert!(text.contains("agents.ids[0]") && text.contains("/f:3"), "{text}");
    }
}
