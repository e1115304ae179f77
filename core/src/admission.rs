//! Admission: whether a request may run, by the policy's value rules, the user's limits
//! (clusters, nodes, dollars per hour) and lifetimes. Runs before every create and every
//! update. A refusal names the rule, the key, the value and what would be allowed.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::money::Dollars;
use crate::policy::{Policy, format_duration, parse_duration};
use crate::request::Request;

/// What a user's other clusters take up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    /// How many.
    pub clusters: u64,
    /// Their ComputeMaxNodes, summed.
    pub max_nodes: u64,
    /// Their dollars per hour at full scale, summed (unknown prices count as zero).
    pub cost: Dollars,
}

impl Usage {
    /// Adds one cluster's share.
    pub fn add(&mut self, max_nodes: u64, cost: Option<Dollars>) {
        self.clusters += 1;
        self.max_nodes += max_nodes;
        self.cost = self.cost + cost.unwrap_or(Dollars::ZERO);
    }
}

/// An admitted request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admitted {
    /// How long the cluster may live, when the policy or the request says.
    pub lifetime: Option<Duration>,
    /// Its ComputeMaxNodes.
    pub max_nodes: u64,
    /// Its dollars per hour at full scale, when the prices are known.
    pub cost: Option<Dollars>,
}

/// A refused request: the rule (a metric label) and the message the user reads.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Refusal {
    /// A short label of the rule.
    pub rule: &'static str,
    /// What the user reads in `.cf-failed`.
    pub message: String,
}

fn refuse(rule: &'static str, message: String) -> Refusal {
    Refusal { rule, message }
}

/// Dollars per hour at full scale: `ComputeMaxNodes` compute nodes at the spot price asked
/// for (`ComputeSpotPrice` above zero) or else their on-demand price, plus the master at its
/// on-demand price. `None` when a price is unknown.
pub fn cost_of(
    parameters: &BTreeMap<String, String>,
    prices: &BTreeMap<String, Dollars>,
) -> Option<Dollars> {
    let nodes: u64 = parameters.get("ComputeMaxNodes")?.parse().ok()?;
    let price_of = |k: &str| parameters.get(k).and_then(|t| prices.get(t)).copied();
    let compute = match parameters
        .get("ComputeSpotPrice")
        .and_then(|p| Dollars::parse(p))
    {
        Some(spot) if spot > Dollars::ZERO => spot,
        _ => price_of("ComputeInstanceType")?,
    };
    Some(compute.times(nodes) + price_of("MasterInstanceType")?)
}

/// How long a cluster of `user` made from `request` may live: the lifetime asked for, else
/// the user's default, never more than the user's maximum. `None` when neither is set or
/// what was asked does not parse.
pub fn lifetime_of(policy: &Policy, user: &str, request: &Request) -> Option<Duration> {
    let limits = policy.limits_of(user);
    let asked = match &request.lifetime {
        Some(text) => parse_duration(text)?,
        None => limits.lifetime?,
    };
    Some(match &limits.max_lifetime {
        Some(max) => asked.min(max.value),
        None => asked,
    })
}

/// How long a cluster of `user` may live by the policy alone (its default lifetime, never
/// more than its maximum; else its maximum): the lifetime of a stack created before its end
/// was recorded in a tag, whatever its request says now.
pub fn policy_lifetime(policy: &Policy, user: &str) -> Option<Duration> {
    let limits = policy.limits_of(user);
    let max = limits.max_lifetime.as_ref().map(|m| m.value);
    match (limits.lifetime, max) {
        (Some(l), Some(m)) => Some(l.min(m)),
        (l, m) => l.or(m),
    }
}

