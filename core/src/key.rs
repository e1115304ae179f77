//! The bucket contract: which object keys are requests, which are markers, and which look
//! like a request the user got wrong.
//!
//! `<home>/<user>/<cluster>.<suffix>` is the whole grammar. The user comes from the path
//! alone (the user IAM policy guarantees a user writes only under their own folder).

use std::fmt;

/// Longest cluster name accepted. With the longest user part (64) and stack prefix (16)
/// it keeps a stack name within CloudFormation's 128 characters.
pub const MAX_CLUSTER_LEN: usize = 40;

/// Longest IAM user name.
pub const MAX_USER_LEN: usize = 64;

/// The suffixes of the bucket contract, in the order a user meets them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Suffix {
    /// Written by the user: the JSON request. The cluster should exist while it exists.
    Create,
    /// Written by the user (content ignored): please delete.
    Delete,
    /// Written by flightdeck: the cluster is ready; first line is the login IP.
    Created,
    /// Written by flightdeck: deletion has finished.
    Deleted,
    /// Written by flightdeck: why the request was refused or the stack failed.
    Failed,
    /// Written by flightdeck: JSON status, always current.
    Status,
}

impl Suffix {
    /// Every suffix of the contract.
    pub const ALL: [Suffix; 6] = [
        Suffix::Create,
        Suffix::Delete,
        Suffix::Created,
        Suffix::Deleted,
        Suffix::Failed,
        Suffix::Status,
    ];

    /// The suffix as it appears after the dot, e.g. `cf-create`.
    pub fn as_str(self) -> &'static str {
        match self {
            Suffix::Create => "cf-create",
            Suffix::Delete => "cf-delete",
            Suffix::Created => "cf-created",
            Suffix::Deleted => "cf-deleted",
            Suffix::Failed => "cf-failed",
            Suffix::Status => "cf-status",
        }
    }

    fn parse(s: &str) -> Option<Suffix> {
        Suffix::ALL.into_iter().find(|x| x.as_str() == s)
    }

    /// Whether users write this suffix (as opposed to flightdeck's markers).
    pub fn is_user_written(self) -> bool {
        matches!(self, Suffix::Create | Suffix::Delete)
    }
}

/// One user's cluster: the unit of reconciliation.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClusterKey {
    /// The user name, exactly as in the path.
    pub user: String,
    /// The cluster name, valid by [`check_cluster_name`].
    pub cluster: String,
}

impl ClusterKey {
    /// A key from a user and a cluster name.
    ///
    /// # Errors
    /// [`KeyError`] when either name breaks its rule.
    pub fn new(user: &str, cluster: &str) -> Result<Self, KeyError> {
        check_user_name(user)?;
        check_cluster_name(cluster)?;
        Ok(ClusterKey {
            user: user.to_owned(),
            cluster: cluster.to_owned(),
        })
    }

    /// The object key of this cluster's file with `suffix`, e.g. `home/alice/x.cf-created`.
    pub fn object_key(&self, home_prefix: &str, suffix: Suffix) -> String {
        format!(
            "{home_prefix}{}/{}.{}",
            self.user,
            self.cluster,
            suffix.as_str()
        )
    }

    /// The prefix under which all of this cluster's files are listed.
    pub fn object_prefix(&self, home_prefix: &str) -> String {
        format!("{home_prefix}{}/{}.", self.user, self.cluster)
    }
}

impl fmt::Display for ClusterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.user, self.cluster)
    }
}

/// A name that breaks its rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The user name is not an IAM user name.
    #[error("`{0}` is not an IAM user name (1 to 64 of letters, digits and +=,.@_-)")]
    User(String),
    /// The cluster name breaks `[a-zA-Z0-9][-a-zA-Z0-9]*` or is too long.
    #[error(
        "`{name}` is not a valid cluster name: use letters, digits and hyphens, starting with a letter or digit, at most {MAX_CLUSTER_LEN} characters (for example `{suggestion}`)",
        suggestion = suggest_cluster_name(name)
    )]
    Cluster {
        /// The name as written.
        name: String,
    },
}

/// Checks an IAM user name: 1 to 64 of `[A-Za-z0-9+=,.@_-]`.
///
/// # Errors
/// [`KeyError::User`] naming the user.
pub fn check_user_name(user: &str) -> Result<(), KeyError> {
    let ok = !user.is_empty()
        && user.len() <= MAX_USER_LEN
        && user
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+=,.@_-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(KeyError::User(user.to_owned()))
    }
}

