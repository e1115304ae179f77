//! Requests: the JSON a user writes into `<cluster>.cf-create`, checked and normalised.
//!
//! Every way a request can be wrong is a [`RequestError`] whose message names the key, the
//! value and the rule, because it is written verbatim into the user's `.cf-failed`.

use std::collections::{BTreeMap, BTreeSet};

use crate::identity::hex_sha256;
use crate::key::ClusterKey;

/// Largest request file accepted.
pub const MAX_REQUEST_BYTES: usize = 16 * 1024;
/// Longest parameter value accepted.
pub const MAX_VALUE_LEN: usize = 256;
/// Parameters flightdeck always sets itself to the user's name; a request may not set them
/// (the older design let any user claim another's login name).
pub const RESERVED: [&str; 2] = ["AccessUsername", "FlightProfiles"];
/// The instance-type pairs of the older design: `"X": "other"` means "read `XOther`".
pub const INSTANCE_TYPE_PAIRS: [(&str, &str); 2] = [
    ("ComputeInstanceType", "ComputeInstanceTypeOther"),
    ("MasterInstanceType", "MasterInstanceTypeOther"),
];

/// What a template parameter accepts, as the template declares it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ParameterRule {
    /// `Number` parameters take decimal numbers only.
    pub number: bool,
    /// The template's AllowedValues; empty when any value is allowed.
    pub allowed: Vec<String>,
    /// The template gives no default, so a request must set it.
    pub required: bool,
    /// The template's default: what a parameter the request leaves out is set to.
    pub default: Option<String>,
    /// The value names an SSM parameter (`AWS::SSM::Parameter::Value<…>`), which
    /// CloudFormation reads at every create and update.
    pub ssm: bool,
}

/// Which parameters a user may set and which the operator fixes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRules {
    settable: BTreeMap<String, ParameterRule>,
    fixed: BTreeMap<String, String>,
}

/// The operator's parameter settings contradict the template.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RulesError {
    /// An admin-fixed parameter the template does not declare.
    #[error("fixed parameter `{0}` is not a parameter of the template")]
    UnknownFixed(String),
    /// A user-settable parameter the template does not declare.
    #[error("user parameter `{0}` is not a parameter of the template")]
    UnknownSettable(String),
    /// A parameter both fixed by the operator (or flightdeck) and settable by users.
    #[error("parameter `{0}` is fixed, so users cannot also set it")]
    SettableFixed(String),
    /// The template lacks a parameter flightdeck must set.
    #[error("the template has no parameter `{0}`, which flightdeck sets to the user's name")]
    MissingReserved(String),
}

impl RequestRules {
    /// Rules from the template's parameters, the operator's fixed values and the parameters
    /// users may set. Fixed values may use `${user}` and `${cluster}`. [`RESERVED`]
    /// parameters are fixed to `${user}`. Every other template parameter takes the
    /// template's default: users can set only what `user_settable` names.
    ///
    /// # Errors
    /// [`RulesError`] when a fixed or settable parameter is not in the template, one is both,
    /// or the template lacks a reserved one.
    pub fn new(
        template: &BTreeMap<String, ParameterRule>,
        fixed: &BTreeMap<String, String>,
        user_settable: &BTreeSet<String>,
    ) -> Result<Self, RulesError> {
        if let Some(name) = fixed.keys().find(|k| !template.contains_key(*k)) {
            return Err(RulesError::UnknownFixed(name.clone()));
        }
        let mut all_fixed = fixed.clone();
        for name in RESERVED {
            if !template.contains_key(name) {
                return Err(RulesError::MissingReserved(name.to_owned()));
            }
            all_fixed.insert(name.to_owned(), "${user}".to_owned());
        }
        let mut settable = BTreeMap::new();
        for name in user_settable {
            let rule = template
                .get(name)
                .ok_or_else(|| RulesError::UnknownSettable(name.clone()))?;
            if all_fixed.contains_key(name) {
                return Err(RulesError::SettableFixed(name.clone()));
            }
            settable.insert(name.clone(), rule.clone());
        }
        Ok(RequestRules {
            settable,
            fixed: all_fixed,
        })
    }

