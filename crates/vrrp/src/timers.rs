//! RFC timer formulas.
//!
//! * VRRPv2 (RFC 3768 §6.1): `Skew_Time = (256 - Priority) / 256` seconds.
//! * VRRPv3 (RFC 5798 §6.1): `Skew_Time = ((256 - Priority) * Master_Adver_Interval) / 256`.
//! * Both: `Master_Down_Interval = 3 * Master_Adver_Interval + Skew_Time`.
//!
//! Computed in microseconds, like keepalived 2.2, so sub-centisecond skews are kept.

use std::time::Duration;

use crate::packet::Version;

/// Skew time for a router of `priority`, given the (learned) master advertisement interval.
pub fn skew_time(version: Version, priority: u8, master_adver_interval: Duration) -> Duration {
    let p = 256 - u64::from(priority);
    match version {
        Version::V2 => Duration::from_micros(p * 1_000_000 / 256),
        Version::V3 => {
            let us = master_adver_interval.as_micros() as u64;
            Duration::from_micros(p * us / 256)
        }
    }
}

/// Master_Down_Interval = 3 × Master_Adver_Interval + Skew_Time.
pub fn master_down_interval(
    version: Version,
    priority: u8,
    master_adver_interval: Duration,
) -> Duration {
    master_adver_interval * 3 + skew_time(version, priority, master_adver_interval)
}

/// Interval in centiseconds → Duration.
pub fn from_cs(cs: u16) -> Duration {
    Duration::from_millis(u64::from(cs) * 10)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v2_formulas() {
        let one = Duration::from_secs(1);
        // priority 100: skew = 156/256 s = 609375 us
        assert_eq!(
            skew_time(Version::V2, 100, one),
            Duration::from_micros(609_375)
        );
        assert_eq!(
            master_down_interval(Version::V2, 100, one),
            Duration::from_micros(3_609_375)
        );
        // v2 skew ignores the interval
        assert_eq!(
            skew_time(Version::V2, 100, one * 5),
            Duration::from_micros(609_375)
        );
        assert_eq!(
            skew_time(Version::V2, 255, one),
            Duration::from_micros(3_906)
        );
    }

    #[test]
    fn v3_formulas() {
        let one = Duration::from_secs(1);
        assert_eq!(
            skew_time(Version::V3, 100, one),
            Duration::from_micros(609_375)
        );
        // v3 skew scales with the interval: 100 ms interval → 60.9375 ms skew
        let tenth = from_cs(10);
        assert_eq!(tenth, Duration::from_millis(100));
        assert_eq!(
            skew_time(Version::V3, 100, tenth),
            Duration::from_micros(60_937)
        );
        assert_eq!(
            master_down_interval(Version::V3, 100, tenth),
            Duration::from_micros(360_937)
        );
        // higher priority → shorter skew → it wins the race to become master
        assert!(skew_time(Version::V3, 200, one) < skew_time(Version::V3, 100, one));
    }
}
