//! `flightdeck enrol`: creates a user's customizer folder.
//!
//! A user is enrolled when `<prefix><user>/configure.d/` holds an object
//! (`customizer/README.md`). [`enrol`] makes that folder from the repository's default
//! `configure.d/` files plus an `authorized_keys` holding the user's SSH public key(s). The
//! user name, the keys and the default folder are checked before anything is written.
//!
//! Which default files are copied: every regular file of the folder (a symbolic link to
//! one counts), except
//! - `*.example` files: they document optional settings and are never read on a node,
//!   which gets them from `<prefix>default/` anyway; a copy would only go stale;
//! - hidden files (`.name`) and editor backups (`name~`): not part of the defaults;
//! - `authorized_keys`: the user's keys take its place, as they would on the node, where
//!   the user's folder is laid over the default one file by file.
//!
//! Subdirectories are not copied: a node runs only the folder's own `*.sh`.
//!
//! The writes keep the folder usable at every step. `authorized_keys` goes first: the user
//! counts as enrolled from the first object on, and a cluster made from then on needs the
//! keys (until the copies land, nodes run the scripts of `<prefix>default/`). The other
//! files follow; last, with `force`, the objects of the old folder that are not in the new
//! set are removed, so the folder ends as an exact copy. A failure part-way leaves more
//! files than wanted, never a folder without keys, and the same command with `--force`
//! finishes the work.

use std::fs;
use std::path::{Path, PathBuf};

use flightdeck_core::key::{KeyError, check_owner_name, check_user_name};

use crate::ports::{CallError, ObjectStore};

/// The file of the user's folder that holds their SSH public keys.
pub const AUTHORIZED_KEYS: &str = "authorized_keys";

/// The folder under the prefix that holds the defaults; no user may be enrolled under it.
pub const DEFAULT_FOLDER: &str = "default";

/// What to enrol, and from where.
#[derive(Debug, Clone, Copy)]
pub struct Enrolment<'a> {
    /// The user's IAM user name.
    pub user: &'a str,
    /// The text of the SSH public key file: one key per line, `#` comments and blank
    /// lines allowed.
    pub ssh_keys: &'a str,
    /// The repository's `customizer/default/configure.d/`.
    pub default_dir: &'a Path,
    /// The customizer prefix, ending in `/`, e.g. `customizer/`.
    pub prefix: &'a str,
    /// Replace an existing folder.
    pub force: bool,
}

/// What an enrolment did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Enrolled {
    /// The object keys written, `authorized_keys` first.
    pub written: Vec<String>,
    /// The object keys of the old folder removed because they are not in the new one
    /// (only with `force`).
    pub removed: Vec<String>,
}

/// Why an enrolment did not happen, or did not finish.
///
/// The messages say what the operator can do. A failed AWS call or file read is kept as
/// the `source`, not repeated in the message.
#[derive(Debug, thiserror::Error)]
pub enum EnrolError {
    /// The user name is not an IAM user name.
    #[error("cannot enrol: {0}")]
    User(#[source] KeyError),
    /// The user name cannot own a cluster (not a login name, or reserved).
    #[error("cannot enrol: {0}")]
    Owner(#[source] flightdeck_core::key::UserNameError),
    /// The user name is the name of the defaults' folder.
    #[error(
        "cannot enrol a user named `{DEFAULT_FOLDER}`: `{prefix}{DEFAULT_FOLDER}/` holds the defaults every node reads"
    )]
    ReservedUser {
        /// The customizer prefix.
        prefix: String,
    },
    /// The prefix does not end in `/`.
    #[error("the customizer prefix `{0}` must end in `/`")]
    Prefix(String),
    /// The key text holds a private key.
    #[error(
        "the SSH key file looks like a private key; nothing was written. Give the public key instead: the `.pub` file, or what `ssh-keygen -y -f PRIVATE_KEY_FILE` prints"
    )]
    PrivateKey,
    /// The key text is an SSH2 (RFC 4716) public key, which OpenSSH does not read.
    #[error(
        "the SSH key file is in the SSH2 (RFC 4716) format; nothing was written. Convert it with `ssh-keygen -i -f FILE` and give what that prints"
    )]
    Ssh2Format,
    /// The key text holds comments and blank lines only.
    #[error(
        "the SSH key file holds no public key; nothing was written. Expected one key per line, such as `ssh-ed25519 AAAAC3Nza... alice@example.org`"
    )]
    NoKey,
    /// A line of the key text is neither a public key, a comment nor blank.
    #[error(
        "line {line} of the SSH key file is not an OpenSSH public key: {problem}; nothing was written"
    )]
    BadKey {
        /// The line number, from 1.
        line: usize,
        /// What is wrong with it.
        problem: KeyProblem,
    },
    /// The default folder cannot be read.
    #[error(
        "cannot read the default folder {} (give the repository's customizer/default/configure.d)",
        .path.display()
    )]
    DefaultFolder {
        /// The folder.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A file of the default folder cannot be read.
    #[error("cannot read {} of the default folder", .path.display())]
    DefaultFile {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A file of the default folder has a name or content that is not UTF-8.
    #[error(
        "{} of the default folder is not UTF-8 text (name or content); the customizer folder holds scripts and text files only",
        .path.display()
    )]
    NotText {
        /// The file.
        path: PathBuf,
    },
    /// The default folder holds nothing to copy.
    #[error(
        "the default folder {} holds no file to copy (expected the configure.d scripts; subdirectories, hidden files and *.example are not copied)",
        .path.display()
    )]
    NoDefaultFiles {
        /// The folder.
        path: PathBuf,
    },
    /// The user's folder exists and `force` was not given.
    #[error(
        "`{folder}` already exists in the customizer bucket; nothing was written. Run again with `--force` to replace it (objects not in the new folder are removed)"
    )]
    AlreadyEnrolled {
        /// The user's folder, `<prefix><user>/`.
        folder: String,
    },
    /// Listing the user's folder failed.
    #[error("cannot look at `{folder}` in the customizer bucket; nothing was written")]
    List {
        /// The user's folder.
        folder: String,
        /// The failed call.
        #[source]
        source: CallError,
    },
    /// Writing an object failed.
    #[error(
        "cannot write `{key}`; the folder may be incomplete: run the same command again with `--force`"
    )]
    Write {
        /// The object key.
        key: String,
        /// The failed call.
        #[source]
        source: CallError,
    },
    /// Removing an object of the old folder failed.
    #[error(
        "cannot remove `{key}`, which is not in the new folder; the new files are written: run the same command again with `--force` to finish"
    )]
    Remove {
        /// The object key.
        key: String,
        /// The failed call.
        #[source]
        source: CallError,
    },
}