/// The login-name rule every node applies to the cluster owner's account, exactly as the
/// template's `AccessUsername` AllowedPattern and `10-access-user.sh` write it (a test
/// checks that they agree).
pub const LOGIN_NAME_PATTERN: &str = "^[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}$";

/// User names that can never own a cluster, whatever their case: the customizer's folder of
/// defaults, and accounts the nodes already have (the owner's account would be theirs, and
/// with it their files and keys).
pub const RESERVED_USER_NAMES: &[&str] = &[
    "default",
    "root",
    "admin",
    "daemon",
    "bin",
    "sys",
    "sync",
    "games",
    "man",
    "lp",
    "mail",
    "news",
    "uucp",
    "proxy",
    "www-data",
    "backup",
    "list",
    "irc",
    "nobody",
    "_apt",
    "messagebus",
    "sshd",
    "systemd-network",
    "systemd-resolve",
    "systemd-timesync",
    "polkitd",
    "debian",
    "ubuntu",
    "ec2-user",
    "slurm",
    "munge",
    "statd",
    "_rpc",
    "chrony",
];

/// Why a user name (an IAM user name, the folder under the home prefix) cannot own a
/// cluster. The message says what an administrator must do: the user cannot fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserNameError {
    /// Not an IAM user name at all.
    #[error("{0}")]
    NotIam(KeyError),
    /// An IAM user name that is not a login name on the nodes.
    #[error(
        "the user name `{0}` cannot be a login name on a cluster: it must be 1 to 32 of letters, digits, `_`, `.` and `-`, not starting with `.` or `-`; ask your HPC administrators for an IAM user name that is"
    )]
    NotLogin(String),
    /// A name the nodes or the customizer bucket already use.
    #[error(
        "the user name `{0}` is reserved (an account every node already has, or the customizer's folder of defaults); ask your HPC administrators for another IAM user name"
    )]
    Reserved(String),
}

/// The one rule for a user who may own clusters: an IAM user name ([`check_user_name`]),
/// a login name by [`LOGIN_NAME_PATTERN`], and none of [`RESERVED_USER_NAMES`]. Applied by
/// enrolment, and by the controller before any CreateStack.
///
/// # Errors
/// [`UserNameError`] saying which part of the rule is broken.
pub fn check_owner_name(user: &str) -> Result<(), UserNameError> {
    check_user_name(user).map_err(UserNameError::NotIam)?;
    let mut bytes = user.bytes();
    let login = user.len() <= 32
        && bytes
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if !login {
        return Err(UserNameError::NotLogin(user.to_owned()));
    }
    if RESERVED_USER_NAMES
        .iter()
        .any(|r| r.eq_ignore_ascii_case(user))
    {
        return Err(UserNameError::Reserved(user.to_owned()));
    }
    Ok(())
}

/// Checks a cluster name: `[a-zA-Z0-9][-a-zA-Z0-9]*`, at most [`MAX_CLUSTER_LEN`].
///
/// # Errors
/// [`KeyError::Cluster`] naming the cluster and suggesting a valid name.
pub fn check_cluster_name(cluster: &str) -> Result<(), KeyError> {
    let mut bytes = cluster.bytes();
    let ok = cluster.len() <= MAX_CLUSTER_LEN
        && bytes.next().is_some_and(|b| b.is_ascii_alphanumeric())
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(KeyError::Cluster {
            name: cluster.to_owned(),
        })
    }
}

/// A valid name close to `name`, to show the user: other characters become hyphens.
fn suggest_cluster_name(name: &str) -> String {
    let mapped: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let trimmed = mapped.trim_matches('-');
    let mut out: String = trimmed.chars().take(MAX_CLUSTER_LEN).collect();
    while out.ends_with('-') {
        out.pop();
    }
    if out.is_empty() {
        "my-cluster".to_owned()
    } else {
        out
    }
}

/// What an object key under the home prefix is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyKind {
    /// A file of the contract for one cluster.
    Cluster {
        /// Whose cluster.
        key: ClusterKey,
        /// Which file.
        suffix: Suffix,
    },
    /// Looks like a request but breaks a rule; the user is told at `report_key`.
    Mistaken {
        /// The user whose folder it is in.
        user: String,
        /// Where flightdeck writes its explanation.
        report_key: String,
        /// What is wrong.
        mistake: Mistake,
    },
    /// flightdeck's explanation of a mistaken request; `source_key` is the request it explains.
    MistakeReport {
        /// The mistaken request this report is about.
        source_key: String,
    },
    /// Anything else (other files users keep in their folder, folder placeholders).
    Other,
}

