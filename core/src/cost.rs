//! What a cluster could cost: dollars per hour at full scale, for the operator's dashboard.
//!
//! Full scale is `ComputeMaxNodes` compute nodes plus the master. A compute node costs the
//! spot price asked for (`ComputeSpotPrice` above zero), else the on-demand price of its
//! type; the master costs its on-demand price. Prices come from the operator's table.

use std::collections::BTreeMap;

/// On-demand prices, dollars per hour by instance type.
pub type PriceTable = BTreeMap<String, f64>;

/// Dollars per hour at full scale, or `None` when a price is unknown or a number does not
/// parse (the estimate is then left out rather than guessed).
pub fn hourly_at_full_scale(
    parameters: &BTreeMap<String, String>,
    prices: &PriceTable,
) -> Option<f64> {
    let number = |k: &str| parameters.get(k).and_then(|v| v.parse::<f64>().ok());
    let price_of = |k: &str| parameters.get(k).and_then(|t| prices.get(t)).copied();
    let nodes = number("ComputeMaxNodes")?;
    let compute = match number("ComputeSpotPrice") {
        Some(spot) if spot > 0.0 => spot,
        _ => price_of("ComputeInstanceType")?,
    };
    let master = price_of("MasterInstanceType")?;
    Some(nodes * compute + master)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn prices() -> PriceTable {
        BTreeMap::from([("r4.large".into(), 0.133), ("c5.large".into(), 0.085)])
    }

    #[test]
    fn spot_price_counts_for_compute_and_on_demand_for_the_master() {
        let p = params(&[
            ("ComputeMaxNodes", "25"),
            ("ComputeSpotPrice", "0.03"),
            ("ComputeInstanceType", "r4.large"),
            ("MasterInstanceType", "r4.large"),
        ]);
        let cost = hourly_at_full_scale(&p, &prices()).unwrap();
        assert!((cost - (25.0 * 0.03 + 0.133)).abs() < 1e-9, "{cost}");
    }

    #[test]
    fn without_spot_the_on_demand_price_counts() {
        let p = params(&[
            ("ComputeMaxNodes", "4"),
            ("ComputeSpotPrice", "0"),
            ("ComputeInstanceType", "c5.large"),
            ("MasterInstanceType", "c5.large"),
        ]);
        let cost = hourly_at_full_scale(&p, &prices()).unwrap();
        assert!((cost - 5.0 * 0.085).abs() < 1e-9, "{cost}");
    }

    #[test]
    fn unknown_prices_give_no_estimate() {
        let p = params(&[
            ("ComputeMaxNodes", "4"),
            ("ComputeInstanceType", "x9.huge"),
            ("MasterInstanceType", "c5.large"),
        ]);
        assert_eq!(hourly_at_full_scale(&p, &prices()), None);
    }
}
