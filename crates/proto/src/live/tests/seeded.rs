use super::*;
use std::collections::BTreeMap;
use syncd_testkit::rng::Rng;

#[test]
fn seeded_runs_deliver_every_change_and_never_spin() {
    for seed in 1..=3000u64 {
        run_seed(seed);
    }
}

#[test]
fn seeded_pipelined_runs_deliver_every_change() {
    let most = (1..=3000u64).map(run_pipelined).max();
    assert_eq!(most, Some(MAX_IN_FLIGHT), "the cap was never reached");
}

/// What both kinds of seeded run share: the core on a simulated clock, a
/// simulated standby that applies a ship unless told to fail, and what it
/// must end up holding.
struct Sim {
    seed: u64,
    rng: Rng,
    now: Instant,
    l: Live,
    names: Vec<RelPath>,
    /// path -> time of its newest change; removed once a ship that covers
    /// it and was taken after that change succeeds
    dirty: BTreeMap<RelPath, Instant>,
    /// Faults (failed connects, lost sessions, refused and busy files)
    /// happen until then.
    faults_until: Instant,
    connecting: bool,
    steps: u32,
}

impl Sim {
    fn new(seed: u64, mix: u64) -> Sim {
        let t0 = Instant::now();
        Sim {
            seed,
            rng: Rng(seed.wrapping_mul(mix) | 1),
            now: t0,
            l: Live::new(cfg(), t0),
            names: (0..12).map(|i| p(&format!("d{}/f{i}", i % 3))).collect(),
            dirty: BTreeMap::new(),
            faults_until: t0 + Duration::from_secs(120),
            connecting: false,
            steps: 0,
        }
    }

    fn faulty(&self) -> bool {
        self.now < self.faults_until
    }

    /// Starts a step: events drained, and a connect asked for answered
    /// (true: that was the step).
    fn step(&mut self, most: u32) -> bool {
        self.steps += 1;
        assert!(self.steps < most, "seed {}: no progress", self.seed);
        while self.l.poll_event().is_some() {}
        if !std::mem::take(&mut self.connecting) {
            return false;
        }
        if self.faulty() && self.rng.chance(30) {
            self.l.handle_connect_failed(self.now);
        } else {
            // A connect starts from a full compare: the standby is
            // reconciled by it, so nothing is dirty beyond its take time.
            self.l.handle_connected(self.now);
        }
        true
    }

    /// The standby applied `b` (taken at `taken`): what it refused or
    /// found busy while faults last; every other change it covers is
    /// delivered.
    fn applied(&mut self, b: &Batch, taken: Instant) -> Followups {
        let faulty = self.faulty();
        let mut f = Followups::default();
        let mut keep = Vec::new();
        for (path, &changed) in &self.dirty {
            if changed <= taken && covers(b, path) {
                if faulty && self.rng.chance(10) {
                    f.failed.push((path.clone(), 10));
                } else if faulty && self.rng.chance(5) {
                    f.busy.push(path.clone());
                } else {
                    keep.push(path.clone());
                }
            }
        }
        for path in keep {
            self.dirty.remove(&path);
        }
        f
    }

    /// The core has nothing to do: the next input is a change (most of
    /// the time while faults last, also while down: the next connect's
    /// full compare must carry it) or its timer. False: neither is left.
    fn idle(&mut self) -> bool {
        let due = self.l.poll_timeout();
        if let Some(d) = due {
            assert!(
                d > self.now,
                "seed {}: idle with a timer already due (spin)",
                self.seed
            );
        }
        let input = self.faulty() && self.rng.chance(70);
        let step = Duration::from_millis(self.rng.below(400) as u64);
        match due {
            Some(d) if !input || d <= self.now + step => self.now = d,
            _ if input => {
                self.now += step;
                let path = self.names[self.rng.below(self.names.len())].clone();
                self.dirty.insert(path.clone(), self.now);
                self.l.handle_change(Change::Settled(path), self.now);
            }
            _ => return false,
        }
        true
    }

    /// Faults are over and nothing is left in flight: done, or given up on
    /// (the asserts that follow say which).
    fn over(&self, nothing_in_flight: bool) -> bool {
        let converged =
            !self.faulty() && self.dirty.is_empty() && nothing_in_flight && self.l.lag().ops == 0;
        converged || self.now > self.faults_until + Duration::from_secs(600)
    }

