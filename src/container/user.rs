//! The user a container job runs as: the image config's `User`, looked up
//! in the image's own `/etc/passwd` and `/etc/group` the way runc's
//! libcontainer (and so Docker) does.
//!
//! | `User`           | uid                   | gid                     | extra gids            |
//! |------------------|-----------------------|-------------------------|-----------------------|
//! | unset or empty   | 0                     | root's passwd gid, or 0 | groups listing `root` |
//! | `name`           | from passwd (or error)| from passwd             | groups listing `name` |
//! | `1000`           | 1000                  | passwd's, or 0 if none  | groups listing it     |
//! | `name:group`     | as above              | from group (or error)   | none                  |
//! | `1000:1000`      | 1000                  | 1000                    | none                  |
//!
//! `HOME` comes from the passwd entry (`/` without one) and is set only
//! when no other source set it. Ids must be in `0..=2147483647`.

use std::path::Path;

use crate::image::layer::read_inside;

/// Largest `/etc/passwd` or `/etc/group` read: 4 MiB.
const MAX_FILE_BYTES: u64 = 4 << 20;
/// Largest id runc accepts: 2³¹ − 1.
const MAX_ID: u64 = i32::MAX as u64;

/// Whom a container job's processes run as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobUser {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary group ids (without `gid`), in `/etc/group` order.
    pub additional_gids: Vec<u32>,
    /// The home directory from `/etc/passwd` (`/` without an entry): `HOME`
    /// unless the image, the spec or the create body set it.
    pub home: String,
}

impl JobUser {
    /// Root, with no supplementary groups and `HOME=/`: what a job runs
    /// as when its image names no user and has no `/etc/passwd`.
    fn root() -> JobUser {
        JobUser {
            uid: 0,
            gid: 0,
            additional_gids: Vec::new(),
            home: "/".into(),
        }
    }
}

/// Why an image's `User` cannot be run as; the job ends `launch_failed`
/// with this text.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    /// A name that `/etc/passwd` does not have.
    #[error("the image's User {user:?}: no user {name:?} in the image's /etc/passwd")]
    NoSuchUser {
        /// The image config's `User`.
        user: String,
        /// The user part.
        name: String,
    },
    /// A group name that `/etc/group` does not have.
    #[error("the image's User {user:?}: no group {name:?} in the image's /etc/group")]
    NoSuchGroup {
        /// The image config's `User`.
        user: String,
        /// The group part.
        name: String,
    },
    /// A numeric id above 2147483647.
    #[error("the image's User {user:?}: id {id} is above 2147483647")]
    IdOutOfRange {
        /// The image config's `User`.
        user: String,
        /// The id as written.
        id: String,
    },
    /// `/etc/passwd` or `/etc/group` exists and could not be read (or is
    /// over 4 MiB).
    #[error("the image's {file} cannot be read: {message}")]
    Unreadable {
        /// `/etc/passwd` or `/etc/group`.
        file: &'static str,
        /// Why.
        message: String,
    },
}

/// One `/etc/passwd` line: `name:password:uid:gid:gecos:home:shell`.
#[derive(Clone, Copy)]
struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
    home: &'a str,
}

/// One `/etc/group` line: `name:password:gid:member,member`.
struct GroupEntry<'a> {
    name: &'a str,
    gid: u32,
    members: Vec<&'a str>,
}

/// Resolves `user` (the image config's `User`; `None` or empty: root)
/// against the image root file system `rootfs`. Blocking (reads two small
/// files). Missing files count as empty; malformed lines are skipped.
///
/// # Errors
/// [`UserError`]: a name with no entry, an id out of range, an unreadable
/// file.
pub fn resolve(rootfs: &Path, user: Option<&str>) -> Result<JobUser, UserError> {
    let user = user.unwrap_or("");
    let (user_arg, group_arg) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let user_id = numeric(user, user_arg)?;
    let passwd = read(rootfs, "etc/passwd")?;
    let mut job = JobUser::root();
    let found = passwd.lines().filter_map(passwd_entry).find(|e| {
        if user_arg.is_empty() {
            e.uid == 0
        } else if let Some(id) = user_id {
            e.uid == id
        } else {
            e.name == user_arg
        }
    });
    match (found, user_id) {
        (Some(entry), _) => {
            job.uid = entry.uid;
            job.gid = entry.gid;
            job.home = entry.home.to_owned();
        }
        (None, Some(id)) => job.uid = id,
        (None, None) if user_arg.is_empty() => {}
        (None, None) => {
            return Err(UserError::NoSuchUser {
                user: user.to_owned(),
                name: user_arg.to_owned(),
            })
        }
    }
    let name = found.map(|e| e.name);
    let group_arg = group_arg.filter(|g| !g.is_empty());
    if group_arg.is_none() && name.is_none() {
        return Ok(job);
    }
    let group = read(rootfs, "etc/group")?;
    let mut groups = group.lines().filter_map(group_entry);
    match group_arg {
        Some(group_arg) => {
            let group_id = numeric(user, group_arg)?;
            let found = groups.find(|g| match group_id {
                Some(id) => g.gid == id,
                None => g.name == group_arg,
            });
            job.gid = match (found, group_id) {
                (Some(entry), _) => entry.gid,
                (None, Some(id)) => id,
                (None, None) => {
                    return Err(UserError::NoSuchGroup {
                        user: user.to_owned(),
                        name: group_arg.to_owned(),
                    })
                }
            };
        }
        None => {
            let name = name.expect("checked above");
            for entry in groups.filter(|g| g.members.contains(&name)) {
                if entry.gid != job.gid && !job.additional_gids.contains(&entry.gid) {
                    job.additional_gids.push(entry.gid);
                }
            }
        }
    }
    Ok(job)
}

