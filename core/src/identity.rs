//! Stack identity: the name, the tags and the idempotency tokens of a cluster's stack.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use crate::key::{ClusterKey, MAX_CLUSTER_LEN, MAX_USER_LEN};

/// Tag holding the user name (as in the older design).
pub const TAG_USER: &str = "USER";
/// Tag holding the cluster name.
pub const TAG_CLUSTER: &str = "flightdeck:cluster";
/// Tag naming the controller instance that owns the stack.
pub const TAG_OWNER: &str = "flightdeck:owner";
/// Tag holding the hash of the normalised request parameters.
pub const TAG_REQUEST: &str = "flightdeck:request";
/// Tag holding when the cluster's lifetime ends (seconds since the epoch), fixed at create
/// time: what the request says later cannot move it.
pub const TAG_EXPIRES: &str = "flightdeck:expires";
/// Tag of a stack flightdeck did not create but adopted (`flightdeck adopt`): when, in
/// seconds since the epoch. Its template is the older design's, so an update keeps it
/// (flightdeck's template would replace the cluster).
pub const TAG_ADOPTED: &str = "flightdeck:adopted";

/// Longest stack-name prefix.
pub const MAX_PREFIX_LEN: usize = 16;
/// CloudFormation's limit on stack names.
pub const MAX_STACK_NAME_LEN: usize = 128;
/// Hex digits of the user-name hash in a stack name.
const USER_HASH_LEN: usize = 10;
/// Longest readable part of a user name that needs a hash.
const READABLE_USER_LEN: usize = MAX_USER_LEN - USER_HASH_LEN - 2;

/// A setting of the controller's identity that is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// The stack prefix breaks its rule.
    #[error(
        "stack prefix `{0}` must start with a letter and hold 1 to {MAX_PREFIX_LEN} letters, digits or hyphens"
    )]
    Prefix(String),
    /// The owner (instance) name is not a usable tag value.
    #[error(
        "instance name `{0}` must be 1 to 64 of letters, digits and +=._:/@- (it is the value of the flightdeck:owner tag)"
    )]
    Owner(String),
}

/// The configured identity of one controller install: its stack prefix and owner tag value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    prefix: String,
    owner: String,
}

impl Identity {
    /// A validated identity.
    ///
    /// # Errors
    /// [`IdentityError`] naming the setting that is wrong.
    pub fn new(prefix: &str, owner: &str) -> Result<Self, IdentityError> {
        let mut bytes = prefix.bytes();
        let prefix_ok = prefix.len() <= MAX_PREFIX_LEN
            && bytes.next().is_some_and(|b| b.is_ascii_alphabetic())
            && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !prefix_ok {
            return Err(IdentityError::Prefix(prefix.to_owned()));
        }
        let owner_ok = !owner.is_empty()
            && owner.len() <= 64
            && owner
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+=._:/@-".contains(&b));
        if !owner_ok {
            return Err(IdentityError::Owner(owner.to_owned()));
        }
        Ok(Identity {
            prefix: prefix.to_owned(),
            owner: owner.to_owned(),
        })
    }

    /// The owner tag value.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// The stack name of a cluster: `<prefix>-<user>-<cluster>`.
    ///
    /// A user name of letters and digits only is used as it is. Any other user name
    /// (IAM allows `+=,.@_-`) keeps its letters and digits, then `--` and a hash of the
    /// exact name: `fd-jeanluc--1a2b3c4d5e-run1`. The `--` cannot follow the user part of
    /// the plain form (a cluster name starts with a letter or digit), so the two forms
    /// never meet, and distinct users never share a name (up to the hash).
    pub fn stack_name(&self, key: &ClusterKey) -> String {
        let user_part = if key.user.bytes().all(|b| b.is_ascii_alphanumeric()) {
            key.user.clone()
        } else {
            let readable: String = key
                .user
                .chars()
                .filter(char::is_ascii_alphanumeric)
                .take(READABLE_USER_LEN)
                .collect();
            let hash = hex_sha256(key.user.as_bytes());
            format!("{readable}--{}", &hash[..USER_HASH_LEN])
        };
        format!("{}-{user_part}-{}", self.prefix, key.cluster)
    }

