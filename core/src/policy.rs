//! The admission policy: what users may ask for, and how much of it. Read from the TOML file
//! the operator edits (`policies/limits.toml`); a policy that does not parse or contradicts
//! itself is refused with its line and the reason.
//!
//! Limits resolve per user: the user's own entry wins; else, per limit, the most generous of
//! the groups the user belongs to; else the defaults in `[limits]`. (A user in two groups
//! gets the better of the two for each limit, never less than either group alone grants.)

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use regex::Regex;
use serde::Deserialize;
use toml::Spanned;

use crate::key::check_user_name;
use crate::money::Dollars;
use crate::request::RESERVED;

/// What one parameter accepts.
#[derive(Debug, Clone)]
pub struct ParamPolicy {
    /// Allowed values; empty when any value is allowed.
    pub allowed: Vec<String>,
    /// A pattern the whole value must match.
    pub pattern: Option<Regex>,
    /// Inclusive integer range.
    pub range: Option<(i64, i64)>,
    /// Decimal maximum (prices).
    pub max_price: Option<Dollars>,
    /// May change on a running cluster.
    pub updatable: bool,
}

/// Limits, each `None` when unlimited.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Limits {
    /// Clusters at once.
    pub clusters: Option<u64>,
    /// Total ComputeMaxNodes across the user's clusters.
    pub max_nodes: Option<u64>,
    /// Dollars per hour at full scale across the user's clusters.
    pub dollars_per_hour: Option<Dollars>,
    /// Lifetime when the request gives none.
    pub lifetime: Option<Duration>,
    /// Longest lifetime a request may ask for.
    pub max_lifetime: Option<Duration>,
    /// Whether the user's customizer folder must exist.
    pub require_enrolment: Option<bool>,
}

/// One limit and where it comes from, for messages ("your limit", "group students").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sourced<T> {
    /// The value.
    pub value: T,
    /// Where it comes from.
    pub source: String,
}

/// A user's limits after resolution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserLimits {
    /// Clusters at once.
    pub clusters: Option<Sourced<u64>>,
    /// Total ComputeMaxNodes.
    pub max_nodes: Option<Sourced<u64>>,
    /// Dollars per hour at full scale.
    pub dollars_per_hour: Option<Sourced<Dollars>>,
    /// Default lifetime.
    pub lifetime: Option<Duration>,
    /// Longest lifetime.
    pub max_lifetime: Option<Sourced<Duration>>,
    /// Enrolment required.
    pub require_enrolment: bool,
}

/// The validated policy.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Parameters users may set, with their rules.
    pub parameters: BTreeMap<String, ParamPolicy>,
    /// Admin-fixed parameters (`${user}`, `${cluster}` substituted).
    pub fixed: BTreeMap<String, String>,
    /// On-demand prices by instance type.
    pub prices: BTreeMap<String, Dollars>,
    defaults: Limits,
    groups: Vec<(String, BTreeSet<String>, Limits)>,
    users: BTreeMap<String, Limits>,
}

/// Why a policy file cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct PolicyError {
    /// The line at fault (1-based; 0 when the whole file).
    pub line: usize,
    /// What is wrong.
    pub reason: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    version: Spanned<u32>,
    #[serde(default)]
    parameters: BTreeMap<String, Spanned<ParamFile>>,
    #[serde(default)]
    fixed: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    prices: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    limits: Option<Spanned<LimitsFile>>,
    #[serde(default)]
    groups: BTreeMap<String, Spanned<GroupFile>>,
    #[serde(default)]
    users: BTreeMap<String, Spanned<LimitsFile>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ParamFile {
    #[serde(default = "yes")]
    settable: bool,
    #[serde(default)]
    allowed: Option<Vec<String>>,
    #[serde(default)]
    pattern: Option<String>,
    #[serde(default)]
    range: Option<[i64; 2]>,
    #[serde(default)]
    max_price: Option<String>,
    #[serde(default)]
    updatable: bool,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct LimitsFile {
    clusters: Option<u64>,
    max_nodes: Option<u64>,
    dollars_per_hour: Option<String>,
    lifetime: Option<String>,
    max_lifetime: Option<String>,
    require_enrolment: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupFile {
    members: Vec<String>,
    clusters: Option<u64>,
    max_nodes: Option<u64>,
    dollars_per_hour: Option<String>,
    lifetime: Option<String>,
    max_lifetime: Option<String>,
    require_enrolment: Option<bool>,
}

/// `90s`, `10m`, `8h`, `3d`, or a plain number of seconds; `None` for anything else or zero.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let (number, unit) = text
        .find(|c: char| !c.is_ascii_digit())
        .map_or((text, "s"), |i| text.split_at(i));
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return None,
    };
    number
        .parse::<u64>()
        .ok()
        .filter(|n| *n > 0)
        .and_then(|n| n.checked_mul(scale))
        .map(Duration::from_secs)
}