    /// The parameters users may set (and `Lifetime`).
    pub fn settable(&self) -> impl Iterator<Item = &str> {
        self.settable.keys().map(String::as_str)
    }

    /// The settings users choose whose value on a running stack (`current`, its
    /// parameters) differs from what `request` asks for. A setting the request leaves out
    /// asks for the template's default, so removing a key is a change like any other (on
    /// UpdateStack, CloudFormation sets a parameter that is not sent to its default).
    pub fn changes(
        &self,
        request: &Request,
        current: &BTreeMap<String, String>,
    ) -> BTreeSet<String> {
        let current = &resolved_instance_types(current);
        self.settable
            .iter()
            .filter(|(name, rule)| {
                let asked = request.parameters.get(*name).or(rule.default.as_ref());
                let now = current.get(*name).or(rule.default.as_ref());
                asked != now
            })
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Whether `message` (a service's refusal) names a setting users choose, as a word of
    /// its own (`ComputeMaxNodes`, not inside `MyComputeMaxNodesX`): then the user can act
    /// on it; otherwise the refusal is the install's to fix.
    pub fn named_in(&self, message: &str) -> bool {
        self.settable.keys().any(|name| {
            message.match_indices(name.as_str()).any(|(at, _)| {
                let before = message[..at].chars().next_back();
                let after = message[at + name.len()..].chars().next();
                !before.is_some_and(char::is_alphanumeric)
                    && !after.is_some_and(char::is_alphanumeric)
            })
        })
    }

    /// The template's default of a setting users choose, if it has one.
    pub fn default_of(&self, name: &str) -> Option<&str> {
        self.settable.get(name)?.default.as_deref()
    }

    /// The parameters sent to CloudFormation for `key`: the request's, then the fixed ones
    /// with `${user}` and `${cluster}` substituted.
    pub fn stack_parameters(
        &self,
        request: &Request,
        key: &ClusterKey,
    ) -> BTreeMap<String, String> {
        let mut out = request.parameters.clone();
        for (name, value) in &self.fixed {
            let value = value
                .replace("${user}", &key.user)
                .replace("${cluster}", &key.cluster);
            out.insert(name.clone(), value);
        }
        out
    }
}

/// The request key that asks for a lifetime (`"8h"`, `"3d"`); not a template parameter.
pub const LIFETIME: &str = "Lifetime";

/// A checked, normalised request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The user's parameters, normalised: numbers as text, instance-type labels resolved.
    pub parameters: BTreeMap<String, String>,
    /// The lifetime asked for, as written.
    pub lifetime: Option<String>,
    /// Hash of the normalised parameters and lifetime (the `flightdeck:request` tag).
    pub hash: String,
}

impl Request {
    /// A request from normalised parameters and a lifetime, with its hash.
    pub fn new(parameters: BTreeMap<String, String>, lifetime: Option<String>) -> Request {
        let mut hashed = parameters.clone();
        if let Some(l) = &lifetime {
            hashed.insert(LIFETIME.to_owned(), l.clone());
        }
        let hash = request_hash(&hashed);
        Request {
            parameters,
            lifetime,
            hash,
        }
    }
}

/// Why a request is refused. The message is what the user reads.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// Larger than [`MAX_REQUEST_BYTES`].
    #[error(
        "the request is {size} bytes; the limit is {MAX_REQUEST_BYTES} bytes. A request is a small JSON object of settings"
    )]
    TooLarge {
        /// Its size.
        size: usize,
    },
    /// Not UTF-8 text.
    #[error(
        "the request is not UTF-8 text (byte {offset} is not valid): save it as UTF-8 plain text"
    )]
    NotUtf8 {
        /// The first invalid byte.
        offset: usize,
    },
    /// Not JSON.
    #[error(
        "the request is not valid JSON (line {line}, column {column}: {detail}); check quotes, commas and braces"
    )]
    Malformed {
        /// Where the parser stopped.
        line: usize,
        /// Where the parser stopped.
        column: usize,
        /// The parser's words.
        detail: String,
    },
    /// JSON, but not an object.
    #[error("the request must be a JSON object like {{\"ComputeMaxNodes\": \"4\"}}, not {found}")]
    NotAnObject {
        /// What it is instead.
        found: &'static str,
    },
    /// A key flightdeck sets itself.
    #[error("`{key}` is set by flightdeck to your user name and cannot be chosen; remove it")]
    Reserved {
        /// The key.
        key: String,
    },
    /// A key the user may not set.
    #[error("`{key}` is not a setting you can choose{hint}; settings you can choose: {allowed}")]
    UnknownKey {
        /// The key.
        key: String,
        /// " (did you mean `X`?)" or empty.
        hint: String,
        /// The keys allowed, comma-separated.
        allowed: String,
    },
    /// A value that is not a string or a number.
    #[error("`{key}` must be a string or a number, not {found}")]
    ValueType {
        /// The key.
        key: String,
        /// What it is instead.
        found: &'static str,
    },
    /// A value that breaks a rule.
    #[error("`{key}` = `{value}` is not allowed: {rule}")]
    Value {
        /// The key.
        key: String,
        /// The value as written (shortened when long).
        value: String,
        /// The rule it breaks, and what would be allowed.
        rule: String,
    },
    /// A required key is missing.
    #[error("`{key}` is required; add it to the request")]
    Missing {
        /// The key.
        key: String,
    },
}

