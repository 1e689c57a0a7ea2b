//! Module names, validated once on construction.
#![forbid(unsafe_code)]

use std::fmt;

use thiserror::Error;

/// The kernel's `MODULE_NAME_LEN` less one (`64 - sizeof(unsigned long)`
/// on 64-bit, which is the limit SystemTap's `parse_modpath` applies).
pub const MAX_MODULE_NAME: usize = 64 - std::mem::size_of::<u64>();

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ModNameError {
    #[error("is empty")]
    Empty,
    #[error("'{0}' is too long (at most {MAX_MODULE_NAME} characters)")]
    TooLong(String),
    #[error("{0:?} has characters other than letters, digits, '_' and '-'")]
    BadChars(String),
}

/// A SystemTap module name: 1 to 56 characters of `[A-Za-z0-9_-]`, so it
/// can never name a path (`/`, `..`) or carry control characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ModName(String);

impl ModName {
    pub fn new(s: &str) -> Result<Self, ModNameError> {
        if s.is_empty() {
            return Err(ModNameError::Empty);
        }
        if !s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(ModNameError::BadChars(s.to_string()));
        }
        if s.len() > MAX_MODULE_NAME {
            return Err(ModNameError::TooLong(s.to_string()));
        }
        Ok(ModName(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name as the kernel lists it in /proc/modules ('-' becomes '_').
    pub fn kernel_name(&self) -> String {
        self.0.replace('-', "_")
    }
}

impl fmt::Display for ModName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_and_rejects() {
        assert!(ModName::new("stap_abc-1").is_ok());
        assert_eq!(ModName::new(""), Err(ModNameError::Empty));
        for bad in ["a/b", "..", "a.b", "x\n", "é", "a b", "*"] {
            assert!(
                matches!(ModName::new(bad), Err(ModNameError::BadChars(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            ModName::new(&"x".repeat(57)),
            Err(ModNameError::TooLong(_))
        ));
        assert_eq!(ModName::new("a-b").unwrap().kernel_name(), "a_b");
    }
}