    /// The tags every stack of this install carries.
    pub fn tags(&self, key: &ClusterKey, request_hash: &str) -> BTreeMap<String, String> {
        BTreeMap::from([
            (TAG_USER.to_owned(), key.user.clone()),
            (TAG_CLUSTER.to_owned(), key.cluster.clone()),
            (TAG_OWNER.to_owned(), self.owner.clone()),
            (TAG_REQUEST.to_owned(), request_hash.to_owned()),
        ])
    }

    /// The cluster a stack belongs to, read from its tags, when it is ours.
    ///
    /// Returns `None` for a stack without our owner tag (never touched) or whose
    /// `USER`/`flightdeck:cluster` tags are missing or not valid names.
    pub fn owned_key(&self, tags: &BTreeMap<String, String>) -> Option<ClusterKey> {
        if tags.get(TAG_OWNER).map(String::as_str) != Some(self.owner.as_str()) {
            return None;
        }
        ClusterKey::new(tags.get(TAG_USER)?, tags.get(TAG_CLUSTER)?).ok()
    }
}

/// Lower-case hex SHA-256 of `bytes`.
pub fn hex_sha256(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Lower-case hex MD5 of `bytes`: what S3 reports as the ETag of a single-part upload.
pub fn hex_md5(bytes: &[u8]) -> String {
    use md5::Md5;
    hex(&Md5::digest(bytes))
}

/// Whether `etag`, as S3 reports it (quoted or not, any case), is the MD5 `digest`: what
/// [`hex_md5`] compares, without the hex string.
pub(crate) fn etag_is_md5(etag: &str, digest: &[u8]) -> bool {
    let hex = etag.trim_matches('"').as_bytes();
    let nibble = |c: u8| char::from(c).to_digit(16);
    hex.len() == digest.len() * 2
        && hex.chunks_exact(2).zip(digest).all(|(pair, byte)| {
            nibble(pair[0]) == Some(u32::from(byte >> 4))
                && nibble(pair[1]) == Some(u32::from(byte & 0xf))
        })
}

/// An MD5 computed as a document is written to it, so a document whose ETag is all
/// that is wanted of it is never held in memory.
#[derive(Default)]
pub(crate) struct Md5Writer(md5::Md5);

impl Md5Writer {
    /// Whether what was written has the MD5 that `etag` names ([`etag_is_md5`]).
    pub(crate) fn matches(self, etag: &str) -> bool {
        use md5::Digest;
        etag_is_md5(etag, &self.0.finalize())
    }
}

impl std::fmt::Write for Md5Writer {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        md5::Digest::update(&mut self.0, s.as_bytes());
        Ok(())
    }
}

impl std::io::Write for Md5Writer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        md5::Digest::update(&mut self.0, buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    s
}

/// ClientRequestToken for CreateStack: the same stack name, request and request version
/// (the `.cf-create` object's last-modified time) always give the same token, so a retried
/// call never makes a second stack, while a request written anew gets a new one.
pub fn create_token(stack_name: &str, request_hash: &str, request_version: &str) -> String {
    token("create", &[stack_name, request_hash, request_version])
}

/// ClientRequestToken for UpdateStack: one per (stack, request hash, request version).
pub fn update_token(stack_id: &str, request_hash: &str, request_version: &str) -> String {
    token("update", &[stack_id, request_hash, request_version])
}

/// ClientRequestToken for DeleteStack. It includes the stack's status and last change, so
/// a retry after DELETE_FAILED is a new request (CloudFormation ignores a repeated token).
pub fn delete_token(stack_id: &str, status: &str, last_change: &str) -> String {
    token("delete", &[stack_id, status, last_change])
}

fn token(kind: &str, parts: &[&str]) -> String {
    let joined = parts.join("\u{0}");
    format!("fd-{kind}-{}", &hex_sha256(joined.as_bytes())[..32])
}