/// Why the older design's `configure.d/user.sh` gives no key for this user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SeedScriptError {
    /// No `pubkey="..."` assignment.
    #[error(
        "the script has no `pubkey=\"...\"` line (the older design's configure.d/user.sh sets the user's key there); give the key with --ssh-key instead"
    )]
    NoKey,
    /// The script was written for another user.
    #[error(
        "the script is for user `{script}` (its `user=` line), not `{user}`; nothing was written"
    )]
    OtherUser {
        /// The user the script names.
        script: String,
        /// The user being enrolled.
        user: String,
    },
}

/// The SSH public key in the older design's `customizer/<user>/configure.d/user.sh`: the
/// value of its last `pubkey="..."` line (the one the script appends to the user's
/// `authorized_keys`). A `user="..."` line, when there is one, must name `user`. The key
/// is checked like any other by [`enrol`].
///
/// # Errors
/// [`SeedScriptError`] when there is no key, or the script names another user.
pub fn keys_from_seed_script(script: &str, user: &str) -> Result<String, SeedScriptError> {
    let value = |name: &str| {
        script
            .lines()
            .filter_map(|line| line.trim().strip_prefix(name)?.strip_prefix('='))
            .map(|v| v.trim().trim_matches(|c| c == '"' || c == '\'').to_owned())
            .next_back()
    };
    if let Some(script_user) = value("user")
        && script_user != user
    {
        return Err(SeedScriptError::OtherUser {
            script: script_user,
            user: user.to_owned(),
        });
    }
    value("pubkey")
        .filter(|k| !k.is_empty())
        .map(|k| format!("{k}\n"))
        .ok_or(SeedScriptError::NoKey)
}

/// Why a line is not an OpenSSH public key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyProblem {
    /// No supported key type at the start of the line or after its options.
    #[error(
        "expected a key type (ssh-ed25519, ssh-rsa, ecdsa-sha2-nistp256/384/521, sk-ssh-ed25519@openssh.com, sk-ecdsa-sha2-nistp256@openssh.com) at the start of the line or after its options, found `{0}`"
    )]
    UnknownType(String),
    /// The key type is not followed by the key data.
    #[error("`{0}` is not followed by the key data")]
    MissingData(String),
    /// The key data is not base64.
    #[error("the key data is not valid base64 (was the line cut or wrapped?)")]
    NotBase64,
    /// The key data does not have the layout of its type.
    #[error("the key data is incomplete or damaged (was the line cut or wrapped?)")]
    Damaged,
    /// The line names one type, the key data another.
    #[error("the line says `{declared}` but the key data is of type `{embedded}`")]
    TypeMismatch {
        /// The type the line starts with.
        declared: String,
        /// The type the key data names.
        embedded: String,
    },
}

/// A public key type accepted, and the layout of its key data.
struct KeyType {
    /// The name, at the start of the line and of the key data.
    name: &'static str,
    /// How many length-prefixed fields the key data holds, the name included.
    fields: usize,
    /// The curve the key data names second, for ECDSA.
    curve: Option<&'static str>,
}

