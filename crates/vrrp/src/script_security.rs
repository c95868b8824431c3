//! keepalived's `enable_script_security` / `script_user` for track and notify
//! scripts.
//!
//! Scripts run as root by default, so a script (or any directory above it)
//! that a non-root user can modify is a root shell for that user. With
//! `script_security` the program a command starts with must be owned by root
//! and not writable by anyone else, and so must every directory on its path
//! (a sticky directory such as `/tmp` may be world-writable, as in keepalived,
//! but nobody else may create a missing script there). Only the program is
//! checked: the rest of the shell command line is the configuration's own text.

use std::ffi::CString;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// `PATH` used to find a bare program name and given to scripts under
/// `script_security`: the daemon's own `PATH` may contain writable directories.
pub const SAFE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The shell every script runs under.
pub const SHELL: &str = "/bin/sh";

/// A resolved `script_user`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptUser {
    /// As written: `user` or `user:group`.
    pub spec: String,
    pub uid: u32,
    pub gid: u32,
}

impl ScriptUser {
    /// Resolve `user` or `user:group` (default group: the user's primary group).
    pub fn resolve(spec: &str) -> Result<ScriptUser, String> {
        let (user, group) = match spec.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (spec, None),
        };
        let (uid, primary) = lookup_user(user)?;
        let gid = match group {
            Some(g) => lookup_group(g)?,
            None => primary,
        };
        Ok(ScriptUser {
            spec: spec.to_string(),
            uid,
            gid,
        })
    }
}

/// (uid, primary gid). A number without a passwd entry is accepted with gid = uid.
fn lookup_user(name: &str) -> Result<(u32, u32), String> {
    let numeric = name.parse::<u32>().ok();
    let c = CString::new(name).map_err(|_| format!("user {name:?} contains a NUL byte"))?;
    // SAFETY: passwd is plain old data; all-zero is a valid value.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut out: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer refers to live, correctly sized storage for the call.
    let rc = unsafe {
        match numeric {
            Some(uid) => libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr(), buf.len(), &mut out),
            None => libc::getpwnam_r(c.as_ptr(), &mut pw, buf.as_mut_ptr(), buf.len(), &mut out),
        }
    };
    if rc != 0 || out.is_null() {
        return match numeric {
            Some(uid) => Ok((uid, uid)),
            None => Err(format!("no user {name:?} on this system")),
        };
    }
    Ok((pw.pw_uid, pw.pw_gid))
}

fn lookup_group(name: &str) -> Result<u32, String> {
    if let Ok(gid) = name.parse::<u32>() {
        return Ok(gid);
    }
    let c = CString::new(name).map_err(|_| format!("group {name:?} contains a NUL byte"))?;
    // SAFETY: group is plain old data; all-zero is a valid value.
    let mut gr: libc::group = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut out: *mut libc::group = std::ptr::null_mut();
    // SAFETY: as in lookup_user.
    let rc =
        unsafe { libc::getgrnam_r(c.as_ptr(), &mut gr, buf.as_mut_ptr(), buf.len(), &mut out) };
    if rc != 0 || out.is_null() {
        return Err(format!("no group {name:?} on this system"));
    }
    Ok(gr.gr_gid)
}

/// How scripts are started: as whom, and with which `PATH`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScriptRunner {
    pub user: Option<ScriptUser>,
    /// `script_security`: run with [`SAFE_PATH`] (the `PATH` the check used).
    pub secure: bool,
}

impl ScriptRunner {
    /// A `/bin/sh` command set up to run as configured.
    pub fn command(&self) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(SHELL);
        if self.secure {
            c.env("PATH", SAFE_PATH);
        }
        if let Some(u) = &self.user {
            // std drops supplementary groups when a root parent sets the uid.
            c.uid(u.uid).gid(u.gid);
        }
        c
    }
}