const _: () = assert!(
    MAX_PREFIX_LEN + 1 + MAX_USER_LEN + 1 + MAX_CLUSTER_LEN <= MAX_STACK_NAME_LEN,
    "stack names could exceed CloudFormation's limit"
);

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> Identity {
        Identity::new("fd", "site-a").unwrap()
    }

    fn key(user: &str, cluster: &str) -> ClusterKey {
        ClusterKey::new(user, cluster).unwrap()
    }

    fn legal_stack_name(name: &str) -> bool {
        let mut b = name.bytes();
        name.len() <= MAX_STACK_NAME_LEN
            && b.next().is_some_and(|c| c.is_ascii_alphabetic())
            && b.all(|c| c.is_ascii_alphanumeric() || c == b'-')
    }

    #[test]
    fn plain_user_gives_the_designed_name() {
        assert_eq!(id().stack_name(&key("alice", "x")), "fd-alice-x");
    }

    #[test]
    fn iam_punctuation_is_replaced_and_hashed() {
        let name = id().stack_name(&key("jean.luc@uni", "run1"));
        assert!(name.starts_with("fd-jeanlucuni--"), "{name}");
        assert!(name.ends_with("-run1"), "{name}");
        assert!(legal_stack_name(&name), "{name}");
    }

    #[test]
    fn hyphens_in_user_and_cluster_never_collide() {
        let a = id().stack_name(&key("a-b", "c"));
        let b = id().stack_name(&key("a", "b-c"));
        let c = id().stack_name(&key("ab", "c"));
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert_ne!(b, c);
    }

    #[test]
    fn users_differing_only_in_punctuation_get_distinct_names() {
        let names: Vec<String> = ["a.b", "a_b", "a-b", "a+b", "ab", "a@b", "a=b", "a,b"]
            .iter()
            .map(|u| id().stack_name(&key(u, "x")))
            .collect();
        let mut unique = names.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), names.len(), "{names:?}");
    }

    #[test]
    fn longest_names_stay_legal() {
        let long = Identity::new(&"p".repeat(MAX_PREFIX_LEN), "o").unwrap();
        for user in ["u".repeat(MAX_USER_LEN), format!("{}.", "u".repeat(63))] {
            let name = long.stack_name(&key(&user, &"c".repeat(MAX_CLUSTER_LEN)));
            assert!(legal_stack_name(&name), "{name} ({} chars)", name.len());
        }
    }

    #[test]
    fn bad_prefix_and_owner_are_refused_by_name() {
        assert_eq!(
            Identity::new("1fd", "o"),
            Err(IdentityError::Prefix("1fd".into()))
        );
        assert_eq!(
            Identity::new("fd", "a b"),
            Err(IdentityError::Owner("a b".into()))
        );
        assert!(Identity::new("fd", "").is_err());
    }

    #[test]
    fn owned_key_requires_our_owner_tag() {
        let tags = id().tags(&key("alice", "x"), "h");
        assert_eq!(id().owned_key(&tags), Some(key("alice", "x")));
        let other = Identity::new("fd", "site-b").unwrap();
        assert_eq!(other.owned_key(&tags), None);
        let mut no_user = tags.clone();
        no_user.remove(TAG_USER);
        assert_eq!(id().owned_key(&no_user), None);
    }

    #[test]
    fn tokens_are_stable_and_distinct_per_attempt() {
        assert_eq!(create_token("s", "h", "t1"), create_token("s", "h", "t1"));
        assert_ne!(create_token("s", "h", "t1"), create_token("s", "h", "t2"));
        assert_ne!(
            delete_token("id", "CREATE_COMPLETE", "t"),
            delete_token("id", "DELETE_FAILED", "t")
        );
        let t = create_token("fd-alice-x", "h", "t");
        assert!(t.len() <= 128 && t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
    }

    #[test]
    fn md5_matches_s3_etag_of_known_content() {
        assert_eq!(hex_md5(b""), "d41d8cd98f00b204e9800998ecf8427e");
    }

    #[test]
    fn an_etag_names_an_md5_quoted_or_not_in_any_case() {
        use std::fmt::Write;
        let mut hashed = Md5Writer::default();
        hashed.write_str("hello, ").unwrap();
        hashed.write_str("world").unwrap();
        let digest = md5::Digest::finalize(hashed.0);
        assert_eq!(hex(&digest), hex_md5(b"hello, world"));
        let etag = hex_md5(b"hello, world");
        for yes in [
            etag.clone(),
            format!("\"{etag}\""),
            etag.to_ascii_uppercase(),
        ] {
            assert!(etag_is_md5(&yes, &digest), "{yes}");
        }
        for no in [
            "",
            "\"\"",
            &etag[1..],
            &format!("{etag}0"),
            &format!("{}-2", &etag[..30]),
            &format!("{}zz", &etag[..30]),
            &hex_md5(b"hello, world!"),
        ] {
            assert!(!etag_is_md5(no, &digest), "{no}");
        }
    }

    #[test]
    fn sha256_matches_the_published_test_vectors() {
        // Stack and notice names are built from these digests: a hash crate upgrade must
        // not change them.
        assert_eq!(
            hex_sha256(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            hex_sha256(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
