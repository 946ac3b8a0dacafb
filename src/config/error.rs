//! The configuration error: every problem found, each naming its key, where the value came
//! from, and what to do about it.

use std::fmt;

/// Where the example configuration documents every key; fixes point operators there.
const EXAMPLE: &str = "config/scan-agent-sync.toml";

/// One thing wrong with the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// The key, e.g. `rate_limit.windows[1].per`; `None` when the problem is not one key's
    /// (an unreadable config file, a TOML syntax error, a credential file).
    pub key: Option<String>,
    /// Where the value came from: the config file, an environment variable, or `FILE:LINE`
    /// of the agent ID file. Operators need it because an environment override silently wins
    /// over the file.
    pub source: Option<String>,
    /// What is wrong.
    pub problem: String,
    /// What to do about it.
    pub fix: String,
}

impl ConfigProblem {
    /// A problem with one key; its source is filled in later by whoever knows the inputs.
    pub(crate) fn new(key: &str, problem: impl Into<String>, fix: impl Into<String>) -> Self {
        Self { key: Some(key.to_owned()), source: None, problem: problem.into(), fix: fix.into() }
    }

    /// A problem with an input as a whole rather than one key.
    pub(crate) fn unkeyed(problem: impl Into<String>, fix: impl Into<String>) -> Self {
        Self { key: None, source: None, problem: problem.into(), fix: fix.into() }
    }

    /// Records where the offending value came from.
    pub(crate) fn at(mut self, source: impl fmt::Display) -> Self {
        self.source = Some(source.to_string());
        self
    }

    /// Translates a deserialization error from the `config` crate for the section `section`.
    ///
    /// The crate reports the path below the section (`windows[1].per`) but phrases the fix
    /// nowhere, so the fix is derived from serde's standard wording ("unknown field",
    /// "expected ...").
    pub(crate) fn from_deserialize(section: Option<&str>, error: ::config::ConfigError) -> Self {
        let (inner_key, problem) = flatten(error);
        let inner_key = inner_key.map(|key| dot_after_index(&key));
        let mut key = match (section, inner_key) {
            (Some(section), Some(inner)) if inner.starts_with('[') => format!("{section}{inner}"),
            (Some(section), Some(inner)) => format!("{section}.{inner}"),
            (Some(section), None) => section.to_owned(),
            (None, Some(inner)) => inner,
            (None, None) => String::new(),
        };
        // serde names an unknown field only inside its message; make it part of the key so
        // the operator sees `defender.tenant` rather than just `defender`.
        if let Some(field) = unknown_field(&problem) {
            key = if key.is_empty() { field.to_owned() } else { format!("{key}.{field}") };
        }
        let (problem, fix) = split_fix(&problem);
        if key.is_empty() { Self::unkeyed(problem, fix) } else { Self::new(&key, problem, fix) }
    }
}

/// Splits a `config` crate error into the key it carries (if any) and the bare message.
fn flatten(error: ::config::ConfigError) -> (Option<String>, String) {
    match error {
        ::config::ConfigError::Type { unexpected, expected, key, .. } => {
            (key, format!("invalid type: {unexpected}, expected {expected}"))
        }
        ::config::ConfigError::At { error, key, .. } => {
            let (inner_key, message) = flatten(*error);
            (key.or(inner_key), message)
        }
        ::config::ConfigError::NotFound(key) => (Some(key), "is required but missing".to_owned()),
        other => (None, other.to_string()),
    }
}

/// `windows[1].per` from the `config` crate's `windows[1]per`.
fn dot_after_index(key: &str) -> String {
    let mut fixed = String::with_capacity(key.len() + 2);
    let mut after_index = false;
    for c in key.chars() {
        if after_index && c != '[' && c != '.' {
            fixed.push('.');
        }
        fixed.push(c);
        after_index = c == ']';
    }
    fixed
}

/// The field name in serde's "unknown field `x`, expected ..." message.
fn unknown_field(message: &str) -> Option<&str> {
    message.strip_prefix("unknown field `")?.split('`').next()
}

/// Splits serde's "what was found, expected what" message into the problem and a fix, so
/// the expectation is stated once, as the fix.
fn split_fix(message: &str) -> (String, String) {
    let Some((found, expected)) = message.rsplit_once(", expected ") else {
        return (message.to_owned(), format!("correct the value; {EXAMPLE} documents every key"));
    };
    let fix = if found.starts_with("unknown field") {
        format!("remove the key or correct its spelling; valid keys here: {expected}")
    } else if expected == "a duration" {
        "write a duration such as \"90s\", \"15m\" or \"24h\"".to_owned()
    } else {
        format!("write {expected}")
    };
    (found.to_owned(), fix)
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.key {
            Some(key) => write!(f, "`{key}`")?,
            None => f.write_str("configuration")?,
        }
        if let Some(source) = &self.source {
            write!(f, " ({source})")?;
        }
        write!(f, ": {}; fix: {}", self.problem, self.fix)
    }
}