/// How a request-like file breaks the contract.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mistake {
    /// The file is in a subfolder; requests must sit directly in the user's folder.
    Subfolder {
        /// Where the request should be.
        expected_key: String,
    },
    /// The cluster name breaks the rule.
    ClusterName(KeyError),
    /// The suffix is close to `.cf-create`/`.cf-delete` but not it.
    Suffix {
        /// The file name as written.
        file: String,
        /// The file name it should have.
        expected_file: String,
    },
}

impl Mistake {
    /// A short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Mistake::Subfolder { .. } => "subfolder",
            Mistake::ClusterName(_) => "cluster_name",
            Mistake::Suffix { .. } => "suffix",
        }
    }
}

impl fmt::Display for Mistake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mistake::Subfolder { expected_key } => write!(
                f,
                "flightdeck reads requests only directly in your home folder, not in subfolders: move this file to `{expected_key}`"
            ),
            Mistake::ClusterName(e) => write!(f, "{e}; rename the file"),
            Mistake::Suffix {
                file,
                expected_file,
            } => write!(
                f,
                "`{file}` is not a request flightdeck reads: name the file exactly `{expected_file}` (all lower case, with a hyphen)"
            ),
        }
    }
}

/// Where flightdeck explains a mistaken request: next to it, with `.cf-failed` appended.
pub fn mistake_report_key(source_key: &str) -> String {
    format!("{source_key}.{}", Suffix::Failed.as_str())
}

/// Classifies an object key.
///
/// `home_prefix` ends with `/` (checked by the configuration).
pub fn classify(home_prefix: &str, object_key: &str) -> KeyKind {
    match classify_borrowed(home_prefix, object_key) {
        Classified::Cluster {
            user,
            cluster,
            suffix,
        } => KeyKind::Cluster {
            key: ClusterKey {
                user: user.to_owned(),
                cluster: cluster.to_owned(),
            },
            suffix,
        },
        Classified::Other(kind) => kind,
    }
}

/// What [`classify`] finds, with a cluster's names still borrowed from the object key: a
/// listing tells most of a cluster's files apart without copying its names again.
pub(crate) enum Classified<'k> {
    /// [`KeyKind::Cluster`]; both names are valid.
    Cluster {
        user: &'k str,
        cluster: &'k str,
        suffix: Suffix,
    },
    /// Any other kind.
    Other(KeyKind),
}

/// [`classify`], borrowing a cluster's names.
pub(crate) fn classify_borrowed<'k>(home_prefix: &str, object_key: &'k str) -> Classified<'k> {
    let other = Classified::Other;
    let Some(rest) = object_key.strip_prefix(home_prefix) else {
        return other(KeyKind::Other);
    };
    let Some((user, path)) = rest.split_once('/') else {
        return other(KeyKind::Other);
    };
    if check_user_name(user).is_err() || path.is_empty() || path.ends_with('/') {
        return other(KeyKind::Other);
    }
    if let Some(source) = path
        .strip_suffix(Suffix::Failed.as_str())
        .and_then(|head| head.strip_suffix('.'))
        && request_like(source.rsplit('/').next().unwrap_or(source)).is_some()
        && !matches!(
            classify_borrowed(home_prefix, &format!("{home_prefix}{user}/{source}")),
            Classified::Cluster { .. }
        )
    {
        return other(KeyKind::MistakeReport {
            source_key: format!("{home_prefix}{user}/{source}"),
        });
    }
    let mistaken = |mistake| {
        other(KeyKind::Mistaken {
            user: user.to_owned(),
            report_key: mistake_report_key(object_key),
            mistake,
        })
    };
    if let Some((_, file)) = path.rsplit_once('/') {
        return match request_like(file) {
            Some(_) => mistaken(Mistake::Subfolder {
                expected_key: format!("{home_prefix}{user}/{file}"),
            }),
            None => other(KeyKind::Other),
        };
    }
    if let Some((stem, ext)) = path.rsplit_once('.')
        && let Some(suffix) = Suffix::parse(ext)
    {
        // The user name was checked above.
        return match check_cluster_name(stem) {
            Ok(()) => Classified::Cluster {
                user,
                cluster: stem,
                suffix,
            },
            Err(e) if suffix.is_user_written() => mistaken(Mistake::ClusterName(e)),
            Err(_) => other(KeyKind::Other),
        };
    }
    match request_like(path) {
        Some((stem, suffix)) => mistaken(Mistake::Suffix {
            file: path.to_owned(),
            expected_file: format!("{stem}.{}", suffix.as_str()),
        }),
        None => other(KeyKind::Other),
    }
}