const KEY_TYPES: [KeyType; 7] = [
    KeyType {
        name: "ssh-ed25519",
        fields: 2,
        curve: None,
    },
    KeyType {
        name: "ssh-rsa",
        fields: 3,
        curve: None,
    },
    KeyType {
        name: "ecdsa-sha2-nistp256",
        fields: 3,
        curve: Some("nistp256"),
    },
    KeyType {
        name: "ecdsa-sha2-nistp384",
        fields: 3,
        curve: Some("nistp384"),
    },
    KeyType {
        name: "ecdsa-sha2-nistp521",
        fields: 3,
        curve: Some("nistp521"),
    },
    KeyType {
        name: "sk-ssh-ed25519@openssh.com",
        fields: 3,
        curve: None,
    },
    KeyType {
        name: "sk-ecdsa-sha2-nistp256@openssh.com",
        fields: 4,
        curve: Some("nistp256"),
    },
];

/// Creates `<prefix><user>/configure.d/` from the default files and the keys.
///
/// Without `force`, an existing folder (any object under `<prefix><user>/`) is left
/// alone. With `force`, the folder is made an exact copy of the new set.
///
/// # Errors
/// A bad user name, prefix, key text or default folder, and an existing folder without
/// `force`, are found before anything is written. A failed write or removal stops there
/// and names the object.
pub async fn enrol(store: &impl ObjectStore, e: &Enrolment<'_>) -> Result<Enrolled, EnrolError> {
    check_user_name(e.user).map_err(EnrolError::User)?;
    if !e.prefix.ends_with('/') {
        return Err(EnrolError::Prefix(e.prefix.to_owned()));
    }
    if e.user.eq_ignore_ascii_case(DEFAULT_FOLDER) {
        return Err(EnrolError::ReservedUser {
            prefix: e.prefix.to_owned(),
        });
    }
    // The controller's rule: a user it would refuse must not be enrolled either.
    check_owner_name(e.user).map_err(EnrolError::Owner)?;
    let keys = authorized_keys(e.ssh_keys)?;
    let defaults = default_files(e.default_dir)?;

    let folder = format!("{}{}/", e.prefix, e.user);
    let configure = format!("{folder}configure.d/");
    let mut files = vec![(format!("{configure}{AUTHORIZED_KEYS}"), keys)];
    files.extend(
        defaults
            .into_iter()
            .map(|(name, body)| (format!("{configure}{name}"), body)),
    );

    let list_failed = |source| EnrolError::List {
        folder: folder.clone(),
        source,
    };
    let old: Vec<String> = if e.force {
        let listed = store.list(&folder).await.map_err(list_failed)?;
        listed.into_iter().map(|o| o.key).collect()
    } else if store.any_under(&folder).await.map_err(list_failed)? {
        return Err(EnrolError::AlreadyEnrolled { folder });
    } else {
        Vec::new()
    };

    let mut done = Enrolled::default();
    for (key, body) in &files {
        store
            .put(key, body)
            .await
            .map_err(|source| EnrolError::Write {
                key: key.clone(),
                source,
            })?;
        done.written.push(key.clone());
    }
    for key in old {
        if done.written.contains(&key) {
            continue;
        }
        store
            .delete(&key)
            .await
            .map_err(|source| EnrolError::Remove {
                key: key.clone(),
                source,
            })?;
        done.removed.push(key);
    }
    Ok(done)
}

/// Checks the key text and returns it as it is written: each line trimmed, ending in a
/// newline.
fn authorized_keys(text: &str) -> Result<String, EnrolError> {
    if text.contains("PRIVATE KEY") || text.contains("PuTTY-User-Key-File") {
        return Err(EnrolError::PrivateKey);
    }
    if text.contains("BEGIN SSH2 PUBLIC KEY") {
        return Err(EnrolError::Ssh2Format);
    }
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut keys = 0;
    let mut lines = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if !(line.is_empty() || line.starts_with('#')) {
            check_key_line(line).map_err(|problem| EnrolError::BadKey {
                line: n + 1,
                problem,
            })?;
            keys += 1;
        }
        lines.push(line);
    }
    if keys == 0 {
        return Err(EnrolError::NoKey);
    }
    Ok(format!("{}\n", lines.join("\n").trim()))
}