/// The program a shell command line starts with: leading `VAR=value`
/// assignments and `exec` are skipped, simple quotes removed.
pub fn program_of(cmd: &str) -> Option<String> {
    cmd.split_whitespace()
        .map(|w| w.trim_matches(|c| c == '"' || c == '\''))
        .find(|w| !w.is_empty() && *w != "exec" && !is_assignment(w))
        .map(str::to_string)
}

fn is_assignment(w: &str) -> bool {
    w.split_once('=').is_some_and(|(k, _)| {
        !k.is_empty()
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !k.starts_with(|c: char| c.is_ascii_digit())
    })
}

/// Check the shell and the program of `cmd`. `Err` says what is unsafe.
pub fn check_command(cmd: &str) -> Result<(), String> {
    check_path(Path::new(SHELL))?;
    let Some(prog) = program_of(cmd) else {
        return Ok(());
    };
    if prog.contains('/') {
        return check_path(Path::new(&prog));
    }
    for dir in SAFE_PATH.split(':') {
        let p = Path::new(dir).join(&prog);
        if p.exists() {
            return check_path(&p);
        }
    }
    // A shell builtin or a program that is not installed (yet): whoever can
    // create it in a PATH directory decides what runs, so check the directories.
    for dir in SAFE_PATH.split(':') {
        check_path(&Path::new(dir).join(&prog))?;
    }
    Ok(())
}

/// `path` (a file, or a file that does not exist yet) and every directory
/// above it, before and after resolving symbolic links, are safe to run as root.
pub fn check_path(path: &Path) -> Result<(), String> {
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|e| format!("cannot resolve {}: {e}", path.display()))?
            .join(path)
    };
    check_chain(&abs)?;
    if let Ok(real) = std::fs::canonicalize(&abs) {
        if real != abs {
            check_chain(&real)?;
        }
    }
    Ok(())
}

