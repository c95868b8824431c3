//! The standby's first rules for a session, before any generation is
//! judged: a protocol version both speak, the same export.

use crate::version::{choose, Speaks, VersionError};

/// Why a Hello is refused: the text goes to the primary as `Refused`, so it
/// says which side to fix.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HelloError {
    #[error(transparent)]
    Version(#[from] VersionError),
    #[error("export_id \"{theirs}\" does not match this standby's \"{ours}\"; set the same export_id on both nodes")]
    Export { theirs: String, ours: String },
    #[error("too many verify sessions at once (limit {0}); try again when one has finished")]
    TooManyVerifies(usize),
}

/// A Hello from a primary speaking `theirs` for `export_id`, against this
/// standby's own: the version the session uses.
pub fn check_hello(
    theirs: Speaks,
    export_id: &str,
    ours: Speaks,
    our_export_id: &str,
) -> Result<u32, HelloError> {
    let v = choose(ours, theirs)?;
    if export_id != our_export_id {
        return Err(HelloError::Export {
            theirs: export_id.into(),
            ours: our_export_id.into(),
        });
    }
    Ok(v)
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
        let ours = Speaks::OURS;
        assert_eq!(check_hello(Speaks::only(7), "web", ours, "web"), Ok(7));
        // The previous release: its version, for the whole session.
        assert_eq!(check_hello(Speaks::only(6), "web", ours, "web"), Ok(6));
        let e = check_hello(Speaks::only(1), "web", ours, "web")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("protocol version 1 is not supported") && e.contains("speaks 6 to 8"),
            "{e}"
        );
        let e = check_hello(Speaks::only(7), "web", ours, "mail")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("\"web\" does not match this standby's \"mail\""),
            "{e}"
        );
        // The version is checked first: a newer release may name exports otherwise.
        assert!(matches!(
            check_hello(Speaks::only(9), "x", ours, "y"),
            Err(HelloError::Version(_))
        ));
    }

    #[test]
    fn verify_sessions_are_capped() {
        assert_eq!(check_verify_slot(3, 4), Ok(()));
        assert_eq!(check_verify_slot(4, 4), Err(HelloError::TooManyVerifies(4)));
    }
}