/// `Some(id)` for an all-digit `part`, `None` for a name.
fn numeric(user: &str, part: &str) -> Result<Option<u32>, UserError> {
    if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(None);
    }
    match part.parse::<u64>() {
        Ok(id) if id <= MAX_ID => Ok(Some(id as u32)),
        _ => Err(UserError::IdOutOfRange {
            user: user.to_owned(),
            id: part.to_owned(),
        }),
    }
}

/// The file at `rel` in `rootfs`, resolved inside it; "" when absent.
fn read(rootfs: &Path, rel: &'static str) -> Result<String, UserError> {
    let file = if rel.ends_with("passwd") {
        "/etc/passwd"
    } else {
        "/etc/group"
    };
    match read_inside(rootfs, Path::new(rel), MAX_FILE_BYTES) {
        Ok(Some(bytes)) => Ok(String::from_utf8_lossy(&bytes).into_owned()),
        Ok(None) => Ok(String::new()),
        Err(e) => Err(UserError::Unreadable {
            file,
            message: e.to_string(),
        }),
    }
}

fn id(field: &str) -> Option<u32> {
    field
        .parse::<u64>()
        .ok()
        .filter(|&i| i <= MAX_ID)
        .map(|i| i as u32)
}

fn passwd_entry(line: &str) -> Option<PasswdEntry<'_>> {
    if line.starts_with('#') {
        return None;
    }
    let mut fields = line.split(':');
    let name = fields.next()?;
    let _password = fields.next()?;
    let uid = id(fields.next()?)?;
    let gid = id(fields.next()?)?;
    let _gecos = fields.next();
    let home = fields.next().filter(|h| !h.is_empty()).unwrap_or("/");
    Some(PasswdEntry {
        name,
        uid,
        gid,
        home,
    })
}

