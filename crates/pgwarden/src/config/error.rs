//! Configuration errors: every problem at once, each with its variable, value and fix.

use std::fmt;

/// One configuration problem: the variable, its (redacted) value, what is wrong and the fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The environment variable (e.g. `DB_POOL_MIN`).
    pub variable: String,
    /// The offending value as the user wrote it; URLs are redacted, never showing a password.
    pub value: String,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub fix: String,
}

impl Problem {
    pub(crate) fn new(
        variable: impl Into<String>,
        value: impl Into<String>,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) -> Problem {
        Problem {
            variable: variable.into(),
            value: value.into(),
            message: message.into(),
            fix: fix.into(),
        }
    }
}

impl fmt::Display for Problem {
    /// `DB_POOL_MIN=200: DB_POOL_MIN is above DB_POOL_MAX (100); fix: ...`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}={}: {}; fix: {}",
            self.variable, self.value, self.message, self.fix
        )
    }
}

/// The configuration could not be loaded or is inconsistent. Holds every problem found;
/// `Display` prints one per line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Every problem, in the order of the variable list, parse problems before cross-field ones.
    pub problems: Vec<Problem>,
}

impl ConfigError {
    /// Whether a problem names `variable`.
    pub fn mentions(&self, variable: &str) -> bool {
        self.problems.iter().any(|p| p.variable == variable)
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}