/// When a stack's lifetime ends, seconds since the epoch: its [`TAG_EXPIRES`] tag, or for a
/// stack without one, its creation plus `legacy`. A stack this controller first saw at
/// `first_seen`, already past that end (the controller was down, or the stack predates the
/// tag), gets `grace` from then: it is warned, not deleted on sight.
///
/// [`TAG_EXPIRES`]: crate::identity::TAG_EXPIRES
pub fn lifetime_end(
    stack: &crate::stack::StackView,
    legacy: Option<Duration>,
    first_seen: i64,
    grace: Duration,
) -> Option<i64> {
    let secs = |d: Duration| i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
    let end = match stack
        .tags
        .get(crate::identity::TAG_EXPIRES)
        .and_then(|v| v.parse::<i64>().ok())
    {
        Some(end) => end,
        None => stack.created.saturating_add(secs(legacy?)),
    };
    Some(if first_seen > end {
        first_seen.saturating_add(secs(grace))
    } else {
        end
    })
}

/// Why a pass deletes no cluster whose lifetime ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpiryHold {
    /// This clock and AWS's disagree by more than the bound, or AWS's is not known.
    ClockSkew,
    /// More lifetimes ended at once than may be expired in one pass.
    Cap,
}

impl ExpiryHold {
    /// A short label for metrics.
    pub fn label(self) -> &'static str {
        match self {
            ExpiryHold::ClockSkew => "clock_skew",
            ExpiryHold::Cap => "cap",
        }
    }
}

/// Whether a pass in which `due` clusters are past their end may expire them: not while
/// AWS's clock minus ours (`clock_offset`, `None` when unknown) exceeds `max_skew`, and
/// not when more than `cap` are due at once (a wrong clock, or a policy change, more
/// likely than so many ending together). `None`: they may go.
pub fn hold_expiries(
    due: usize,
    clock_offset: Option<i64>,
    max_skew: Duration,
    cap: usize,
) -> Option<ExpiryHold> {
    if due == 0 {
        None
    } else if clock_offset.is_none_or(|o| o.unsigned_abs() > max_skew.as_secs()) {
        Some(ExpiryHold::ClockSkew)
    } else if due > cap {
        Some(ExpiryHold::Cap)
    } else {
        None
    }
}

/// Admits `request` for `user`, whose other clusters take up `usage`.
///
/// # Errors
/// The first [`Refusal`], in the order: values, lifetime, clusters, nodes, dollars.
pub fn admit(
    policy: &Policy,
    user: &str,
    request: &Request,
    usage: &Usage,
) -> Result<Admitted, Refusal> {
    for (key, value) in &request.parameters {
        check_value(policy, key, value)?;
    }
    let limits = policy.limits_of(user);
    let lifetime = match &request.lifetime {
        None => limits.lifetime,
        Some(text) => Some(parse_duration(text).ok_or_else(|| {
            refuse(
                "lifetime",
                format!("`Lifetime` = `{text}` is not allowed: give a duration like 8h or 3d"),
            )
        })?),
    };
    if let (Some(asked), Some(max)) = (lifetime, &limits.max_lifetime)
        && asked > max.value
    {
        return Err(refuse(
            "lifetime",
            format!(
                "`Lifetime` = `{}` exceeds your limit of {} ({})",
                format_duration(asked),
                format_duration(max.value),
                max.source
            ),
        ));
    }
    if let Some(max) = &limits.clusters
        && usage.clusters + 1 > max.value
    {
        return Err(refuse(
            "clusters",
            format!(
                "you have {} {} already; your limit is {} ({}): delete one first",
                usage.clusters,
                if usage.clusters == 1 {
                    "cluster"
                } else {
                    "clusters"
                },
                max.value,
                max.source
            ),
        ));
    }
    let nodes: u64 = request
        .parameters
        .get("ComputeMaxNodes")
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    if let Some(max) = &limits.max_nodes
        && usage.max_nodes + nodes > max.value
    {
        let message = if usage.max_nodes == 0 {
            format!(
                "`ComputeMaxNodes`={nodes} exceeds your limit of {} ({})",
                max.value, max.source
            )
        } else {
            format!(
                "`ComputeMaxNodes`={nodes} with the {} nodes of your other clusters exceeds your limit of {} ({}); at most {} are left",
                usage.max_nodes,
                max.value,
                max.source,
                max.value.saturating_sub(usage.max_nodes)
            )
        };
        return Err(refuse("max_nodes", message));
    }
    let cost = cost_of(&request.parameters, &policy.prices);
    if let Some(cap) = &limits.dollars_per_hour {
        let Some(cost) = cost else {
            return Err(refuse(
                "dollars_per_hour",
                "the cost of this cluster is unknown (no price for its instance type), and you have a cost limit; choose a listed instance type".into(),
            ));
        };
        if usage.cost + cost > cap.value {
            let left = if cap.value > usage.cost {
                cap.value - usage.cost
            } else {
                Dollars::ZERO
            };
            return Err(refuse(
                "dollars_per_hour",
                format!(
                    "this cluster could cost up to {cost}/h; you have {left}/h left of {}/h ({}, {} {} running)",
                    cap.value,
                    cap.source,
                    usage.clusters,
                    if usage.clusters == 1 {
                        "cluster"
                    } else {
                        "clusters"
                    }
                ),
            ));
        }
    }
    Ok(Admitted {
        lifetime,
        max_nodes: nodes,
        cost,
    })
}