fn group_entry(line: &str) -> Option<GroupEntry<'_>> {
    if line.starts_with('#') {
        return None;
    }
    let mut fields = line.split(':');
    let name = fields.next()?;
    let _password = fields.next()?;
    let gid = id(fields.next()?)?;
    let members = fields
        .next()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|m| !m.is_empty())
        .collect();
    Some(GroupEntry { name, gid, members })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An image root with these `/etc/passwd` and `/etc/group` texts.
    fn rootfs(passwd: Option<&str>, group: Option<&str>) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("etc")).unwrap();
        if let Some(text) = passwd {
            std::fs::write(dir.path().join("etc/passwd"), text).unwrap();
        }
        if let Some(text) = group {
            std::fs::write(dir.path().join("etc/group"), text).unwrap();
        }
        dir
    }

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
                          # a comment\n\
                          broken line\n\
                          app:x:1000:1001:App:/home/app:/bin/sh\n\
                          nohome:x:1002:1002::\n";
    const GROUP: &str = "root:x:0:\n\
                         wheel:x:10:root,app\n\
                         app:x:1001:\n\
                         audio:x:29: app , other\n\
                         staff:x:50:\n";

    fn job(uid: u32, gid: u32, additional_gids: &[u32], home: &str) -> JobUser {
        JobUser {
            uid,
            gid,
            additional_gids: additional_gids.to_vec(),
            home: home.into(),
        }
    }

    #[test]
    fn no_user_is_root_with_roots_groups_and_home() {
        let fs = rootfs(Some(PASSWD), Some(GROUP));
        for user in [None, Some("")] {
            assert_eq!(resolve(fs.path(), user).unwrap(), job(0, 0, &[10], "/root"));
        }
    }

    #[test]
    fn a_name_or_a_uid_takes_the_passwd_entry_and_its_groups() {
        let fs = rootfs(Some(PASSWD), Some(GROUP));
        let app = job(1000, 1001, &[10, 29], "/home/app");
        assert_eq!(resolve(fs.path(), Some("app")).unwrap(), app);
        assert_eq!(resolve(fs.path(), Some("1000")).unwrap(), app);
        assert_eq!(
            resolve(fs.path(), Some("nohome")).unwrap(),
            job(1002, 1002, &[], "/")
        );
    }

    #[test]
    fn an_explicit_group_replaces_the_primary_one_and_drops_the_others() {
        let fs = rootfs(Some(PASSWD), Some(GROUP));
        assert_eq!(
            resolve(fs.path(), Some("app:staff")).unwrap(),
            job(1000, 50, &[], "/home/app")
        );
        assert_eq!(
            resolve(fs.path(), Some("app:4242")).unwrap(),
            job(1000, 4242, &[], "/home/app")
        );
        assert_eq!(
            resolve(fs.path(), Some("5000:5000")).unwrap(),
            job(5000, 5000, &[], "/")
        );
        // An empty group part is no group.
        assert_eq!(
            resolve(fs.path(), Some("app:")).unwrap(),
            job(1000, 1001, &[10, 29], "/home/app")
        );
    }

    #[test]
    fn unknown_ids_run_as_given_and_unknown_names_are_errors() {
        let fs = rootfs(Some(PASSWD), Some(GROUP));
        assert_eq!(
            resolve(fs.path(), Some("4000")).unwrap(),
            job(4000, 0, &[], "/")
        );
        let err = resolve(fs.path(), Some("nobody")).unwrap_err();
        assert!(matches!(err, UserError::NoSuchUser { .. }), "{err}");
        assert_eq!(
            err.to_string(),
            "the image's User \"nobody\": no user \"nobody\" in the image's /etc/passwd"
        );
        let err = resolve(fs.path(), Some("app:nogroup")).unwrap_err();
        assert!(err.to_string().contains("no group \"nogroup\""), "{err}");
        let err = resolve(fs.path(), Some("2147483648")).unwrap_err();
        assert!(matches!(err, UserError::IdOutOfRange { .. }), "{err}");
        let err = resolve(fs.path(), Some("app:99999999999999999999")).unwrap_err();
        assert!(matches!(err, UserError::IdOutOfRange { .. }), "{err}");
    }

    #[test]
    fn an_image_without_passwd_or_group_runs_ids_and_refuses_names() {
        let fs = rootfs(None, None);
        assert_eq!(resolve(fs.path(), None).unwrap(), JobUser::root());
        assert_eq!(
            resolve(fs.path(), Some("65534:65534")).unwrap(),
            job(65534, 65534, &[], "/")
        );
        assert!(resolve(fs.path(), Some("app")).is_err());
    }

    #[test]
    fn passwd_is_read_inside_the_image_even_through_symlinks() {
        let host = tempfile::tempdir().unwrap();
        std::fs::write(host.path().join("passwd"), "app:x:7:7:host:/host:/bin/sh\n").unwrap();
        let fs = rootfs(None, None);
        // An absolute link to the host's file resolves inside the image.
        std::os::unix::fs::symlink(host.path().join("passwd"), fs.path().join("etc/passwd"))
            .unwrap();
        assert!(resolve(fs.path(), Some("app")).is_err());
        // A link inside the image is followed.
        std::fs::remove_file(fs.path().join("etc/passwd")).unwrap();
        std::fs::write(fs.path().join("etc/real"), PASSWD).unwrap();
        std::os::unix::fs::symlink("../etc/./real", fs.path().join("etc/passwd")).unwrap();
        assert_eq!(resolve(fs.path(), Some("app")).unwrap().uid, 1000);
        // A loop is an error, not a hang.
        std::fs::remove_file(fs.path().join("etc/passwd")).unwrap();
        std::os::unix::fs::symlink("passwd", fs.path().join("etc/passwd")).unwrap();
        let err = resolve(fs.path(), Some("app")).unwrap_err();
        assert!(matches!(err, UserError::Unreadable { .. }), "{err}");
    }

    #[test]
    fn a_huge_passwd_is_refused() {
        let fs = rootfs(None, None);
        let file = std::fs::File::create(fs.path().join("etc/passwd")).unwrap();
        file.set_len(MAX_FILE_BYTES + 1).unwrap();
        let err = resolve(fs.path(), Some("app")).unwrap_err();
        assert!(err.to_string().contains("/etc/passwd"), "{err}");
    }
}