/// Everything wrong with the configuration at once, so an operator fixes it in one pass
/// instead of one restart per mistake.
#[derive(Debug, Clone)]
pub struct ConfigError {
    problems: Vec<ConfigProblem>,
}

impl ConfigError {
    /// Wraps the problems found; callers only build one when there is at least one.
    pub(crate) fn new(problems: Vec<ConfigProblem>) -> Self {
        debug_assert!(!problems.is_empty(), "a ConfigError needs a problem");
        Self { problems }
    }

    /// Every problem found, in the order the configuration was checked.
    pub fn problems(&self) -> &[ConfigProblem] {
        &self.problems
    }

    /// Fills in the source of problems that do not know theirs yet, from their key (`None`
    /// for problems with the file as a whole).
    pub(crate) fn attribute(mut self, source_of: impl Fn(Option<&str>) -> String) -> Self {
        for problem in &mut self.problems {
            if problem.source.is_none() {
                problem.source = Some(source_of(problem.key.as_deref()));
            }
        }
        self
    }
}

impl ConfigError {
    /// Problems gathered from several checks (e.g. every tenant's credentials) as one error;
    /// callers only build one when there is at least one problem.
    pub fn from_problems(problems: Vec<ConfigProblem>) -> Self {
        Self::new(problems)
    }

    /// Names the source of problems at or below a key set by an environment variable:
    /// `sources` pairs a key (`tenants[2].client_id`) with the variable that set it.
    pub(crate) fn attribute_keys(mut self, sources: &[(String, String)]) -> Self {
        for problem in &mut self.problems {
            let Some(key) = problem.key.as_deref() else { continue };
            if let Some((_, var)) =
                sources.iter().find(|(set, _)| key == set || key.starts_with(&format!("{set}[")))
            {
                problem.source = Some(var.clone());
            }
        }
        self
    }
}

impl From<ConfigProblem> for ConfigError {
    fn from(problem: ConfigProblem) -> Self {
        Self::new(vec![problem])
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.problems.as_slice() {
            [only] => write!(f, "invalid configuration: {only}"),
            all => {
                write!(f, "invalid configuration, {} problems:", all.len())?;
                all.iter().try_for_each(|problem| write!(f, "\n  - {problem}"))
            }
        }
    }
}

impl std::error::Error for ConfigError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_field_becomes_part_of_the_key() {
        let error = ::config::ConfigError::Message(
            "unknown field `tenant`, expected one of `tenant_id`, `client_id`".to_owned(),
        );
        let problem = ConfigProblem::from_deserialize(Some("defender"), error);
        assert_eq!(problem.key.as_deref(), Some("defender.tenant"));
        assert_eq!(problem.problem, "unknown field `tenant`");
        assert!(problem.fix.contains("`tenant_id`"), "{problem}");
    }

    #[test]
    fn index_segments_are_followed_by_a_dot() {
        assert_eq!(dot_after_index("windows[1]per"), "windows[1].per");
        assert_eq!(dot_after_index("a[0][2].b[3]"), "a[0][2].b[3]");
    }

    #[test]
    fn expectation_becomes_the_fix() {
        let (problem, fix) = split_fix("unknown variant `eu`, expected one of `commercial`, `gcc`");
        assert_eq!(
            (problem.as_str(), fix.as_str()),
            ("unknown variant `eu`", "write one of `commercial`, `gcc`")
        );
        let (problem, fix) = split_fix("invalid value: string \"1x\", expected a duration");
        assert_eq!(problem, "invalid value: string \"1x\"");
        assert!(fix.contains("\"15m\""), "{fix}");
    }

    #[test]
    fn several_problems_are_all_listed() {
        let error = ConfigError::new(vec![
            ConfigProblem::new("a.b", "is wrong", "fix it"),
            ConfigProblem::unkeyed("cannot read", "make it readable").at("/x"),
        ]);
        let text = error.to_string();
        assert!(text.contains("2 problems"), "{text}");
        assert!(text.contains("`a.b`: is wrong; fix: fix it"), "{text}");
        assert!(text.contains("configuration (/x): cannot read"), "{text}");
    }
}