impl RequestError {
    /// A short label for metrics, one per rule.
    pub fn kind(&self) -> &'static str {
        match self {
            RequestError::TooLarge { .. } => "too_large",
            RequestError::NotUtf8 { .. } => "not_utf8",
            RequestError::Malformed { .. } => "malformed",
            RequestError::NotAnObject { .. } => "not_an_object",
            RequestError::Reserved { .. } => "reserved_key",
            RequestError::UnknownKey { .. } => "unknown_key",
            RequestError::ValueType { .. } => "value_type",
            RequestError::Value { .. } => "value",
            RequestError::Missing { .. } => "missing_key",
        }
    }
}

/// Parses and checks a request.
///
/// # Errors
/// The first [`RequestError`] found, in the order: size, encoding, syntax, shape, keys,
/// values, required keys.
pub fn parse_request(bytes: &[u8], rules: &RequestRules) -> Result<Request, RequestError> {
    if bytes.len() > MAX_REQUEST_BYTES {
        return Err(RequestError::TooLarge { size: bytes.len() });
    }
    let text = std::str::from_utf8(bytes).map_err(|e| RequestError::NotUtf8 {
        offset: e.valid_up_to(),
    })?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let json: serde_json::Value =
        serde_json::from_str(text).map_err(|e| RequestError::Malformed {
            line: e.line(),
            column: e.column(),
            detail: strip_position(&e.to_string()),
        })?;
    let serde_json::Value::Object(map) = json else {
        return Err(RequestError::NotAnObject {
            found: json_kind(&json),
        });
    };
    let mut parameters = BTreeMap::new();
    let mut lifetime = None;
    for (key, value) in map {
        if RESERVED.contains(&key.as_str()) {
            return Err(RequestError::Reserved { key });
        }
        if key == LIFETIME {
            match value {
                serde_json::Value::String(s) => lifetime = Some(s.trim().to_owned()),
                other => {
                    return Err(RequestError::ValueType {
                        key,
                        found: json_kind(&other),
                    });
                }
            }
            continue;
        }
        let Some(rule) = rules.settable.get(&key) else {
            return Err(unknown_key(key, rules));
        };
        let value = match value {
            serde_json::Value::String(s) => s.trim().to_owned(),
            serde_json::Value::Number(n) => n.to_string(),
            other => {
                return Err(RequestError::ValueType {
                    key,
                    found: json_kind(&other),
                });
            }
        };
        check_value(&key, &value, rule)?;
        parameters.insert(key, value);
    }
    resolve_instance_types(&mut parameters)?;
    if let Some((key, _)) = rules
        .settable
        .iter()
        .find(|(k, r)| r.required && !parameters.contains_key(*k))
    {
        return Err(RequestError::Missing { key: key.clone() });
    }
    Ok(Request::new(parameters, lifetime))
}

/// Hash of normalised parameters: SHA-256 over `key=value` lines in key order, 16 hex digits.
pub fn request_hash(parameters: &BTreeMap<String, String>) -> String {
    let canonical: String = parameters
        .iter()
        .map(|(k, v)| format!("{k}={v}\n"))
        .collect();
    hex_sha256(canonical.as_bytes())[..16].to_owned()
}

