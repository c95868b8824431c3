//! Health tracking arithmetic (sans-IO): fall/rise debouncing and the
//! keepalived weight rules.
//!
//! * weight 0: while failed, the instance is in FAULT;
//! * weight > 0: added to the priority while the check succeeds;
//! * weight < 0: added (i.e. subtracted) while it fails.
//!
//! A check starts "unknown": its first result decides at once, later
//! changes need `fall` consecutive failures or `rise` consecutive successes.

/// Debounced status of one check.
#[derive(Debug, Clone)]
pub struct TrackState {
    pub name: String,
    pub weight: i32,
    fall: u32,
    rise: u32,
    ok: Option<bool>,
    streak: u32,
}

impl TrackState {
    pub fn new(name: impl Into<String>, weight: i32, fall: u32, rise: u32) -> Self {
        TrackState {
            name: name.into(),
            weight,
            fall: fall.max(1),
            rise: rise.max(1),
            ok: None,
            streak: 0,
        }
    }

    /// `Some(true)` healthy, `Some(false)` failed, `None` not yet run.
    pub fn status(&self) -> Option<bool> {
        self.ok
    }

    /// Record one probe result; returns true if the debounced status changed.
    pub fn record(&mut self, success: bool) -> bool {
        match self.ok {
            None => {
                self.ok = Some(success);
                self.streak = 0;
                true
            }
            Some(cur) if cur == success => {
                self.streak = 0;
                false
            }
            Some(_) => {
                self.streak += 1;
                let need = if success { self.rise } else { self.fall };
                if self.streak >= need {
                    self.ok = Some(success);
                    self.streak = 0;
                    true
                } else {
                    false
                }
            }
        }
    }
}

/// Interface link status.
#[derive(Debug, Clone)]
pub struct LinkState {
    pub name: String,
    pub up: bool,
}

/// Combine checks and links into `(weight delta, fault reason)`.
pub fn health(tracks: &[TrackState], links: &[LinkState]) -> (i32, Option<String>) {
    let mut delta = 0i32;
    let mut faults = Vec::new();
    for l in links.iter().filter(|l| !l.up) {
        faults.push(format!("interface {} is down", l.name));
    }
    for t in tracks {
        match (t.ok, t.weight) {
            (Some(false), 0) => faults.push(format!("check {:?} failed", t.name)),
            (Some(true), w) if w > 0 => delta += w,
            (Some(false), w) if w < 0 => delta += w,
            _ => {}
        }
    }
    (delta, (!faults.is_empty()).then(|| faults.join(", ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fall_and_rise_debounce() {
        let mut t = TrackState::new("chk", -20, 3, 2);
        assert_eq!(t.status(), None);
        assert!(t.record(true));
        assert_eq!(t.status(), Some(true));
        assert!(!t.record(false));
        assert!(!t.record(false));
        assert!(!t.record(true), "a success resets the failure streak");
        assert!(!t.record(false));
        assert!(!t.record(false));
        assert!(t.record(false), "third consecutive failure flips it");
        assert_eq!(t.status(), Some(false));
        assert!(!t.record(true));
        assert!(t.record(true), "rise = 2");
        assert_eq!(t.status(), Some(true));
    }

    #[test]
    fn weight_arithmetic() {
        let mut neg = TrackState::new("neg", -20, 1, 1);
        let mut pos = TrackState::new("pos", 15, 1, 1);
        let mut zero = TrackState::new("zero", 0, 1, 1);
        // nothing known yet: no effect
        assert_eq!(
            health(&[neg.clone(), pos.clone(), zero.clone()], &[]),
            (0, None)
        );
        neg.record(true);
        pos.record(true);
        zero.record(true);
        assert_eq!(
            health(&[neg.clone(), pos.clone(), zero.clone()], &[]),
            (15, None)
        );
        neg.record(false);
        assert_eq!(
            health(&[neg.clone(), pos.clone(), zero.clone()], &[]),
            (-5, None)
        );
        pos.record(false);
        assert_eq!(
            health(&[neg.clone(), pos.clone(), zero.clone()], &[]),
            (-20, None)
        );
        zero.record(false);
        let (d, f) = health(&[neg, pos, zero], &[]);
        assert_eq!(d, -20);
        assert_eq!(f.as_deref(), Some("check \"zero\" failed"));
    }

    #[test]
    fn link_down_is_fault() {
        let links = [
            LinkState {
                name: "eth0".into(),
                up: true,
            },
            LinkState {
                name: "eth1".into(),
                up: false,
            },
        ];
        assert_eq!(
            health(&[], &links),
            (0, Some("interface eth1 is down".into()))
        );
    }
}