/// Whether a file name reads as a request with a mangled suffix (`x.cf_create`,
/// `x.CF-Create`, `x.cf-create.txt`, `x.cfdelete`); returns the stem and the suffix meant.
fn request_like(file: &str) -> Option<(&str, Suffix)> {
    /// The longest ending looked for: `cfdeletejson`.
    const LONGEST: usize = 12;
    // Every ending looked for ends in `e`, `t` or `n`: most names are told apart by their
    // last letter or digit alone.
    let last_letter = file.bytes().rev().find(u8::is_ascii_alphanumeric)?;
    if !matches!(last_letter.to_ascii_lowercase(), b'e' | b't' | b'n') {
        return None;
    }
    let (stem, _) = file.split_once('.')?;
    // The name's last letters and digits, in lower case and in order: all that the
    // endings are compared with. Most keys under the home prefix are users' own files,
    // so this allocates nothing.
    let mut last = [0u8; LONGEST];
    let mut n = 0;
    for b in file
        .bytes()
        .rev()
        .filter(u8::is_ascii_alphanumeric)
        .take(LONGEST)
    {
        n += 1;
        last[LONGEST - n] = b.to_ascii_lowercase();
    }
    let folded = &last[LONGEST - n..];
    for (word, suffix) in [("cfcreate", Suffix::Create), ("cfdelete", Suffix::Delete)] {
        for tail in ["", "txt", "json"] {
            if folded
                .strip_suffix(tail.as_bytes())
                .is_some_and(|head| head.ends_with(word.as_bytes()))
            {
                return Some((stem, suffix));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOME: &str = "home/";

    fn cluster(user: &str, cluster: &str, suffix: Suffix) -> KeyKind {
        KeyKind::Cluster {
            key: ClusterKey::new(user, cluster).unwrap(),
            suffix,
        }
    }

    #[test]
    fn every_suffix_of_the_contract_is_recognised() {
        for suffix in Suffix::ALL {
            let k = format!("home/alice/x.{}", suffix.as_str());
            assert_eq!(classify(HOME, &k), cluster("alice", "x", suffix), "{k}");
        }
    }

    #[test]
    fn user_comes_from_the_path_and_may_hold_iam_punctuation() {
        assert_eq!(
            classify(HOME, "home/jean.luc+hpc@uni.ac.uk/run-1.cf-create"),
            cluster("jean.luc+hpc@uni.ac.uk", "run-1", Suffix::Create)
        );
    }

    #[test]
    fn object_key_round_trips_through_classify() {
        let key = ClusterKey::new("bob", "A1-b2").unwrap();
        let object = key.object_key(HOME, Suffix::Status);
        assert_eq!(object, "home/bob/A1-b2.cf-status");
        assert_eq!(
            classify(HOME, &object),
            cluster("bob", "A1-b2", Suffix::Status)
        );
    }

    #[test]
    fn request_in_a_subfolder_is_a_mistake_reported_next_to_it() {
        let KeyKind::Mistaken {
            user,
            report_key,
            mistake,
        } = classify(HOME, "home/alice/sub/x.cf-create")
        else {
            panic!("not a mistake")
        };
        assert_eq!(user, "alice");
        assert_eq!(report_key, "home/alice/sub/x.cf-create.cf-failed");
        assert!(mistake.to_string().contains("`home/alice/x.cf-create`"));
    }

    #[test]
    fn bad_cluster_name_is_a_mistake_that_suggests_a_valid_name() {
        let KeyKind::Mistaken { mistake, .. } = classify(HOME, "home/alice/my_cluster.cf-create")
        else {
            panic!("not a mistake")
        };
        let text = mistake.to_string();
        assert!(
            text.contains("`my_cluster` is not a valid cluster name"),
            "{text}"
        );
        assert!(text.contains("`my-cluster`"), "{text}");
    }

    #[test]
    fn mangled_suffixes_are_mistakes_naming_the_right_file() {
        for (file, expected) in [
            ("x.cf_create", "x.cf-create"),
            ("x.CF-CREATE", "x.cf-create"),
            ("x.cf-create.txt", "x.cf-create"),
            ("x.cfdelete", "x.cf-delete"),
            ("x.cf-delete.json", "x.cf-delete"),
        ] {
            let KeyKind::Mistaken { mistake, .. } = classify(HOME, &format!("home/alice/{file}"))
            else {
                panic!("{file} not a mistake")
            };
            assert_eq!(
                mistake,
                Mistake::Suffix {
                    file: file.to_owned(),
                    expected_file: expected.to_owned()
                }
            );
        }
    }

    #[test]
    fn a_request_like_name_is_judged_by_all_its_letters_and_digits_in_lower_case() {
        // The rule as first written: fold the whole name, then compare its ending.
        let by_folding = |file: &str| {
            file.split_once('.')?;
            let folded: String = file
                .chars()
                .filter(char::is_ascii_alphanumeric)
                .map(|c| c.to_ascii_lowercase())
                .collect();
            ["cfcreate", "cfdelete"].into_iter().find(|word| {
                ["", "txt", "json"]
                    .iter()
                    .any(|tail| folded.ends_with(&format!("{word}{tail}")))
            })
        };
        for file in [
            "x.cf-create",
            "x.C_F-créate",
            "x.cf-cré-ate",
            "x.c-f-d-e-l-e-t-e-.-j-s-o-n",
            "x.CFDELETE.JSON",
            "x.cf-create.json.bak",
            "x.cf-create-backup.json",
            "x.cfcreatetxt",
            "x.ccfcreate",
            "x.create",
            "x.json",
            "x.",
            "cf-create",
            "é.cf-deleté",
            "out.h5",
        ] {
            let suffix = request_like(file).map(|(_, s)| s.as_str().replace('-', ""));
            assert_eq!(suffix.as_deref(), by_folding(file), "{file}");
        }
    }

    #[test]
    fn unrelated_files_and_markers_with_bad_names_are_left_alone() {
        for k in [
            "home/alice/notes.txt",
            "home/alice/",
            "home/alice/sub/",
            "home/alice/x.cf-created.bak",
            "home/alice/my_cluster.cf-status",
            "home/alice",
            "other/alice/x.cf-create",
            "home/bad user/x.cf-create",
        ] {
            assert_eq!(classify(HOME, k), KeyKind::Other, "{k}");
        }
    }

    #[test]
    fn our_report_of_a_mistake_is_recognised_and_not_itself_a_mistake() {
        assert_eq!(
            classify(HOME, "home/alice/sub/x.cf-create.cf-failed"),
            KeyKind::MistakeReport {
                source_key: "home/alice/sub/x.cf-create".to_owned()
            }
        );
        assert_eq!(
            classify(HOME, "home/alice/x.cf_create.cf-failed"),
            KeyKind::MistakeReport {
                source_key: "home/alice/x.cf_create".to_owned()
            }
        );
    }

    #[test]
    fn cluster_name_rule_edges() {
        assert!(check_cluster_name("a").is_ok());
        assert!(check_cluster_name("0-a").is_ok());
        assert!(check_cluster_name(&"a".repeat(MAX_CLUSTER_LEN)).is_ok());
        for bad in [
            "",
            "-a",
            "a_b",
            "a.b",
            "é",
            &"a".repeat(MAX_CLUSTER_LEN + 1),
        ] {
            assert!(check_cluster_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn one_user_name_rule_for_enrolment_the_controller_and_the_template() {
        for ok in ["alice", "jean.luc", "bob_2", "Alice", "x"] {
            assert_eq!(check_owner_name(ok), Ok(()), "{ok}");
        }
        for (name, kind) in [
            ("jean+luc", "login"),
            ("a@b.org", "login"),
            (".hidden", "login"),
            ("-dash", "login"),
            ("a234567890123456789012345678901234", "login"),
            ("default", "reserved"),
            ("Default", "reserved"),
            ("root", "reserved"),
            ("slurm", "reserved"),
            ("munge", "reserved"),
            ("", "iam"),
            ("al ice", "iam"),
        ] {
            let got = check_owner_name(name).unwrap_err();
            let found = match got {
                UserNameError::NotIam(_) => "iam",
                UserNameError::NotLogin(_) => "login",
                UserNameError::Reserved(_) => "reserved",
            };
            assert_eq!(found, kind, "{name}");
        }
        let template = include_str!("../../templates/cluster.yaml");
        assert!(
            template.contains(&format!("AllowedPattern: \"{LOGIN_NAME_PATTERN}\"")),
            "the template's AccessUsername pattern differs from the controller's"
        );
        let script = include_str!("../../customizer/default/configure.d/10-access-user.sh");
        assert!(
            script.contains(&format!("[[ $user =~ {LOGIN_NAME_PATTERN} ]]")),
            "10-access-user.sh's pattern differs from the controller's"
        );
    }
}