fn check_chain(path: &Path) -> Result<(), String> {
    let mut missing_child = false;
    let mut cur: Option<PathBuf> = Some(path.to_path_buf());
    while let Some(p) = cur {
        match std::fs::metadata(&p) {
            Ok(m) => {
                if let Some(why) = insecure(&m, missing_child) {
                    return Err(if p == path {
                        format!("{} {why}", p.display())
                    } else {
                        format!("{} (directory of {}) {why}", p.display(), path.display())
                    });
                }
                missing_child = false;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => missing_child = true,
            Err(e) => return Err(format!("cannot check {}: {e}", p.display())),
        }
        cur = p.parent().map(Path::to_path_buf);
    }
    Ok(())
}

/// Why `m` lets a non-root user change what runs; `creates`: something below
/// it is missing, so being able to create entries is enough (sticky or not).
fn insecure(m: &std::fs::Metadata, creates: bool) -> Option<String> {
    let mode = m.mode();
    if m.uid() != 0 {
        return Some(format!("is owned by uid {}, not root", m.uid()));
    }
    let sticky_dir = m.is_dir() && mode & libc::S_ISVTX != 0 && !creates;
    if sticky_dir {
        return None;
    }
    if mode & 0o002 != 0 {
        return Some(format!(
            "is writable by everyone (mode {:04o})",
            mode & 0o7777
        ));
    }
    if mode & 0o020 != 0 && m.gid() != 0 {
        return Some(format!(
            "is writable by group {} (mode {:04o})",
            m.gid(),
            mode & 0o7777
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn is_root() -> bool {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() == 0 }
    }

    /// A root-owned 0755 directory under the (sticky) temp dir.
    fn base(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("syncd-vrrp-sec-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        d
    }

    fn script(dir: &Path, mode: u32) -> PathBuf {
        let p = dir.join("check.sh");
        std::fs::write(&p, "#!/bin/sh\nexit 0\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    fn chown(p: &Path, uid: u32, gid: u32) {
        std::os::unix::fs::chown(p, Some(uid), Some(gid)).unwrap();
    }

    #[test]
    fn program_is_the_first_real_word() {
        assert_eq!(program_of("pidof nginx").as_deref(), Some("pidof"));
        assert_eq!(
            program_of("  FOO=1 exec \"/opt/x/check.sh\" --fast").as_deref(),
            Some("/opt/x/check.sh")
        );
        assert_eq!(program_of("   "), None);
    }

    #[test]
    fn system_programs_and_missing_ones_in_root_dirs_are_secure() {
        check_command("pidof nginx").unwrap();
        check_command("test ! -e /tmp/x").unwrap();
        check_command("/usr/local/bin/does-not-exist.sh").unwrap();
        check_command("no-such-program-anywhere").unwrap();
    }

    #[test]
    fn world_writable_directory_is_refused() {
        if !is_root() {
            syncd_testkit::skip::skip("world_writable_directory_is_refused", "needs root to chown");
            return;
        }
        let b = base("0777");
        let d = b.join("scripts");
        std::fs::create_dir(&d).unwrap();
        let s = script(&d, 0o755);
        check_path(&s).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = check_path(&s).unwrap_err();
        assert!(
            e.contains("scripts (directory of") && e.contains("writable by everyone"),
            "{e}"
        );
        assert!(check_command(&format!("{} arg", s.display())).is_err());
        // a sticky world-writable dir protects an existing root file (keepalived's rule)...
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o1777)).unwrap();
        check_path(&s).unwrap();
        // ...but anyone could create a missing one there
        let e = check_path(&d.join("missing.sh")).unwrap_err();
        assert!(e.contains("writable by everyone"), "{e}");
        std::fs::remove_dir_all(&b).unwrap();
    }

    #[test]
    fn files_or_dirs_owned_by_nobody_or_writable_by_others_are_refused() {
        if !is_root() {
            syncd_testkit::skip::skip(
                "files_or_dirs_owned_by_nobody_or_writable_by_others_are_refused",
                "needs root to chown",
            );
            return;
        }
        let b = base("owner");
        let s = script(&b, 0o755);
        chown(&s, 65534, 65534);
        let e = check_path(&s).unwrap_err();
        assert!(e.contains("owned by uid 65534"), "{e}");
        chown(&s, 0, 0);
        check_path(&s).unwrap();
        // group-writable is fine for group root, not for another group
        std::fs::set_permissions(&s, std::fs::Permissions::from_mode(0o775)).unwrap();
        check_path(&s).unwrap();
        chown(&s, 0, 65534);
        assert!(check_path(&s)
            .unwrap_err()
            .contains("writable by group 65534"));
        chown(&s, 0, 0);
        std::fs::set_permissions(&s, std::fs::Permissions::from_mode(0o757)).unwrap();
        assert!(check_path(&s).unwrap_err().contains("writable by everyone"));
        std::fs::set_permissions(&s, std::fs::Permissions::from_mode(0o755)).unwrap();
        // a directory on the path owned by nobody
        let d = b.join("sub");
        std::fs::create_dir(&d).unwrap();
        let s2 = script(&d, 0o755);
        chown(&d, 65534, 65534);
        let e = check_path(&s2).unwrap_err();
        assert!(
            e.contains("sub (directory of") && e.contains("uid 65534"),
            "{e}"
        );
        // a symlink in a safe dir to a script in an unsafe one
        let link = b.join("link.sh");
        std::os::unix::fs::symlink(&s2, &link).unwrap();
        assert!(check_path(&link).is_err());
        std::fs::remove_dir_all(&b).unwrap();
    }

    #[test]
    fn script_user_resolves_names_and_ids() {
        let r = ScriptUser::resolve("root").unwrap();
        assert_eq!((r.uid, r.gid), (0, 0));
        let r = ScriptUser::resolve("root:0").unwrap();
        assert_eq!(r.gid, 0);
        let n = ScriptUser::resolve("65534").unwrap();
        assert_eq!((n.uid, n.gid), (65534, 65534));
        assert_eq!(ScriptUser::resolve("0").unwrap().gid, 0);
        assert!(ScriptUser::resolve("no-such-user-here")
            .unwrap_err()
            .contains("no user"));
        assert!(ScriptUser::resolve("root:no-such-group-here")
            .unwrap_err()
            .contains("no group"));
    }
}
