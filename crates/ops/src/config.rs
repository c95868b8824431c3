//! One style for configuration errors in all three binaries: every problem
//! in a file is reported at once, one line each, naming the file, the key and
//! the fix — the operator fixes them all in one edit instead of one per
//! restart.

use std::fmt;
use std::path::Path;

/// One thing wrong with a configuration: the key (`listen`,
/// `upstream[0].server[1].weight`; empty when the file as a whole is wrong)
/// and a message that says what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.key, self.message)
        }
    }
}

/// Every problem found in one configuration. Never empty.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    file: Option<String>,
    problems: Vec<Problem>,
}

impl ConfigError {
    /// A single problem with `key`.
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: None,
            problems: vec![Problem {
                key: key.into(),
                message: message.into(),
            }],
        }
    }

    /// A problem written as one `"key: message"` line, the form the checks
    /// that return plain strings use.
    pub fn from_line(line: &str) -> ConfigError {
        match line.split_once(": ") {
            Some((key, message))
                if !key.contains(' ') || key.contains('[') || key.contains('"') =>
            {
                ConfigError::new(key, message)
            }
            _ => ConfigError::new("", line),
        }
    }

    /// The file could not be read at all.
    pub fn unreadable(file: &Path, e: &std::io::Error) -> ConfigError {
        ConfigError::new(
            "",
            format!("cannot read the config file: {e}; pass an existing, readable file"),
        )
        .in_file(file)
    }

    /// The text is not valid TOML or does not fit the schema: `message` from
    /// the parser, `offset` the byte where it stopped (for the line number).
    pub fn syntax(text: &str, message: &str, offset: Option<usize>) -> ConfigError {
        let hint = if message.contains("missing field") {
            " (see the example config for every key)"
        } else if message.contains("unknown field") {
            " (check the spelling; see the example config)"
        } else {
            ""
        };
        // The line's number and text: the text names the key or table.
        let at = offset
            .map(|o| {
                // A parser's offset is a character boundary; clamp it anyway.
                let mut o = o.min(text.len());
                while !text.is_char_boundary(o) {
                    o -= 1;
                }
                let start = text[..o].rfind('\n').map_or(0, |i| i + 1);
                let number = text[..start].lines().count() + 1;
                let line: String = text[start..]
                    .lines()
                    .next()
                    .unwrap_or("")
                    .trim()
                    .chars()
                    .take(60)
                    .collect();
                format!(" at line {number} ({line})")
            })
            .unwrap_or_default();
        ConfigError::new("", format!("{}{at}{hint}", message.trim_end()))
    }

    /// Names the file the problems are in (kept if already named).
    pub fn in_file(mut self, file: &Path) -> ConfigError {
        if self.file.is_none() {
            self.file = Some(file.display().to_string());
        }
        self
    }

    /// Prefixes every key with `prefix.`, for tables embedded in another
    /// program's config.
    pub fn under(mut self, prefix: &str) -> ConfigError {
        for p in &mut self.problems {
            p.key = if p.key.is_empty() {
                prefix.to_string()
            } else {
                format!("{prefix}.{}", p.key)
            };
        }
        self
    }

    pub fn problems(&self) -> &[Problem] {
        &self.problems
    }

    /// Whether any problem is about `key` (tests and callers that react to
    /// one key).
    pub fn names(&self, key: &str) -> bool {
        self.problems.iter().any(|p| p.key == key)
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            if let Some(file) = &self.file {
                write!(f, "{file}: ")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

/// Collects problems while validation goes on, so that one bad key does not
/// hide the next.
#[derive(Debug, Default)]
pub struct Problems {
    problems: Vec<Problem>,
}

impl Problems {
    pub fn new() -> Problems {
        Problems::default()
    }

    pub fn push(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem {
            key: key.into(),
            message: message.into(),
        });
    }

    /// A problem written as one `"key: message"` line.
    pub fn push_line(&mut self, line: &str) {
        self.add(ConfigError::from_line(line));
    }

    /// Keeps the problems of `e`.
    pub fn add(&mut self, e: ConfigError) {
        self.problems.extend(e.problems);
    }

    /// The value, or `None` after noting why not.
    pub fn take<T>(&mut self, r: Result<T, ConfigError>) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(e) => {
                self.add(e);
                None
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.problems.is_empty()
    }

    /// `Ok(())` when nothing was found, else every problem.
    pub fn finish(self) -> Result<(), ConfigError> {
        if self.problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError {
                file: None,
                problems: self.problems,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_problem_is_one_line_naming_file_and_key() {
        let mut p = Problems::new();
        p.push("listen", "\"x\" is not an address; write HOST:PORT");
        p.add(ConfigError::new("weight", "must be 1 or more").under("upstream[0].server[1]"));
        let e = p.finish().unwrap_err().in_file(Path::new("/etc/x.toml"));
        assert_eq!(
            e.to_string(),
            "/etc/x.toml: listen: \"x\" is not an address; write HOST:PORT\n\
             /etc/x.toml: upstream[0].server[1].weight: must be 1 or more"
        );
        assert!(e.names("upstream[0].server[1].weight"));
        assert!(!e.names("weight"));
    }

    #[test]
    fn nothing_found_is_ok_and_take_keeps_going() {
        let mut p = Problems::new();
        assert_eq!(p.take(Ok::<_, ConfigError>(3)), Some(3));
        assert_eq!(p.take(Err::<u8, _>(ConfigError::new("a", "bad"))), None);
        assert_eq!(p.take(Err::<u8, _>(ConfigError::new("b", "bad"))), None);
        let e = p.finish().unwrap_err();
        assert_eq!(e.problems().len(), 2);
        assert!(Problems::new().finish().is_ok());
    }

    #[test]
    fn syntax_errors_carry_the_line() {
        let text = "a = 1\nb = = 2\n";
        let e = ConfigError::syntax(text, "expected a value", Some(10));
        assert_eq!(e.to_string(), "expected a value at line 2 (b = = 2)");
        let e = ConfigError::syntax(text, "expected a value", Some(6));
        assert_eq!(e.to_string(), "expected a value at line 2 (b = = 2)");
        let e = ConfigError::syntax(text, "unknown field `lisen`", None);
        assert!(e.to_string().contains("check the spelling"), "{e}");
    }

    #[test]
    fn an_offset_inside_a_character_does_not_panic() {
        let e = ConfigError::syntax("k = \"é\"\nx", "bad", Some(6));
        assert_eq!(e.to_string(), "bad at line 1 (k = \"é\")");
    }

    #[test]
    fn lines_split_at_the_key() {
        let e = ConfigError::from_line("sync.delta_min_size: must be at least 1");
        assert!(e.names("sync.delta_min_size"));
        let e = ConfigError::from_line("listener \"b\".listen: 127.0.0.1:80 is used");
        assert!(e.names("listener \"b\".listen"));
        // A sentence with a colon is not a key.
        let e = ConfigError::from_line("cannot read it: denied");
        assert_eq!(e.problems()[0].key, "");
    }

    #[test]
    fn a_file_named_once_stays_named() {
        let e = ConfigError::new("k", "m")
            .in_file(Path::new("a.toml"))
            .in_file(Path::new("b.toml"));
        assert_eq!(e.to_string(), "a.toml: k: m");
    }
}