    fn assert_converged(&self) {
        assert!(
            self.dirty.is_empty(),
            "seed {}: changes never reached the standby: {:?}",
            self.seed,
            self.dirty.keys().collect::<Vec<_>>()
        );
        assert_eq!(
            self.l.lag().ops,
            0,
            "seed {}: lag left after convergence",
            self.seed
        );
    }
}

/// One seeded run, each ship answered as soon as it is taken.
fn run_seed(seed: u64) {
    let mut s = Sim::new(seed, 0x9E37_79B9_7F4A_7C15);
    // the ship in progress and when it was taken
    let mut shipping: Option<(Batch, Instant)> = None;
    loop {
        if s.step(100_000) {
            continue;
        }
        if let Some((b, taken)) = shipping.take() {
            if s.faulty() && s.rng.chance(5) {
                s.l.handle_session_lost(s.now);
                continue;
            }
            let f = s.applied(&b, taken);
            let more = u64::from(s.rng.chance(3));
            s.l.handle_shipped(s.now, f, more, true);
            continue;
        }
        match s.l.poll_action(s.now) {
            Some(Action::Connect) => s.connecting = true,
            Some(Action::Ship { batch, .. }) => shipping = Some((batch, s.now)),
            Some(Action::Stop { .. }) => panic!("seed {seed}: no shutdown was asked"),
            None => {
                if !s.idle() {
                    break;
                }
            }
        }
        if s.over(shipping.is_none()) {
            break;
        }
    }
    s.assert_converged();
}

/// Like [`run_seed`], with commits answered some time after they are sent
/// (the next batch shipped meanwhile), answers now and then offered out of
/// order (refused: the session ends), and sessions lost with one or two
/// batches in flight. Returns the most commits ever in flight at once.
fn run_pipelined(seed: u64) -> usize {
    let mut s = Sim::new(seed, 0xD1B5_4A32_D192_ED03);
    // commits sent, oldest first: batch, when taken, id
    let mut sent: VecDeque<(Batch, Instant, u64)> = VecDeque::new();
    let mut max_in_flight = 0;
    loop {
        if s.step(200_000) {
            continue;
        }
        max_in_flight = max_in_flight.max(sent.len());
        assert!(sent.len() <= MAX_IN_FLIGHT, "seed {seed}: over the cap");
        assert_eq!(
            s.l.in_flight().collect::<Vec<_>>(),
            sent.iter().map(|c| c.2).collect::<Vec<_>>(),
            "seed {seed}"
        );
        // An answer arrives (or the session fails) before the next action.
        if !sent.is_empty() && s.rng.chance(50) {
            if s.faulty() && s.rng.chance(5) {
                s.l.handle_session_lost(s.now);
                sent.clear();
                continue;
            }
            if sent.len() == 2 && s.faulty() && s.rng.chance(5) {
                let got = sent[1].2;
                assert!(s
                    .l
                    .handle_committed(got, s.now, Followups::default(), 0, true)
                    .is_err());
                s.l.handle_session_lost(s.now);
                sent.clear();
                continue;
            }
            let (b, taken, id) = sent.pop_front().unwrap();
            let f = s.applied(&b, taken);
            let more = u64::from(s.rng.chance(3));
            s.l.handle_committed(id, s.now, f, more, true).unwrap();
            continue;
        }
        match s.l.poll_action(s.now) {
            Some(Action::Connect) => s.connecting = true,
            Some(Action::Ship { batch, commit_id }) => {
                if s.faulty() && s.rng.chance(5) {
                    s.l.handle_session_lost(s.now);
                    sent.clear();
                    continue;
                }
                s.l.handle_commit_sent();
                sent.push_back((batch, s.now, commit_id));
            }
            Some(Action::Stop { .. }) => panic!("seed {seed}: no shutdown was asked"),
            // waiting for an answer: time passes
            None if !sent.is_empty() => s.now += Duration::from_millis(s.rng.below(5) as u64),
            None => {
                if !s.idle() {
                    break;
                }
            }
        }
        if s.over(sent.is_empty()) {
            break;
        }
    }
    s.assert_converged();
    max_in_flight
}