/// `3d`, `8h`, `90m`: the largest unit that divides it.
pub fn format_duration(d: Duration) -> String {
    let s = d.as_secs();
    for (unit, size) in [("d", 86_400), ("h", 3600), ("m", 60)] {
        if s >= size && s.is_multiple_of(size) {
            return format!("{}{unit}", s / size);
        }
    }
    format!("{s}s")
}

impl Policy {
    /// Parses and checks a policy file's text.
    ///
    /// # Errors
    /// [`PolicyError`] with the line and the reason.
    pub fn parse(text: &str) -> Result<Policy, PolicyError> {
        let line_of = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
        let file: File = toml::from_str(text).map_err(|e| PolicyError {
            line: e.span().map_or(0, |s| line_of(s.start)),
            reason: e.message().to_owned(),
        })?;
        let err = |span: std::ops::Range<usize>, reason: String| PolicyError {
            line: line_of(span.start),
            reason,
        };
        if *file.version.get_ref() != 1 {
            return Err(err(
                file.version.span(),
                "only `version = 1` is understood".into(),
            ));
        }
        let mut parameters = BTreeMap::new();
        for (name, p) in &file.parameters {
            let span = p.span();
            let p = p.get_ref();
            if RESERVED.contains(&name.as_str()) {
                return Err(err(
                    span,
                    format!("`{name}` is always the user's name; it cannot be a policy parameter"),
                ));
            }
            if file.fixed.contains_key(name) && p.settable {
                return Err(err(
                    span,
                    format!("`{name}` is both fixed and settable by users"),
                ));
            }
            if !p.settable {
                continue;
            }
            if p.allowed.as_ref().is_some_and(Vec::is_empty) {
                return Err(err(
                    span,
                    format!(
                        "`{name}`: an empty `allowed` list allows nothing; remove the parameter or set `settable = false`"
                    ),
                ));
            }
            if let Some([lo, hi]) = p.range
                && lo > hi
            {
                return Err(err(
                    span,
                    format!(
                        "`{name}`: range [{lo}, {hi}] is empty (the first number must not exceed the second)"
                    ),
                ));
            }
            let pattern = match &p.pattern {
                None => None,
                Some(text) => Some(Regex::new(&format!("^(?:{text})$")).map_err(|e| {
                    err(
                        span.clone(),
                        format!("`{name}`: pattern is not a regular expression: {e}"),
                    )
                })?),
            };
            let max_price = match &p.max_price {
                None => None,
                Some(t) => Some(Dollars::parse(t).ok_or_else(|| {
                    err(
                        span.clone(),
                        format!("`{name}`: max_price `{t}` is not a decimal amount like \"0.50\""),
                    )
                })?),
            };
            parameters.insert(
                name.clone(),
                ParamPolicy {
                    allowed: p.allowed.clone().unwrap_or_default(),
                    pattern,
                    range: p.range.map(|[a, b]| (a, b)),
                    max_price,
                    updatable: p.updatable,
                },
            );
        }
        let mut fixed = BTreeMap::new();
        for (name, value) in &file.fixed {
            if RESERVED.contains(&name.as_str()) {
                return Err(err(
                    value.span(),
                    format!(
                        "`{name}` is always the user's name; it cannot be fixed to anything else"
                    ),
                ));
            }
            fixed.insert(name.clone(), value.get_ref().clone());
        }
        let mut prices = BTreeMap::new();
        for (ty, price) in &file.prices {
            let value = Dollars::parse(price.get_ref()).ok_or_else(|| {
                err(
                    price.span(),
                    format!(
                        "price of `{ty}`: `{}` is not a decimal amount like \"0.133\"",
                        price.get_ref()
                    ),
                )
            })?;
            prices.insert(ty.clone(), value);
        }
        let defaults = match &file.limits {
            Some(l) => limits(l.get_ref(), "[limits]").map_err(|r| err(l.span(), r))?,
            None => Limits::default(),
        };
        let mut groups = Vec::new();
        for (name, g) in &file.groups {
            let span = g.span();
            let g = g.get_ref();
            if let Some(bad) = g.members.iter().find(|m| check_user_name(m).is_err()) {
                return Err(err(
                    span,
                    format!("group `{name}`: `{bad}` is not a user name"),
                ));
            }
            let as_limits = LimitsFile {
                clusters: g.clusters,
                max_nodes: g.max_nodes,
                dollars_per_hour: g.dollars_per_hour.clone(),
                lifetime: g.lifetime.clone(),
                max_lifetime: g.max_lifetime.clone(),
                require_enrolment: g.require_enrolment,
            };
            let l =
                limits(&as_limits, &format!("group `{name}`")).map_err(|r| err(span.clone(), r))?;
            groups.push((name.clone(), g.members.iter().cloned().collect(), l));
        }
        let mut users = BTreeMap::new();
        for (name, l) in &file.users {
            if check_user_name(name).is_err() {
                return Err(err(l.span(), format!("`{name}` is not a user name")));
            }
            users.insert(
                name.clone(),
                limits(l.get_ref(), &format!("user `{name}`")).map_err(|r| err(l.span(), r))?,
            );
        }
        let policy = Policy {
            parameters,
            fixed,
            prices,
            defaults,
            groups,
            users,
        };
        policy
            .check_prices()
            .map_err(|reason| PolicyError { line: 0, reason })?;
        Ok(policy)
    }

