//! Config errors and warnings. Every problem names where it is: the file and either a
//! dotted key (`quic.maxIdleTimeout`, `outbounds[1].type`) or a line and column.

use std::fmt;

/// Where in a config an error was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ErrorAt {
    /// The file as a whole: unreadable, not UTF-8, not a mapping at the top.
    File,
    /// A position in the YAML text (syntax errors). Both are 1-based.
    Position {
        /// Line, from 1.
        line: usize,
        /// Column, from 1.
        column: usize,
    },
    /// A key, as a dotted path with list indexes: `quic.maxIdleTimeout`, `outbounds[0].type`.
    Key(String),
}

/// A config that cannot be used, and why. Always the user's input at fault.
///
/// Displays as `FILE: KEY: reason` or, for YAML syntax errors, `FILE:LINE:COLUMN: reason`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The file name (or other origin, such as `share URI`) the text came from.
    pub origin: String,
    /// Where in that origin.
    pub at: ErrorAt,
    /// What is wrong, for a human.
    pub reason: String,
}

impl ConfigError {
    pub(crate) fn file(origin: &str, reason: impl Into<String>) -> Self {
        Self {
            origin: origin.to_owned(),
            at: ErrorAt::File,
            reason: reason.into(),
        }
    }

    /// The dotted key the error is about, if it is about one.
    pub fn key(&self) -> Option<&str> {
        match &self.at {
            ErrorAt::Key(k) => Some(k),
            _ => None,
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.at {
            ErrorAt::File => write!(f, "{}: {}", self.origin, self.reason),
            ErrorAt::Position { line, column } => {
                write!(f, "{}:{line}:{column}: {}", self.origin, self.reason)
            }
            ErrorAt::Key(key) => write!(f, "{}: {key}: {}", self.origin, self.reason),
        }
    }
}

impl std::error::Error for ConfigError {}

/// Something in a config that is accepted but probably not what the user meant: an unknown
/// (misspelt?) key, or an official feature quelay replaces with something else.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Warning {
    /// Dotted key path, as the user spelt it for unknown keys.
    pub key: String,
    /// What happens instead.
    pub message: String,
}

impl Warning {
    pub(crate) fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// An error about one key, before the file name is known.
#[derive(Debug)]
pub(crate) struct Fault {
    pub key: String,
    pub reason: String,
}

impl Fault {
    pub fn in_file(self, origin: &str) -> ConfigError {
        ConfigError {
            origin: origin.to_owned(),
            at: if self.key.is_empty() {
                ErrorAt::File
            } else {
                ErrorAt::Key(self.key)
            },
            reason: self.reason,
        }
    }
}

/// A [`Fault`] about `key`.
pub(crate) fn fault(key: impl Into<String>, reason: impl Into<String>) -> Fault {
    Fault {
        key: key.into(),
        reason: reason.into(),
    }
}
