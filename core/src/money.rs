//! Dollars as exact decimals: prices are compared as written (`"0.030"` equals `"0.03"`),
//! never as floats.

use std::fmt;
use std::ops::{Add, Sub};

/// An amount of dollars, exact to a millionth.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Hash)]
pub struct Dollars(i64);

/// Millionths in a dollar.
const SCALE: i64 = 1_000_000;

impl Dollars {
    /// Zero dollars.
    pub const ZERO: Dollars = Dollars(0);

    /// Parses a non-negative decimal such as `4`, `0.03` or `0.030` (at most six decimals).
    pub fn parse(text: &str) -> Option<Dollars> {
        let text = text.trim();
        let (int, frac) = text.split_once('.').unwrap_or((text, ""));
        if int.is_empty() && frac.is_empty() {
            return None;
        }
        if !int.bytes().all(|b| b.is_ascii_digit())
            || !frac.bytes().all(|b| b.is_ascii_digit())
            || frac.len() > 6
        {
            return None;
        }
        let whole: i64 = if int.is_empty() { 0 } else { int.parse().ok()? };
        let mut micro: i64 = 0;
        for (i, b) in frac.bytes().enumerate() {
            micro += i64::from(b - b'0') * 10_i64.pow(5 - u32::try_from(i).ok()?);
        }
        whole.checked_mul(SCALE)?.checked_add(micro).map(Dollars)
    }

    /// This amount `n` times.
    pub fn times(self, n: u64) -> Dollars {
        Dollars(self.0.saturating_mul(i64::try_from(n).unwrap_or(i64::MAX)))
    }

    /// As a float, for metrics only.
    pub fn as_f64(self) -> f64 {
        self.0 as f64 / SCALE as f64
    }
}

impl Add for Dollars {
    type Output = Dollars;
    fn add(self, rhs: Dollars) -> Dollars {
        Dollars(self.0.saturating_add(rhs.0))
    }
}

impl Sub for Dollars {
    type Output = Dollars;
    fn sub(self, rhs: Dollars) -> Dollars {
        Dollars(self.0.saturating_sub(rhs.0))
    }
}

impl std::iter::Sum for Dollars {
    fn sum<I: Iterator<Item = Dollars>>(iter: I) -> Dollars {
        iter.fold(Dollars::ZERO, Add::add)
    }
}

/// `$4.10`: cents always, more digits only when they matter.
impl fmt::Display for Dollars {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let abs = self.0.unsigned_abs();
        let whole = abs / SCALE.unsigned_abs();
        let frac = abs % SCALE.unsigned_abs();
        let mut digits = format!("{frac:06}");
        while digits.len() > 2 && digits.ends_with('0') {
            digits.pop();
        }
        write!(f, "{sign}${whole}.{digits}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Dollars {
        Dollars::parse(s).unwrap()
    }

    #[test]
    fn decimals_compare_as_written_not_as_floats() {
        assert_eq!(d("0.030"), d("0.03"));
        assert!(d("0.031") > d("0.03"));
        assert_eq!(d("4"), d("4.000000"));
        assert_eq!(d(".5"), d("0.5"));
        assert_eq!(d("0.1").times(3), d("0.3"), "no float drift");
    }

    #[test]
    fn bad_amounts_do_not_parse() {
        for bad in ["", ".", "-1", "1e3", "0.0000001", "abc", "1.2.3", " "] {
            assert_eq!(Dollars::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn amounts_print_with_cents() {
        assert_eq!(d("4.1").to_string(), "$4.10");
        assert_eq!(d("0.133").to_string(), "$0.133");
        assert_eq!(d("6").to_string(), "$6.00");
        assert_eq!((d("2") - d("6")).to_string(), "-$4.00");
    }
}
