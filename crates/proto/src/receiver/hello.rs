//! The standby's first rules for a session, before any generation is
//! judged: the same protocol, the same export.

/// Why a Hello is refused: the text goes to the primary as `Refused`, so it
/// says which side to fix.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HelloError {
    #[error("protocol version {theirs} is not supported (this standby speaks {ours}); upgrade both nodes to the same syncd release")]
    Version { theirs: u32, ours: u32 },
    #[error("export_id \"{theirs}\" does not match this standby's \"{ours}\"; set the same export_id on both nodes")]
    Export { theirs: String, ours: String },
    #[error("too many verify sessions at once (limit {0}); try again when one has finished")]
    TooManyVerifies(usize),
}

/// A Hello speaking `version` for `export_id`, against this standby's own.
pub fn check_hello(
    version: u32,
    export_id: &str,
    our_version: u32,
    our_export_id: &str,
) -> Result<(), HelloError> {
    if version != our_version {
        return Err(HelloError::Version {
            theirs: version,
            ours: our_version,
        });
    }
    if export_id != our_export_id {
        return Err(HelloError::Export {
            theirs: export_id.into(),
            ours: our_export_id.into(),
        });
    }
    Ok(())
}

/// A verify session hashes the whole export: `running` others at once are
/// enough when they reach `limit`.
pub fn check_verify_slot(running: usize, limit: usize) -> Result<(), HelloError> {
    if running >= limit {
        return Err(HelloError::TooManyVerifies(limit));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn another_version_or_export_is_refused_saying_what_to_fix() {
        assert_eq!(check_hello(7, "web", 7, "web"), Ok(()));
        let e = check_hello(1, "web", 7, "web").unwrap_err().to_string();
        assert!(
            e.contains("protocol version 1 is not supported") && e.contains("speaks 7"),
            "{e}"
        );
        let e = check_hello(7, "web", 7, "mail").unwrap_err().to_string();
        assert!(
            e.contains("\"web\" does not match this standby's \"mail\""),
            "{e}"
        );
        // The version is checked first: a newer release may name exports otherwise.
        assert!(matches!(
            check_hello(8, "x", 7, "y"),
            Err(HelloError::Version { .. })
        ));
    }

    #[test]
    fn verify_sessions_are_capped() {
        assert_eq!(check_verify_slot(3, 4), Ok(()));
        assert_eq!(check_verify_slot(4, 4), Err(HelloError::TooManyVerifies(4)));
    }
}
