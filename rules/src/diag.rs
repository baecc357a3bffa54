//! Diagnostics: one mistake in a rule file, with where it is and what to do about it.

use crate::yaml::Pos;
use std::fmt;

/// One error found while loading a rule set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file, as given.
    pub file: String,
    /// Where in the file.
    pub pos: Pos,
    /// The rule's id, when it was known at that point.
    pub rule_id: Option<String>,
    /// What is wrong.
    pub message: String,
    /// A close known name, when there is one.
    pub hint: Option<String>,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file, self.pos.line, self.pos.col)?;
        if let Some(id) = &self.rule_id {
            write!(f, "rule {id}: ")?;
        }
        f.write_str(&self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, " (did you mean `{hint}`?)")?;
        }
        Ok(())
    }
}

/// A rule set that failed to load; it holds every error found, in file order.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{} error(s) in the rule set:\n{}", .0.len(), render(.0))]
pub struct RuleSetError(pub Vec<Diagnostic>);

fn render(diags: &[Diagnostic]) -> String {
    diags
        .iter()
        .map(|d| format!("  {d}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The closest of `candidates` to `name`, if it is close enough to be a likely typo.
pub fn did_you_mean<'a>(
    name: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<String> {
    let name_l = name.to_ascii_lowercase();
    candidates
        .into_iter()
        .map(|c| {
            (
                strsim::damerau_levenshtein(&name_l, &c.to_ascii_lowercase()),
                c,
            )
        })
        .filter(|(d, c)| {
            *d > 0 && *d <= (c.len().max(name.len()) / 3).max(1) + usize::from(c.len() > 6)
        })
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_near_misses_only() {
        let known = ["account_id", "output_tokens", "ip"];
        assert_eq!(did_you_mean("acount_id", known), Some("account_id".into()));
        assert_eq!(
            did_you_mean("output_token", known),
            Some("output_tokens".into())
        );
        assert_eq!(did_you_mean("zebra", known), None);
        assert_eq!(did_you_mean("ip", known), None, "exact match is not a typo");
    }
}