fn check_value(key: &str, value: &str, rule: &ParameterRule) -> Result<(), RequestError> {
    let refuse = |rule: String| RequestError::Value {
        key: key.to_owned(),
        value: shorten(value),
        rule,
    };
    if value.is_empty() {
        return Err(refuse(
            "it is empty; give a value or leave the key out".into(),
        ));
    }
    if value.chars().count() > MAX_VALUE_LEN {
        return Err(refuse(format!(
            "values are at most {MAX_VALUE_LEN} characters"
        )));
    }
    if value.chars().any(char::is_control) {
        return Err(refuse("values may not contain control characters".into()));
    }
    if rule.number && !is_decimal(value) {
        return Err(refuse("it must be a number, like 4 or 0.5".into()));
    }
    if !rule.allowed.is_empty() && !rule.allowed.iter().any(|a| a == value) {
        return Err(refuse(format!(
            "allowed values are {}",
            rule.allowed.join(", ")
        )));
    }
    Ok(())
}

/// The older design's convention: `"ComputeInstanceType": "other"` with
/// `"ComputeInstanceTypeOther": "r4.large-2C-15.25GB"` means `r4.large`. A label given
/// directly is resolved too; the label is kept in the `…Other` parameter.
fn resolve_instance_types(parameters: &mut BTreeMap<String, String>) -> Result<(), RequestError> {
    for (type_key, other_key) in INSTANCE_TYPE_PAIRS {
        let Some(value) = parameters.get(type_key).cloned() else {
            continue;
        };
        let (source_key, label) = if value.eq_ignore_ascii_case("other") {
            match parameters.get(other_key) {
                Some(label) => (other_key, label.clone()),
                None => {
                    return Err(RequestError::Value {
                        key: type_key.to_owned(),
                        value,
                        rule: format!(
                            "\"other\" needs `{other_key}` too, e.g. \"{other_key}\": \"r4.large-2C-15.25GB\""
                        ),
                    });
                }
            }
        } else {
            (type_key, value)
        };
        let resolved = instance_type_of_label(&label).ok_or_else(|| RequestError::Value {
            key: source_key.to_owned(),
            value: shorten(&label),
            rule: "it must be an EC2 instance type such as c5.large, or a label such as r4.large-2C-15.25GB".into(),
        })?;
        parameters.insert(type_key.to_owned(), resolved.to_owned());
    }
    Ok(())
}

/// A stack's parameters with the older design's `"other"` convention resolved as a
/// request's are (`ComputeInstanceType=other` with a label in `ComputeInstanceTypeOther`
/// means that label's type), so that a stack the older design made compares equal to the
/// same request. A label that names no type is left as it is.
fn resolved_instance_types(parameters: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut out = parameters.clone();
    for (type_key, other_key) in INSTANCE_TYPE_PAIRS {
        if parameters
            .get(type_key)
            .is_some_and(|v| v.eq_ignore_ascii_case("other"))
            && let Some(resolved) = parameters
                .get(other_key)
                .and_then(|label| instance_type_of_label(label))
        {
            out.insert(type_key.to_owned(), resolved.to_owned());
        }
    }
    out
}

/// `r4.large-2C-15.25GB` → `r4.large`; `c5.large` → `c5.large`; anything else → `None`.
pub fn instance_type_of_label(label: &str) -> Option<&str> {
    let mut t = label;
    // Strip a trailing "-<cores>C-<memory>GB" when present.
    if let Some(rest) = t.strip_suffix("GB")
        && let Some((head, mem)) = rest.rsplit_once('-')
        && is_decimal(mem)
        && let Some(head) = head.strip_suffix('C')
        && let Some((ty, cores)) = head.rsplit_once('-')
        && !cores.is_empty()
        && cores.bytes().all(|b| b.is_ascii_digit())
    {
        t = ty;
    }
    let (family, size) = t.split_once('.')?;
    let family_ok = family
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_lowercase())
        && family
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    let size_ok = !size.is_empty()
        && size
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    (family_ok && size_ok).then_some(t)
}