    /// A cost cap needs a price for every instance type a user may choose.
    fn check_prices(&self) -> Result<(), String> {
        let capped = self.defaults.dollars_per_hour.is_some()
            || self
                .groups
                .iter()
                .any(|(_, _, l)| l.dollars_per_hour.is_some())
            || self.users.values().any(|l| l.dollars_per_hour.is_some());
        if !capped {
            return Ok(());
        }
        for key in ["ComputeInstanceType", "MasterInstanceType"] {
            let Some(p) = self.parameters.get(key) else {
                continue;
            };
            if p.allowed.is_empty() {
                return Err(format!(
                    "a dollars_per_hour limit needs `allowed` instance types for `{key}`, each with a price in [prices]"
                ));
            }
            if let Some(ty) = p.allowed.iter().find(|t| !self.prices.contains_key(*t)) {
                return Err(format!(
                    "a dollars_per_hour limit needs a price for every allowed instance type: `{ty}` ({key}) has none in [prices]"
                ));
            }
        }
        Ok(())
    }

    /// The names of parameters users may set.
    pub fn settable(&self) -> BTreeSet<String> {
        self.parameters.keys().cloned().collect()
    }

    /// The parameters that may change on a running cluster.
    pub fn updatable(&self) -> BTreeSet<String> {
        self.parameters
            .iter()
            .filter(|(_, p)| p.updatable)
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// The groups `user` belongs to.
    pub fn groups_of(&self, user: &str) -> Vec<&str> {
        self.groups
            .iter()
            .filter(|(_, members, _)| members.contains(user))
            .map(|(name, _, _)| name.as_str())
            .collect()
    }

    /// `user`'s limits: their own entry, else the most generous of their groups, else the
    /// defaults; each with its source.
    pub fn limits_of(&self, user: &str) -> UserLimits {
        let own = self.users.get(user);
        let groups: Vec<(&str, &Limits)> = self
            .groups
            .iter()
            .filter(|(_, members, _)| members.contains(user))
            .map(|(name, _, l)| (name.as_str(), l))
            .collect();
        fn pick<T: Copy + Ord>(
            own: Option<&Limits>,
            groups: &[(&str, &Limits)],
            defaults: &Limits,
            get: impl Fn(&Limits) -> Option<T>,
        ) -> Option<Sourced<T>> {
            if let Some(v) = own.and_then(&get) {
                return Some(Sourced {
                    value: v,
                    source: "your own limit".into(),
                });
            }
            let best = groups
                .iter()
                .filter_map(|(name, l)| get(l).map(|v| (v, *name)))
                .max_by_key(|(v, _)| *v);
            if let Some((v, name)) = best {
                return Some(Sourced {
                    value: v,
                    source: format!("group {name}"),
                });
            }
            get(defaults).map(|v| Sourced {
                value: v,
                source: "the default limit".into(),
            })
        }
        let d = &self.defaults;
        UserLimits {
            clusters: pick(own, &groups, d, |l| l.clusters),
            max_nodes: pick(own, &groups, d, |l| l.max_nodes),
            dollars_per_hour: pick(own, &groups, d, |l| l.dollars_per_hour),
            lifetime: pick(own, &groups, d, |l| l.lifetime).map(|s| s.value),
            max_lifetime: pick(own, &groups, d, |l| l.max_lifetime),
            require_enrolment: own
                .and_then(|l| l.require_enrolment)
                .or_else(|| groups.iter().find_map(|(_, l)| l.require_enrolment))
                .or(d.require_enrolment)
                .unwrap_or(true),
        }
    }
}

fn limits(l: &LimitsFile, what: &str) -> Result<Limits, String> {
    let duration = |field: &str, v: &Option<String>| -> Result<Option<Duration>, String> {
        match v {
            None => Ok(None),
            Some(t) => parse_duration(t)
                .map(Some)
                .ok_or_else(|| format!("{what}: {field} `{t}` is not a duration like 8h or 3d")),
        }
    };
    let lifetime = duration("lifetime", &l.lifetime)?;
    let max_lifetime = duration("max_lifetime", &l.max_lifetime)?;
    if let (Some(a), Some(b)) = (lifetime, max_lifetime)
        && a > b
    {
        return Err(format!(
            "{what}: lifetime {} is longer than max_lifetime {}",
            format_duration(a),
            format_duration(b)
        ));
    }
    let dollars_per_hour = match &l.dollars_per_hour {
        None => None,
        Some(t) => Some(Dollars::parse(t).ok_or_else(|| {
            format!("{what}: dollars_per_hour `{t}` is not a decimal amount like \"6.00\"")
        })?),
    };
    Ok(Limits {
        clusters: l.clusters,
        max_nodes: l.max_nodes,
        dollars_per_hour,
        lifetime,
        max_lifetime,
        require_enrolment: l.require_enrolment,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub const POLICY: &str = r#"
version = 1

[parameters.ComputeInstanceType]
allowed = ["c5.large", "r4.large"]
[parameters.ComputeInstanceTypeOther]
pattern = "[a-z][a-z0-9]*\\.[a-z0-9]+(-[0-9]+C-[0-9.]+GB)?"
[parameters.MasterInstanceType]
allowed = ["c5.large", "r4.large"]
[parameters.MasterInstanceTypeOther]
pattern = "[a-z][a-z0-9]*\\.[a-z0-9]+(-[0-9]+C-[0-9.]+GB)?"
[parameters.ComputeSpotPrice]
max_price = "0.50"
updatable = true
[parameters.ComputeMaxNodes]
range = [1, 64]
updatable = true
[parameters.ComputeInitialNodes]
range = [0, 64]
updatable = true
[parameters.MasterSystemVolumeSize]
range = [16, 500]
[parameters.AutoscalingPolicy]
allowed = ["enabled", "disabled"]
updatable = true

[prices]
"c5.large" = "0.085"
"r4.large" = "0.133"

[limits]
clusters = 2
max_nodes = 32
dollars_per_hour = "6.00"
lifetime = "1d"
max_lifetime = "7d"

[groups.students]
members = ["alice", "carol"]
clusters = 1
max_nodes = 16
dollars_per_hour = "2.00"

[groups.gpu]
members = ["carol"]
max_nodes = 8
dollars_per_hour = "3.00"
max_lifetime = "14d"

[users.bob]
max_nodes = 64
"#;

    pub fn policy() -> Policy {
        Policy::parse(POLICY).unwrap()
    }

    fn error(text: &str) -> PolicyError {
        Policy::parse(text).unwrap_err()
    }

    #[test]
    fn limits_resolve_user_over_groups_over_defaults() {
        let p = policy();
        let alice = p.limits_of("alice");
        assert_eq!(alice.max_nodes.as_ref().unwrap().value, 16);
        assert_eq!(alice.max_nodes.unwrap().source, "group students");
        let bob = p.limits_of("bob");
        assert_eq!(bob.max_nodes.as_ref().unwrap().value, 64);
        assert_eq!(bob.max_nodes.unwrap().source, "your own limit");
        assert_eq!(bob.clusters.unwrap().source, "the default limit");
        let dave = p.limits_of("dave");
        assert_eq!(dave.max_nodes.unwrap().value, 32);
        assert_eq!(dave.lifetime, Some(Duration::from_secs(86_400)));
    }

    #[test]
    fn a_user_in_two_groups_gets_the_more_generous_limit_of_each() {
        let carol = policy().limits_of("carol");
        assert_eq!(
            carol
                .max_nodes
                .as_ref()
                .map(|s| (s.value, s.source.as_str())),
            Some((16, "group students"))
        );
        assert_eq!(
            carol
                .dollars_per_hour
                .as_ref()
                .map(|s| (s.value, s.source.as_str())),
            Some((Dollars::parse("3").unwrap(), "group gpu"))
        );
        assert_eq!(
            carol.clusters.unwrap().value,
            1,
            "only students sets clusters"
        );
        assert_eq!(
            carol.max_lifetime.unwrap().value,
            Duration::from_secs(14 * 86_400)
        );
    }

    #[test]
    fn settable_and_updatable_come_from_the_parameters() {
        let p = policy();
        assert!(p.settable().contains("ComputeMaxNodes"));
        assert!(!p.settable().contains("SshCidr"));
        assert!(p.updatable().contains("ComputeMaxNodes"));
        assert!(!p.updatable().contains("MasterInstanceType"));
    }

    #[test]
    fn contradictions_are_refused_with_their_line() {
        let e = error("version = 1\n[parameters.ComputeMaxNodes]\nrange = [10, 2]\n");
        assert_eq!(e.line, 2);
        assert!(e.reason.contains("range [10, 2] is empty"), "{e}");
        let e = error("version = 1\n[limits]\nlifetime = \"8d\"\nmax_lifetime = \"7d\"\n");
        assert!(
            e.reason
                .contains("lifetime 8d is longer than max_lifetime 7d"),
            "{e}"
        );
        let e = error("version = 1\n[fixed]\nAccessUsername = \"root\"\n");
        assert!(e.reason.contains("always the user's name"), "{e}");
        let e = error("version = 1\n[parameters.X]\npattern = \"(\"\n");
        assert!(e.reason.contains("not a regular expression"), "{e}");
        let e = error("version = 1\n[parameters.X]\nallowed = []\n");
        assert!(e.reason.contains("allows nothing"), "{e}");
        let e = error("version = 1\n[limits]\nmax_nodes = \"many\"\n");
        assert_eq!(e.line, 3, "{e}");
        let e = error("version = 1\n[limits]\nmax_nodez = 3\n");
        assert!(e.reason.contains("max_nodez"), "{e}");
        let e = error(&POLICY.replace("\"r4.large\" = \"0.133\"", ""));
        assert!(
            e.reason
                .contains("`r4.large` (ComputeInstanceType) has none"),
            "{e}"
        );
        let e = error("version = 2\n");
        assert_eq!(e.line, 1);
    }

    #[test]
    fn durations_parse_and_print() {
        assert_eq!(parse_duration("8h"), Some(Duration::from_secs(8 * 3600)));
        assert_eq!(parse_duration("3d"), Some(Duration::from_secs(3 * 86_400)));
        assert_eq!(parse_duration("0h"), None);
        assert_eq!(parse_duration("3w"), None);
        assert_eq!(format_duration(Duration::from_secs(3 * 86_400)), "3d");
        assert_eq!(format_duration(Duration::from_secs(90 * 60)), "90m");
    }
}