/// Checks one `[options] type base64 [comment]` line, as in `authorized_keys`.
fn check_key_line(line: &str) -> Result<(), KeyProblem> {
    let first = line.split_ascii_whitespace().next().unwrap_or_default();
    let key_type = |word: &str| KEY_TYPES.iter().find(|t| t.name == word);
    let rest = if key_type(first).is_some() {
        line
    } else {
        after_options(line).unwrap_or_default()
    };
    let mut words = rest.split_ascii_whitespace();
    let name = words.next().unwrap_or_default();
    let Some(kind) = key_type(name) else {
        return Err(KeyProblem::UnknownType(shorten(first)));
    };
    let data = words
        .next()
        .ok_or_else(|| KeyProblem::MissingData(name.to_owned()))?;
    let blob = decode_base64(data).ok_or(KeyProblem::NotBase64)?;
    let fields = blob_fields(&blob).ok_or(KeyProblem::Damaged)?;
    let embedded = fields.first().ok_or(KeyProblem::Damaged)?;
    if *embedded != kind.name.as_bytes() {
        return Err(KeyProblem::TypeMismatch {
            declared: name.to_owned(),
            embedded: shorten(&String::from_utf8_lossy(embedded)),
        });
    }
    let curve_ok = kind
        .curve
        .is_none_or(|c| fields.get(1).is_some_and(|f| *f == c.as_bytes()));
    if fields.len() != kind.fields || !curve_ok {
        return Err(KeyProblem::Damaged);
    }
    Ok(())
}

/// What follows the options field of an `authorized_keys` line: options end at the first
/// space or tab outside double quotes, and `\"` inside quotes does not end the quotes.
fn after_options(line: &str) -> Option<&str> {
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in line.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ' ' | '\t' if !quoted => return Some(line[i..].trim_start()),
            _ => {}
        }
    }
    None
}

/// A word of the operator's input, cut for an error message.
fn shorten(word: &str) -> String {
    const MAX: usize = 40;
    match word.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}...", &word[..i]),
        None => word.to_owned(),
    }
}

/// Standard base64 with padding, as OpenSSH writes it; `None` unless the text is exactly
/// that (length a multiple of 4, no stray characters, unused bits zero).
fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let bytes = text.as_bytes();
    if bytes.is_empty() || !bytes.len().is_multiple_of(4) {
        return None;
    }
    let padding = bytes.iter().rev().take_while(|&&b| b == b'=').count();
    if padding > 2 {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for &b in &bytes[..bytes.len() - padding] {
        let value = match b {
            b'A'..=b'Z' => b - b'A',
            b'a'..=b'z' => b - b'a' + 26,
            b'0'..=b'9' => b - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(value);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(u8::try_from(acc >> bits).ok()?);
            acc &= (1 << bits) - 1;
        }
    }
    (acc == 0).then_some(out)
}

/// The length-prefixed fields (4-byte big-endian length, then the bytes) that make up
/// SSH key data; `None` unless they fill it exactly.
fn blob_fields(mut blob: &[u8]) -> Option<Vec<&[u8]>> {
    let mut fields = Vec::new();
    while !blob.is_empty() {
        let (len, rest) = blob.split_first_chunk::<4>()?;
        let len = usize::try_from(u32::from_be_bytes(*len)).ok()?;
        if rest.len() < len {
            return None;
        }
        let (field, rest) = rest.split_at(len);
        fields.push(field);
        blob = rest;
    }
    Some(fields)
}

/// Whether a file of the default folder is copied (see the module's documentation).
fn copied(name: &str) -> bool {
    !(name.starts_with('.')
        || name.ends_with('~')
        || name.ends_with(".example")
        || name == AUTHORIZED_KEYS)
}