fn is_decimal(s: &str) -> bool {
    let digits = s.strip_prefix('-').unwrap_or(s);
    let (int, frac) = digits.split_once('.').unwrap_or((digits, "0"));
    !int.is_empty()
        && !frac.is_empty()
        && int.bytes().all(|b| b.is_ascii_digit())
        && frac.bytes().all(|b| b.is_ascii_digit())
}

fn unknown_key(key: String, rules: &RequestRules) -> RequestError {
    let folded = key.to_ascii_lowercase().replace(['_', '-', ' '], "");
    let close = rules
        .settable
        .keys()
        .map(|k| (edit_distance(&k.to_ascii_lowercase(), &folded), k))
        .filter(|(d, _)| *d <= 2)
        .min()
        .map(|(_, k)| k);
    RequestError::UnknownKey {
        hint: close
            .map(|k| format!(" (did you mean `{k}`?)"))
            .unwrap_or_default(),
        allowed: rules
            .settable()
            .chain([LIFETIME])
            .collect::<Vec<_>>()
            .join(", "),
        key: shorten(&key),
    }
}

/// Levenshtein distance, for "did you mean".
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "true/false",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "a list",
        serde_json::Value::Object(_) => "an object",
    }
}

fn shorten(s: &str) -> String {
    const MAX: usize = 60;
    if s.chars().count() <= MAX {
        s.to_owned()
    } else {
        format!("{}…", s.chars().take(MAX).collect::<String>())
    }
}