fn check_value(policy: &Policy, key: &str, value: &str) -> Result<(), Refusal> {
    let Some(p) = policy.parameters.get(key) else {
        return Err(refuse(
            "unknown_key",
            format!("`{key}` is not a setting you can choose"),
        ));
    };
    let no = |rule: String| {
        refuse(
            "value",
            format!("`{key}` = `{value}` is not allowed: {rule}"),
        )
    };
    if !p.allowed.is_empty() && !p.allowed.iter().any(|a| a == value) {
        return Err(no(format!("allowed values are {}", p.allowed.join(", "))));
    }
    if let Some(re) = &p.pattern
        && !re.is_match(value)
    {
        return Err(no(format!(
            "it must match {}",
            re.as_str()
                .trim_start_matches("^(?:")
                .trim_end_matches(")$")
        )));
    }
    if let Some((lo, hi)) = p.range {
        match value.parse::<i64>() {
            Ok(n) if (lo..=hi).contains(&n) => {}
            _ => return Err(no(format!("it must be a whole number from {lo} to {hi}"))),
        }
    }
    if let Some(max) = p.max_price {
        match Dollars::parse(value) {
            Some(v) if v <= max => {}
            Some(_) => return Err(no(format!("the most you may bid is {max}/h"))),
            None => {
                return Err(no(
                    "it must be a price in dollars per hour, like 0.05".into()
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::tests::policy;

    fn request(pairs: &[(&str, &str)]) -> Request {
        let mut parameters: BTreeMap<String, String> = [
            ("ComputeInstanceType", "c5.large"),
            ("MasterInstanceType", "c5.large"),
            ("ComputeMaxNodes", "4"),
            ("ComputeSpotPrice", "0"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let mut lifetime = None;
        for (k, v) in pairs {
            if *k == "Lifetime" {
                lifetime = Some(v.to_string());
            } else {
                parameters.insert(k.to_string(), v.to_string());
            }
        }
        Request::new(parameters, lifetime)
    }

    fn d(s: &str) -> Dollars {
        Dollars::parse(s).unwrap()
    }

    fn usage(clusters: u64, max_nodes: u64, cost: &str) -> Usage {
        Usage {
            clusters,
            max_nodes,
            cost: d(cost),
        }
    }

    fn message(user: &str, pairs: &[(&str, &str)], u: Usage) -> String {
        admit(&policy(), user, &request(pairs), &u)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn quota_edges_exactly_at_and_one_over() {
        let p = policy();
        // dave: default limits, 32 nodes.
        assert!(
            admit(
                &p,
                "dave",
                &request(&[("ComputeMaxNodes", "32")]),
                &Usage::default()
            )
            .is_ok()
        );
        assert_eq!(
            message("dave", &[("ComputeMaxNodes", "33")], Usage::default()),
            "`ComputeMaxNodes`=33 exceeds your limit of 32 (the default limit)"
        );
        assert!(
            admit(
                &p,
                "dave",
                &request(&[("ComputeMaxNodes", "16")]),
                &usage(1, 16, "0")
            )
            .is_ok()
        );
        assert_eq!(
            message("dave", &[("ComputeMaxNodes", "17")], usage(1, 16, "0")),
            "`ComputeMaxNodes`=17 with the 16 nodes of your other clusters exceeds your limit of 32 (the default limit); at most 16 are left"
        );
        assert_eq!(
            message("dave", &[], usage(2, 2, "0")),
            "you have 2 clusters already; your limit is 2 (the default limit): delete one first"
        );
    }

    #[test]
    fn group_limit_and_user_override() {
        assert_eq!(
            message("alice", &[("ComputeMaxNodes", "17")], Usage::default()),
            "`ComputeMaxNodes`=17 exceeds your limit of 16 (group students)"
        );
        assert!(
            admit(
                &policy(),
                "bob",
                &request(&[("ComputeMaxNodes", "64")]),
                &Usage::default()
            )
            .is_ok()
        );
    }

    #[test]
    fn cost_cap_with_exact_decimals() {
        // alice (students): $2.00/h. 4 c5.large on spot at 0.30 + master 0.085 = 1.285.
        let ok = admit(
            &policy(),
            "alice",
            &request(&[("ComputeSpotPrice", "0.30")]),
            &Usage::default(),
        )
        .unwrap();
        assert_eq!(ok.cost, Some(d("1.285")));
        assert_eq!(
            message(
                "alice",
                &[("ComputeSpotPrice", "0.30")],
                usage(0, 0, "0.716")
            ),
            "this cluster could cost up to $1.285/h; you have $1.284/h left of $2.00/h (group students, 0 clusters running)"
        );
        // Exactly at the cap is allowed: 1.285 + 0.715 = 2.00.
        assert!(
            admit(
                &policy(),
                "alice",
                &request(&[("ComputeSpotPrice", "0.30")]),
                &usage(0, 0, "0.715")
            )
            .is_ok()
        );
        // "0.030" and "0.03" are the same bid.
        let a = admit(
            &policy(),
            "dave",
            &request(&[("ComputeSpotPrice", "0.030")]),
            &Usage::default(),
        )
        .unwrap();
        let b = admit(
            &policy(),
            "dave",
            &request(&[("ComputeSpotPrice", "0.03")]),
            &Usage::default(),
        )
        .unwrap();
        assert_eq!(a.cost, b.cost);
    }

    #[test]
    fn dave_over_the_dollar_cap_is_told_what_is_left() {
        // dave: $6.00/h; 32 r4.large on demand = 32 × 0.133 + 0.133 = 4.389; with $2.00 used.
        let m = message(
            "dave",
            &[
                ("ComputeInstanceType", "r4.large"),
                ("MasterInstanceType", "r4.large"),
                ("ComputeMaxNodes", "32"),
            ],
            usage(1, 0, "2.00"),
        );
        assert_eq!(
            m,
            "this cluster could cost up to $4.389/h; you have $4.00/h left of $6.00/h (the default limit, 1 cluster running)"
        );
    }

    #[test]
    fn values_break_their_rules_by_name() {
        for (pairs, expected) in [
            (
                vec![("ComputeMaxNodes", "65")],
                "`ComputeMaxNodes` = `65` is not allowed: it must be a whole number from 1 to 64",
            ),
            (
                vec![("ComputeInstanceType", "p4d.24xlarge")],
                "`ComputeInstanceType` = `p4d.24xlarge` is not allowed: allowed values are c5.large, r4.large",
            ),
            (
                vec![("ComputeSpotPrice", "0.51")],
                "`ComputeSpotPrice` = `0.51` is not allowed: the most you may bid is $0.50/h",
            ),
            (vec![("ComputeSpotPrice", "0.500")], ""),
            (
                vec![("MasterSystemVolumeSize", "8")],
                "`MasterSystemVolumeSize` = `8` is not allowed: it must be a whole number from 16 to 500",
            ),
        ] {
            let got = admit(&policy(), "dave", &request(&pairs), &Usage::default());
            match got {
                Ok(_) => assert_eq!(expected, "", "{pairs:?} was admitted"),
                Err(e) => assert_eq!(e.to_string(), expected, "{pairs:?}"),
            }
        }
    }

    #[test]
    fn lifetime_defaults_and_caps() {
        let p = policy();
        let dflt = admit(&p, "dave", &request(&[]), &Usage::default()).unwrap();
        assert_eq!(dflt.lifetime, Some(Duration::from_secs(86_400)));
        let asked = admit(
            &p,
            "dave",
            &request(&[("Lifetime", "8h")]),
            &Usage::default(),
        )
        .unwrap();
        assert_eq!(asked.lifetime, Some(Duration::from_secs(8 * 3600)));
        assert!(
            admit(
                &p,
                "dave",
                &request(&[("Lifetime", "7d")]),
                &Usage::default()
            )
            .is_ok()
        );
        assert_eq!(
            message("dave", &[("Lifetime", "8d")], Usage::default()),
            "`Lifetime` = `8d` exceeds your limit of 7d (the default limit)"
        );
        assert!(
            admit(
                &p,
                "carol",
                &request(&[("Lifetime", "14d")]),
                &Usage::default()
            )
            .is_ok(),
            "group gpu allows 14d"
        );
        assert_eq!(
            message("dave", &[("Lifetime", "soon")], Usage::default()),
            "`Lifetime` = `soon` is not allowed: give a duration like 8h or 3d"
        );
    }
}

#[cfg(test)]
mod lifetime_tests {
    use super::*;
    use crate::stack::StackView;

    fn stack(tag: Option<&str>) -> StackView {
        let mut s = StackView {
            created: 1_000,
            ..StackView::default()
        };
        if let Some(t) = tag {
            s.tags.insert(crate::identity::TAG_EXPIRES.into(), t.into());
        }
        s
    }

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn the_end_is_the_tag_whatever_the_request_says_now() {
        assert_eq!(
            lifetime_end(&stack(Some("5000")), Some(HOUR * 100), 1_000, HOUR),
            Some(5_000)
        );
        assert_eq!(
            lifetime_end(&stack(Some("5000")), None, 1_000, HOUR),
            Some(5_000)
        );
    }

    #[test]
    fn a_stack_without_the_tag_lives_by_the_policy() {
        assert_eq!(
            lifetime_end(&stack(None), Some(HOUR), 1_000, HOUR),
            Some(4_600)
        );
        assert_eq!(lifetime_end(&stack(None), None, 1_000, HOUR), None);
    }

    #[test]
    fn expiry_is_held_by_a_wrong_clock_or_too_many_at_once() {
        let two_min = Duration::from_secs(120);
        assert_eq!(hold_expiries(3, Some(5), two_min, 10), None);
        assert_eq!(hold_expiries(0, None, two_min, 0), None, "nothing due");
        assert_eq!(
            hold_expiries(3, Some(-121), two_min, 10),
            Some(ExpiryHold::ClockSkew)
        );
        assert_eq!(
            hold_expiries(3, None, two_min, 10),
            Some(ExpiryHold::ClockSkew)
        );
        assert_eq!(
            hold_expiries(11, Some(0), two_min, 10),
            Some(ExpiryHold::Cap)
        );
        assert_eq!(hold_expiries(10, Some(0), two_min, 10), None);
    }

    #[test]
    fn a_cluster_first_seen_past_its_end_gets_a_grace_not_a_delete() {
        assert_eq!(
            lifetime_end(&stack(Some("5000")), None, 9_000, HOUR),
            Some(12_600)
        );
    }
}