/// The files of the default folder that are copied, as (name, content), by name.
fn default_files(dir: &Path) -> Result<Vec<(String, String)>, EnrolError> {
    let unreadable = |source| EnrolError::DefaultFolder {
        path: dir.to_owned(),
        source,
    };
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).map_err(unreadable)? {
        let path = entry.map_err(unreadable)?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            return Err(EnrolError::NotText { path });
        };
        if !copied(name) {
            continue;
        }
        let name = name.to_owned();
        let file_failed = |source| EnrolError::DefaultFile {
            path: path.clone(),
            source,
        };
        // Follows a symbolic link, so a link to a regular file counts as one.
        if !fs::metadata(&path).map_err(file_failed)?.is_file() {
            continue;
        }
        let bytes = fs::read(&path).map_err(file_failed)?;
        let Ok(body) = String::from_utf8(bytes) else {
            return Err(EnrolError::NotText { path });
        };
        files.push((name, body));
    }
    if files.is_empty() {
        return Err(EnrolError::NoDefaultFiles {
            path: dir.to_owned(),
        });
    }
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::error::Error as _;
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;
    use crate::fake::FakeStore;
    use crate::ports::ErrorKind;

    const ED25519: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPZbhMULNk97Q3/A7xwdpKy/4Nz20D7FpLeGUaRa1vrX alice@example.org";
    const RSA: &str = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQDDQkw3fl1atw6oQaUjqobIfS7iP0Q+EWaAdxfc4gEJJnSn+DvTu2ZASlS4uADrnnz9rUFlzOvLg9GldrZQnMZuYUGgIyJ4pM2GDF3ZGVkWE9SlWY9pIVat+UikYuKxIj03n+bDtkQGhqD5he+zCcWKgQtI4NMM0w/2XbfCxuSMAw== rsa";
    const ECDSA_256: &str = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBJ48NQRKWr+9wzRVMLzZgAQdnBZajHVE24qsjpxRsPDW277uyDJqnT2Y+1kXtzFo0Kfll8VsuXD1OPSDKvmaISU= p256";
    const ECDSA_384: &str = "ecdsa-sha2-nistp384 AAAAE2VjZHNhLXNoYTItbmlzdHAzODQAAAAIbmlzdHAzODQAAABhBK455sKtBZzVfc+OrtBsF6LbBJJrVr0u3NFCGKoEN+4YH7zQWPCgy6fiWuOz8kWw0hXaoUZTdllNtl3ycChssPAwKkmiF4PAuGn6Kzx75/pIVmaento/gtfMFfcpZ/TQew== p384";
    const ECDSA_521: &str = "ecdsa-sha2-nistp521 AAAAE2VjZHNhLXNoYTItbmlzdHA1MjEAAAAIbmlzdHA1MjEAAACFBAA05JeXRfdQV4c9G9oGhoaD1El4ffXNPh3LNUTzEObDVpc5+DKs4ryRYpf8Szc0bhSzCIRSmDGLmxTObP4/fBMU4wCg6JTcvxiW43eI5NLxTo+4ieyaGv72OC0A8cYSTJ31zS5J9hP80/xiruKH+vCdrgkrTBMk4DulomEN3XE8eIsnLA== p521";
    const SK_ED25519: &str = "sk-ssh-ed25519@openssh.com AAAAGnNrLXNzaC1lZDI1NTE5QG9wZW5zc2guY29tAAAAIOfKaXYqFZ8sMeyj48SqFFRi32yB+nodb0Wt3929Sz1CAAAABHNzaDo= sk";
    const SK_ECDSA: &str = "sk-ecdsa-sha2-nistp256@openssh.com AAAAInNrLWVjZHNhLXNoYTItbmlzdHAyNTZAb3BlbnNzaC5jb20AAAAIbmlzdHAyNTYAAABBBJ48NQRKWr+9wzRVMLzZgAQdnBZajHVE24qsjpxRsPDW277uyDJqnT2Y+1kXtzFo0Kfll8VsuXD1OPSDKvmaISUAAAAEc3NoOg== sk-ecdsa";

    /// The repository's default folder.
    fn repository_defaults() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../customizer/default/configure.d")
    }

    /// A folder of files under the system's temporary folder, removed when dropped.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(files: &[(&str, &str)]) -> Scratch {
            static NEXT: AtomicU32 = AtomicU32::new(0);
            let dir = std::env::temp_dir().join(format!(
                "flightdeck-enrol-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            fs::create_dir_all(&dir).expect("a scratch folder");
            for (name, body) in files {
                let path = dir.join(name);
                fs::create_dir_all(path.parent().expect("a parent")).expect("a subfolder");
                fs::write(path, body).expect("a scratch file");
            }
            Scratch(dir)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn alice(default_dir: &Path) -> Enrolment<'_> {
        Enrolment {
            user: "alice",
            ssh_keys: ED25519,
            default_dir,
            prefix: "customizer/",
            force: false,
        }
    }

    fn keys_under(store: &FakeStore, prefix: &str) -> BTreeSet<String> {
        store
            .keys()
            .into_iter()
            .filter(|k| k.starts_with(prefix))
            .collect()
    }

    fn bad_key(text: &str) -> KeyProblem {
        match authorized_keys(text) {
            Err(EnrolError::BadKey { problem, .. }) => problem,
            other => panic!("expected a bad key, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_new_user_gets_the_default_scripts_and_their_keys() {
        let defaults = repository_defaults();
        let store = FakeStore::default();
        let done = enrol(&store, &alice(&defaults)).await.unwrap();
        let folder = "customizer/alice/configure.d/";
        assert_eq!(done.written[0], format!("{folder}authorized_keys"));
        assert!(done.removed.is_empty());
        let written: BTreeSet<String> = done.written.iter().cloned().collect();
        assert_eq!(keys_under(&store, ""), written);
        for script in [
            "10-access-user.sh",
            "20-packages.sh",
            "30-hyperthreading.sh",
        ] {
            let key = format!("{folder}{script}");
            assert_eq!(
                store.text(&key).unwrap(),
                fs::read_to_string(defaults.join(script)).unwrap(),
            );
        }
        assert!(!written.iter().any(|k| k.ends_with(".example")));
        assert_eq!(
            store.text(&format!("{folder}authorized_keys")).unwrap(),
            format!("{ED25519}\n")
        );
    }

    #[tokio::test]
    async fn authorized_keys_is_written_before_the_scripts() {
        let defaults = Scratch::new(&[("10-a.sh", "a"), ("00-first.sh", "b")]);
        let store = FakeStore::default();
        enrol(&store, &alice(&defaults.0)).await.unwrap();
        assert_eq!(
            store.writes(),
            [
                "PutObject customizer/alice/configure.d/authorized_keys",
                "PutObject customizer/alice/configure.d/00-first.sh",
                "PutObject customizer/alice/configure.d/10-a.sh",
            ]
        );
    }

    #[tokio::test]
    async fn only_regular_files_that_are_not_examples_hidden_or_backups_are_copied() {
        let defaults = Scratch::new(&[
            ("10-a.sh", "a"),
            ("packages.txt", "htop"),
            ("settings.env.example", "#X=1"),
            (".hidden", "x"),
            ("10-a.sh~", "old"),
            ("authorized_keys", "ssh-ed25519 default-key"),
            ("sub/99-nested.sh", "n"),
        ]);
        let store = FakeStore::default();
        enrol(&store, &alice(&defaults.0)).await.unwrap();
        let folder = "customizer/alice/configure.d/";
        assert_eq!(
            keys_under(&store, ""),
            ["10-a.sh", "authorized_keys", "packages.txt"]
                .iter()
                .map(|n| format!("{folder}{n}"))
                .collect()
        );
        assert_eq!(
            store.text(&format!("{folder}authorized_keys")).unwrap(),
            format!("{ED25519}\n")
        );
    }

    #[tokio::test]
    async fn an_existing_folder_is_not_replaced_without_force() {
        let defaults = Scratch::new(&[("10-a.sh", "a")]);
        let store = FakeStore::default();
        // Any object under the user's folder counts, not only under configure.d/.
        store.insert("customizer/alice/notes.txt", "kept");
        let err = enrol(&store, &alice(&defaults.0)).await.unwrap_err();
        assert!(
            matches!(&err, EnrolError::AlreadyEnrolled { folder } if folder == "customizer/alice/")
        );
        let message = err.to_string();
        assert!(message.contains("`customizer/alice/`") && message.contains("--force"));
        assert!(store.writes().is_empty());
        assert_eq!(store.text("customizer/alice/notes.txt").unwrap(), "kept");
    }

    #[tokio::test]
    async fn force_replaces_the_folder_and_removes_what_is_not_in_the_new_set() {
        let defaults = Scratch::new(&[("10-a.sh", "new a"), ("20-b.sh", "b")]);
        let store = FakeStore::default();
        store.insert("customizer/alice/configure.d/10-a.sh", "old a");
        store.insert("customizer/alice/configure.d/authorized_keys", "old key");
        store.insert("customizer/alice/configure.d/packages.txt", "stray");
        store.insert("customizer/alice/elsewhere", "stray");
        store.insert(
            "customizer/alice2/configure.d/authorized_keys",
            "other user",
        );
        store.insert("customizer/default/configure.d/10-a.sh", "default");
        let e = Enrolment {
            force: true,
            ..alice(&defaults.0)
        };
        let done = enrol(&store, &e).await.unwrap();
        let folder = "customizer/alice/configure.d/";
        assert_eq!(
            done.removed,
            [
                "customizer/alice/configure.d/packages.txt",
                "customizer/alice/elsewhere"
            ]
        );
        assert_eq!(
            keys_under(&store, "customizer/alice/"),
            done.written.iter().cloned().collect()
        );
        assert_eq!(store.text(&format!("{folder}10-a.sh")).unwrap(), "new a");
        assert_eq!(
            store.text(&format!("{folder}authorized_keys")).unwrap(),
            format!("{ED25519}\n")
        );
        assert_eq!(
            store
                .text("customizer/alice2/configure.d/authorized_keys")
                .unwrap(),
            "other user"
        );
        assert_eq!(
            store
                .text("customizer/default/configure.d/10-a.sh")
                .unwrap(),
            "default"
        );
        // The new files are written before anything is removed.
        let writes = store.writes();
        let first_delete = writes.iter().position(|w| w.starts_with("DeleteObject"));
        let last_put = writes.iter().rposition(|w| w.starts_with("PutObject"));
        assert!(last_put < first_delete);
    }

    #[tokio::test]
    async fn force_on_a_new_user_just_writes() {
        let defaults = Scratch::new(&[("10-a.sh", "a")]);
        let store = FakeStore::default();
        let e = Enrolment {
            force: true,
            ..alice(&defaults.0)
        };
        let done = enrol(&store, &e).await.unwrap();
        assert_eq!(done.written.len(), 2);
        assert!(done.removed.is_empty());
    }

    #[tokio::test]
    async fn a_private_key_is_refused_and_nothing_is_written() {
        let defaults = repository_defaults();
        let store = FakeStore::default();
        let private = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmU=\n-----END OPENSSH PRIVATE KEY-----\n";
        for text in [private, &format!("{ED25519}\n{private}")] {
            let e = Enrolment {
                ssh_keys: text,
                ..alice(&defaults)
            };
            let err = enrol(&store, &e).await.unwrap_err();
            assert!(matches!(err, EnrolError::PrivateKey), "{err:?}");
            assert!(err.to_string().contains("looks like a private key"));
        }
        assert!(store.calls().is_empty());
    }

    #[tokio::test]
    async fn a_bad_user_name_is_refused_before_any_call() {
        let defaults = repository_defaults();
        let store = FakeStore::default();
        for user in ["", "alice/bob", "al ice", &"a".repeat(65)] {
            let e = Enrolment {
                user,
                ..alice(&defaults)
            };
            let err = enrol(&store, &e).await.unwrap_err();
            assert!(matches!(err, EnrolError::User(_)), "{user}: {err:?}");
            assert!(err.to_string().contains("IAM user name"));
        }
        for user in ["jean+luc", "root", "Slurm"] {
            let e = Enrolment {
                user,
                ..alice(&defaults)
            };
            let err = enrol(&store, &e).await.unwrap_err();
            assert!(matches!(err, EnrolError::Owner(_)), "{user}: {err:?}");
        }
        let e = Enrolment {
            user: "Default",
            ..alice(&defaults)
        };
        let err = enrol(&store, &e).await.unwrap_err();
        assert!(matches!(err, EnrolError::ReservedUser { .. }), "{err:?}");
        assert!(err.to_string().contains("`customizer/default/`"));
        assert!(store.calls().is_empty());
    }

    #[tokio::test]
    async fn a_prefix_without_a_slash_is_refused() {
        let defaults = repository_defaults();
        let e = Enrolment {
            prefix: "customizer",
            ..alice(&defaults)
        };
        let err = enrol(&FakeStore::default(), &e).await.unwrap_err();
        assert!(matches!(err, EnrolError::Prefix(_)), "{err:?}");
    }

    #[tokio::test]
    async fn a_missing_or_empty_default_folder_is_refused_before_any_call() {
        let store = FakeStore::default();
        let empty = Scratch::new(&[("settings.env.example", "#"), ("sub/x.sh", "x")]);
        let missing = empty.0.join("missing");
        let err = enrol(&store, &alice(&missing)).await.unwrap_err();
        assert!(matches!(err, EnrolError::DefaultFolder { .. }), "{err:?}");
        assert!(err.source().is_some());
        let err = enrol(&store, &alice(&empty.0)).await.unwrap_err();
        assert!(matches!(err, EnrolError::NoDefaultFiles { .. }), "{err:?}");
        assert!(store.calls().is_empty());
    }

    #[tokio::test]
    async fn a_default_file_that_is_not_text_is_refused() {
        let defaults = Scratch::new(&[("10-a.sh", "a")]);
        fs::write(defaults.0.join("20-binary.sh"), [0xff, 0xfe, 0x00]).unwrap();
        let err = enrol(&FakeStore::default(), &alice(&defaults.0))
            .await
            .unwrap_err();
        assert!(matches!(err, EnrolError::NotText { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn a_failed_write_names_the_object_and_keeps_the_cause() {
        let defaults = Scratch::new(&[("10-a.sh", "a")]);
        let store = FakeStore::default();
        store.fail("PutObject", ErrorKind::Denied, 1);
        let err = enrol(&store, &alice(&defaults.0)).await.unwrap_err();
        let EnrolError::Write { key, source } = &err else {
            panic!("expected a write failure, got {err:?}");
        };
        assert_eq!(key, "customizer/alice/configure.d/authorized_keys");
        assert_eq!(source.kind, ErrorKind::Denied);
        assert!(err.to_string().contains("--force"));
    }

    #[tokio::test]
    async fn a_failed_listing_writes_nothing() {
        let defaults = Scratch::new(&[("10-a.sh", "a")]);
        let store = FakeStore::default();
        store.fail("ListObjectsV2", ErrorKind::Transient, 1);
        let err = enrol(&store, &alice(&defaults.0)).await.unwrap_err();
        assert!(matches!(err, EnrolError::List { .. }), "{err:?}");
        assert!(store.writes().is_empty());
    }

    #[test]
    fn the_older_designs_user_script_gives_its_key() {
        let script = format!(
            "#!/bin/bash\n\nuser=\"alice\"\n\npubkey=\"{ED25519}\"\n\nfile=/home/${{user}}/.ssh/authorized_keys\necho \"${{pubkey}} ${{user}}\" >> ${{file}}\n"
        );
        let keys = keys_from_seed_script(&script, "alice").unwrap();
        assert_eq!(keys, format!("{ED25519}\n"));
        assert_eq!(authorized_keys(&keys).unwrap(), format!("{ED25519}\n"));
        assert_eq!(
            keys_from_seed_script(&script, "bob"),
            Err(SeedScriptError::OtherUser {
                script: "alice".into(),
                user: "bob".into()
            })
        );
        assert_eq!(
            keys_from_seed_script("#!/bin/bash\ntouch /tmp/x\n", "alice"),
            Err(SeedScriptError::NoKey)
        );
        // The older design's placeholder is no key, and enrol says so.
        let placeholder = keys_from_seed_script(
            "user=\"alice\"\npubkey=\"ssh-rsa AAAAAAAAAAAAAAAA\"\n",
            "alice",
        )
        .unwrap();
        assert!(matches!(
            authorized_keys(&placeholder),
            Err(EnrolError::BadKey { .. })
        ));
    }

    #[test]
    fn every_supported_key_type_is_accepted() {
        for key in [
            ED25519, RSA, ECDSA_256, ECDSA_384, ECDSA_521, SK_ED25519, SK_ECDSA,
        ] {
            assert_eq!(authorized_keys(key).unwrap(), format!("{key}\n"));
        }
    }

    #[test]
    fn comments_blank_lines_options_and_line_endings_are_kept_tidy() {
        let text = format!(
            "\u{feff}# alice's keys\r\n\r\n  {ED25519}  \r\nfrom=\"10.0.0.0/8\",command=\"echo \\\"a b\\\"\" {RSA}\n\n"
        );
        assert_eq!(
            authorized_keys(&text).unwrap(),
            format!(
                "# alice's keys\n\n{ED25519}\nfrom=\"10.0.0.0/8\",command=\"echo \\\"a b\\\"\" {RSA}\n"
            )
        );
    }

    #[test]
    fn text_without_a_key_is_refused() {
        for text in ["", "\n\n", "# only a comment\n"] {
            assert!(matches!(authorized_keys(text), Err(EnrolError::NoKey)));
        }
        assert!(matches!(
            authorized_keys("---- BEGIN SSH2 PUBLIC KEY ----\nAAAA\n---- END SSH2 PUBLIC KEY ----"),
            Err(EnrolError::Ssh2Format)
        ));
    }

    #[test]
    fn a_line_that_is_not_a_public_key_is_refused_with_its_number() {
        let err = authorized_keys(&format!("# mine\n{ED25519}\nssh-dss AAAAB3NzaC1kc3M= old"))
            .unwrap_err();
        assert!(
            matches!(&err, EnrolError::BadKey { line: 3, problem: KeyProblem::UnknownType(t) } if t == "ssh-dss"),
            "{err:?}"
        );
        assert!(err.to_string().starts_with("line 3 of the SSH key file"));
        assert_eq!(
            bad_key("ssh-ed25519"),
            KeyProblem::MissingData("ssh-ed25519".into())
        );
        assert_eq!(bad_key("ssh-ed25519 not*base64 x"), KeyProblem::NotBase64);
        assert_eq!(
            bad_key(&format!("x{ED25519}")),
            KeyProblem::UnknownType("xssh-ed25519".into())
        );
    }

    #[test]
    fn key_data_of_another_type_is_refused() {
        let data = ED25519.split(' ').nth(1).unwrap();
        assert_eq!(
            bad_key(&format!("ssh-rsa {data}")),
            KeyProblem::TypeMismatch {
                declared: "ssh-rsa".into(),
                embedded: "ssh-ed25519".into()
            }
        );
        let p256 = ECDSA_256.split(' ').nth(1).unwrap();
        assert!(matches!(
            bad_key(&format!("ecdsa-sha2-nistp384 {p256}")),
            KeyProblem::TypeMismatch { .. }
        ));
    }

    #[test]
    fn cut_key_data_is_refused() {
        let data = RSA.split(' ').nth(1).unwrap();
        // Cut at a multiple of four characters, so it is still valid base64.
        assert_eq!(
            bad_key(&format!("ssh-rsa {}", &data[..data.len() - 8])),
            KeyProblem::Damaged
        );
        // A whole ed25519 key with the key bytes missing.
        assert_eq!(
            bad_key("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5"),
            KeyProblem::Damaged
        );
    }

    #[test]
    fn base64_decodes_padded_text_and_refuses_the_rest() {
        assert_eq!(decode_base64("TWFu").unwrap(), b"Man");
        assert_eq!(decode_base64("TWE=").unwrap(), b"Ma");
        assert_eq!(decode_base64("TQ==").unwrap(), b"M");
        assert_eq!(decode_base64("+/+/").unwrap(), [0xfb, 0xff, 0xbf]);
        for bad in ["", "TWF", "TQ=", "T===", "TW=u", "TWF!", "TR==", "TWF=TWFu"] {
            assert_eq!(decode_base64(bad), None, "{bad}");
        }
    }
}