/// serde_json appends " at line L column C"; the message gives those separately.
fn strip_position(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_owned(),
        None => msg.to_owned(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The older design's example, byte for byte.
    pub const SEED_EXAMPLE: &str = r#"{
    "ComputeInstanceType": "other", 
    "ComputeSpotPrice": "0.03", 
    "ComputeInstanceTypeOther": "r4.large-2C-15.25GB", 
    "MasterSystemVolumeSize": "16", 
    "MasterInstanceType": "other", 
    "ComputeMaxNodes": "25", 
    "MasterInstanceTypeOther": "r4.large-2C-15.25GB", 
    "ComputeInitialNodes": "0", 
    "AutoscalingPolicy": "enabled"
}"#;

    /// The keys of the older design's example: what users may set.
    pub const SEED_KEYS: [&str; 9] = [
        "ComputeInstanceType",
        "ComputeInstanceTypeOther",
        "ComputeSpotPrice",
        "ComputeMaxNodes",
        "ComputeInitialNodes",
        "MasterInstanceType",
        "MasterInstanceTypeOther",
        "MasterSystemVolumeSize",
        "AutoscalingPolicy",
    ];

    /// The rules of the shipped template.
    pub fn rules() -> RequestRules {
        let text = |required| ParameterRule {
            required,
            ..ParameterRule::default()
        };
        let number = ParameterRule {
            number: true,
            ..ParameterRule::default()
        };
        let template = BTreeMap::from([
            ("ComputeInstanceType".into(), text(true)),
            ("ComputeInstanceTypeOther".into(), text(false)),
            ("ComputeSpotPrice".into(), text(false)),
            ("ComputeMaxNodes".into(), number.clone()),
            ("ComputeInitialNodes".into(), number.clone()),
            ("MasterInstanceType".into(), text(true)),
            ("MasterInstanceTypeOther".into(), text(false)),
            (
                "MasterSystemVolumeSize".into(),
                ParameterRule {
                    default: Some("16".into()),
                    ..number
                },
            ),
            (
                "AutoscalingPolicy".into(),
                ParameterRule {
                    allowed: vec!["enabled".into(), "disabled".into()],
                    ..ParameterRule::default()
                },
            ),
            ("AccessUsername".into(), text(true)),
            ("FlightProfiles".into(), text(false)),
            ("CustomizerBucket".into(), text(true)),
        ]);
        let fixed = BTreeMap::from([("CustomizerBucket".into(), "cust-${user}".into())]);
        RequestRules::new(&template, &fixed, &SEED_KEYS.map(String::from).into()).unwrap()
    }

    fn parse(text: &str) -> Result<Request, RequestError> {
        parse_request(text.as_bytes(), &rules())
    }

    fn message(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn a_refusal_is_the_users_only_when_it_names_a_setting_they_choose() {
        let rules = rules();
        assert!(rules.named_in("Parameter 'ComputeMaxNodes' must be a number."));
        assert!(rules.named_in(
            "AutoscalingPolicy \"disabled\" means exactly ComputeInitialNodes compute nodes"
        ));
        assert!(!rules.named_in("Parameters: [VpcId] must have values"));
        assert!(
            !rules.named_in("Template format error: Unresolved resource dependencies [Master]")
        );
        assert!(!rules.named_in("Requires capabilities : [CAPABILITY_NAMED_IAM]"));
        assert!(!rules.named_in("Parameter 'MyComputeMaxNodesX' must be a number."));
    }

    #[test]
    fn seed_example_is_accepted_unchanged_and_labels_resolve() {
        let r = parse(SEED_EXAMPLE).unwrap();
        assert_eq!(r.parameters["ComputeInstanceType"], "r4.large");
        assert_eq!(r.parameters["MasterInstanceType"], "r4.large");
        assert_eq!(
            r.parameters["ComputeInstanceTypeOther"],
            "r4.large-2C-15.25GB"
        );
        assert_eq!(r.parameters["ComputeMaxNodes"], "25");
        assert_eq!(r.parameters.len(), 9);
    }

    #[test]
    fn numbers_and_strings_normalise_to_the_same_hash() {
        let a = parse(r#"{"ComputeInstanceType":"c5.large","MasterInstanceType":"c5.large","ComputeMaxNodes":4}"#).unwrap();
        let b = parse(r#"{"ComputeMaxNodes":" 4 ","MasterInstanceType":"c5.large","ComputeInstanceType":"c5.large"}"#).unwrap();
        assert_eq!(a, b);
        let c = parse(r#"{"ComputeMaxNodes":5,"MasterInstanceType":"c5.large","ComputeInstanceType":"c5.large"}"#).unwrap();
        assert_ne!(a.hash, c.hash);
    }

    #[test]
    fn stack_parameters_add_fixed_values_for_the_user() {
        let key = ClusterKey::new("alice", "x").unwrap();
        let params = rules().stack_parameters(&parse(SEED_EXAMPLE).unwrap(), &key);
        assert_eq!(params["AccessUsername"], "alice");
        assert_eq!(params["FlightProfiles"], "alice");
        assert_eq!(params["CustomizerBucket"], "cust-alice");
    }

    #[test]
    fn refusals_name_the_key_the_value_and_the_rule() {
        let base = r#""ComputeInstanceType":"c5.large","MasterInstanceType":"c5.large""#;
        for (body, expected) in [
            (
                format!(r#"{{{base},"AccessUsername":"bob"}}"#),
                "`AccessUsername` is set by flightdeck to your user name",
            ),
            (
                format!(r#"{{{base},"FlightProfiles":"x"}}"#),
                "`FlightProfiles` is set by flightdeck",
            ),
            (
                format!(r#"{{{base},"ComputeMaxnodes":"4"}}"#),
                "`ComputeMaxnodes` is not a setting you can choose (did you mean `ComputeMaxNodes`?)",
            ),
            (
                format!(r#"{{{base},"ComputeMaxNode":"4"}}"#),
                "(did you mean `ComputeMaxNodes`?)",
            ),
            (
                format!(r#"{{{base},"compute_max_nodes":"4"}}"#),
                "(did you mean `ComputeMaxNodes`?)",
            ),
            (
                format!(r#"{{{base},"CustomizerBucket":"x"}}"#),
                "`CustomizerBucket` is not a setting you can choose",
            ),
            (
                format!(r#"{{{base},"ComputeMaxNodes":"lots"}}"#),
                "`ComputeMaxNodes` = `lots` is not allowed: it must be a number",
            ),
            (
                format!(r#"{{{base},"AutoscalingPolicy":"on"}}"#),
                "`AutoscalingPolicy` = `on` is not allowed: allowed values are enabled, disabled",
            ),
            (
                format!(r#"{{{base},"ComputeMaxNodes":[1]}}"#),
                "`ComputeMaxNodes` must be a string or a number, not a list",
            ),
            (
                format!(r#"{{{base},"ComputeSpotPrice":""}}"#),
                "`ComputeSpotPrice` = `` is not allowed: it is empty",
            ),
            (
                r#"{"ComputeInstanceType":"other","MasterInstanceType":"c5.large"}"#.into(),
                "\"other\" needs `ComputeInstanceTypeOther` too",
            ),
            (
                r#"{"ComputeInstanceType":"big one","MasterInstanceType":"c5.large"}"#.into(),
                "`ComputeInstanceType` = `big one` is not allowed: it must be an EC2 instance type",
            ),
            (
                r#"{"ComputeInstanceType":"c5.large"}"#.into(),
                "`MasterInstanceType` is required",
            ),
            ("[1,2]".into(), "must be a JSON object"),
            (
                r#"{"ComputeMaxNodes": "4",}"#.into(),
                "not valid JSON (line 1, column 25",
            ),
        ] {
            let text = message(&body);
            assert!(
                text.contains(expected),
                "{body}\n  gave: {text}\n  want: {expected}"
            );
        }
    }

    #[test]
    fn oversized_and_non_utf8_files_are_refused() {
        let big = vec![b' '; MAX_REQUEST_BYTES + 1];
        assert_eq!(
            parse_request(&big, &rules()),
            Err(RequestError::TooLarge {
                size: MAX_REQUEST_BYTES + 1
            })
        );
        assert_eq!(
            parse_request(b"{\"a\xff\":1}", &rules()),
            Err(RequestError::NotUtf8 { offset: 3 })
        );
    }

    #[test]
    fn a_byte_order_mark_is_tolerated() {
        let with_bom = format!("\u{feff}{SEED_EXAMPLE}");
        assert_eq!(parse(&with_bom), parse(SEED_EXAMPLE));
    }

    #[test]
    fn labels_resolve_to_instance_types() {
        for (label, ty) in [
            ("r4.large-2C-15.25GB", Some("r4.large")),
            ("c5.large", Some("c5.large")),
            ("u-6tb1.metal-448C-6144GB", Some("u-6tb1.metal")),
            ("c7gn.16xlarge", Some("c7gn.16xlarge")),
            ("large", None),
            ("R4.large", None),
            ("r4.large; rm -rf /", None),
        ] {
            assert_eq!(instance_type_of_label(label), ty, "{label}");
        }
    }

    #[test]
    fn fixed_parameter_missing_from_template_is_an_operator_error() {
        let template = BTreeMap::from([
            ("AccessUsername".into(), ParameterRule::default()),
            ("FlightProfiles".into(), ParameterRule::default()),
        ]);
        let none = BTreeSet::new();
        let fixed = BTreeMap::from([("VpcId".into(), "vpc-1".into())]);
        assert_eq!(
            RequestRules::new(&template, &fixed, &none),
            Err(RulesError::UnknownFixed("VpcId".into()))
        );
        assert_eq!(
            RequestRules::new(&BTreeMap::new(), &BTreeMap::new(), &none),
            Err(RulesError::MissingReserved("AccessUsername".into()))
        );
        assert_eq!(
            RequestRules::new(&template, &BTreeMap::new(), &["Nodes".to_string()].into()),
            Err(RulesError::UnknownSettable("Nodes".into()))
        );
        assert_eq!(
            RequestRules::new(
                &template,
                &BTreeMap::new(),
                &["AccessUsername".to_string()].into()
            ),
            Err(RulesError::SettableFixed("AccessUsername".into()))
        );
    }

    #[test]
    fn template_parameters_users_were_not_given_are_refused() {
        let mut template = BTreeMap::new();
        for k in SEED_KEYS
            .iter()
            .chain(&["AccessUsername", "FlightProfiles", "VpcId", "SshCidr"])
        {
            template.insert(k.to_string(), ParameterRule::default());
        }
        let rules = RequestRules::new(
            &template,
            &BTreeMap::new(),
            &SEED_KEYS.map(String::from).into(),
        )
        .unwrap();
        let e = parse_request(br#"{"SshCidr": "0.0.0.0/0"}"#, &rules).unwrap_err();
        assert!(
            e.to_string()
                .contains("`SshCidr` is not a setting you can choose"),
            "{e}"
        );
    }
}
