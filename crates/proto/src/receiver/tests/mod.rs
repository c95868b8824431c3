//! The Receiver driven by scripted and seeded request sequences, its effects
//! carried out on an in-memory filesystem that plays the shell: lanes stage,
//! write and check files, a flush renames verified files into place, a sync
//! makes the names durable.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::*;

mod hostile;

fn rp(s: &str) -> RelPath {
    RelPath::new(s).unwrap()
}

/// Not BLAKE3 (no dependency for it here); any function of the content will do.
fn hash(data: &[u8]) -> [u8; 32] {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for b in data {
        h = (h ^ *b as u64).wrapping_mul(0x100_0000_01b3);
    }
    let mut out = [0u8; 32];
    out[..8].copy_from_slice(&h.to_le_bytes());
    out[8..16].copy_from_slice(&(data.len() as u64).to_le_bytes());
    out
}

/// What the test's primary sends.
#[derive(Clone, Debug)]
enum Req {
    Hello,
    Peer,
    List,
    ListScope,
    Mkdir(RelPath),
    Delete(RelPath),
    Sig(u64),
    Begin(u64, RelPath, u64, bool),
    Data(u64, Vec<u8>),
    Delta(u64, Vec<u8>),
    End(u64, [u8; 32]),
    Abort(u64),
    Barrier(u64),
    Commit(u64),
    CaughtUp,
    Finish,
}

fn input(r: &Req) -> Input<'_> {
    match r {
        Req::Hello => Input::Hello,
        Req::Peer => Input::Peer,
        Req::List => Input::List,
        Req::ListScope => Input::ListScope,
        Req::Mkdir(_) | Req::Delete(_) => Input::Meta,
        Req::Sig(id) => Input::Sig { id: *id },
        Req::Begin(id, path, size, delta) => Input::Begin {
            id: *id,
            path,
            size: *size,
            delta: *delta,
        },
        Req::Data(id, d) => Input::Data {
            id: *id,
            len: d.len() as u64,
        },
        Req::Delta(id, _) => Input::Delta { id: *id },
        Req::End(id, _) => Input::End { id: *id },
        Req::Abort(id) => Input::Abort { id: *id },
        Req::Barrier(id) => Input::Barrier { id: *id },
        Req::Commit(id) => Input::Commit { id: *id },
        Req::CaughtUp => Input::CaughtUp,
        Req::Finish => Input::Finish,
    }
}

/// A file a lane is writing.
struct Staged {
    path: RelPath,
    size: u64,
    data: Vec<u8>,
}

/// The shell and its filesystem, in memory.
struct Fake {
    rx: Receiver,
    staged: HashMap<u64, Staged>,
    /// Checked, waiting for the next flush to be renamed in.
    verified: Vec<(RelPath, Vec<u8>)>,
    lane_failures: FailureLog,
    /// What a reader of the export sees.
    names: BTreeMap<RelPath, Vec<u8>>,
    dirs: BTreeSet<RelPath>,
    /// What survives a crash.
    durable: BTreeMap<RelPath, Vec<u8>>,
    /// (announced size, hash) of every file that ended, by path.
    announced: HashMap<RelPath, Vec<(u64, [u8; 32])>>,
    answers: Vec<(u64, Vec<Failure>, u64)>,
    commits_recorded: Vec<u64>,
    finished: bool,
}

impl Fake {
    fn new(mode: Mode) -> Fake {
        Fake::with(Receiver::with_limits(mode, 3, 8, 5))
    }

    fn with(rx: Receiver) -> Fake {
        Fake {
            rx,
            staged: HashMap::new(),
            verified: Vec::new(),
            lane_failures: FailureLog::new(5),
            names: BTreeMap::new(),
            dirs: BTreeSet::new(),
            durable: BTreeMap::new(),
            announced: HashMap::new(),
            answers: Vec::new(),
            commits_recorded: Vec::new(),
            finished: false,
        }
    }

    fn send(&mut self, r: Req) -> Result<(), ReceiverError> {
        self.rx.handle(input(&r))?;
        while let Some(e) = self.rx.poll_effect() {
            self.carry(e, &r);
        }
        self.check();
        Ok(())
    }

    fn script(&mut self, rs: Vec<Req>) -> Result<(), ReceiverError> {
        rs.into_iter().try_for_each(|r| self.send(r))
    }

    fn lane_fail(&mut self, path: &RelPath, error: &str, retry_whole: bool) {
        self.lane_failures.push(Failure {
            path: path.clone(),
            error: error.into(),
            retry_whole,
        });
    }

    fn carry(&mut self, e: Effect, r: &Req) {
        match e {
            Effect::Forward { .. } => self.lane(r),
            Effect::Drop { id, .. } => {
                self.staged.remove(&id);
            }
            Effect::Flush => {
                for (p, d) in self.verified.drain(..) {
                    self.names.insert(p, d);
                }
                let lf = std::mem::replace(&mut self.lane_failures, FailureLog::new(5));
                self.rx.handle_flushed(lf);
            }
            Effect::Sync => {
                self.durable = self.names.clone();
                self.rx.handle_synced();
            }
            Effect::RecordCommit { id } => self.commits_recorded.push(id),
            Effect::BarrierDone {
                id,
                failures,
                dropped,
            } => {
                if matches!(r, Req::Commit(_)) {
                    // Acknowledged means flushed: all that ended before the
                    // commit is under its name, and durable.
                    assert!(self.verified.is_empty(), "commit answered before a rename");
                    assert_eq!(self.durable, self.names, "commit answered before a sync");
                }
                self.answers.push((id, failures, dropped));
            }
            Effect::List | Effect::CaughtUp => {}
            Effect::Finished => self.finished = true,
        }
    }

    /// One lane's work on a forwarded request (the shell's stager).
    fn lane(&mut self, r: &Req) {
        match r {
            Req::Mkdir(p) => {
                self.dirs.insert(p.clone());
            }
            Req::Delete(p) => {
                self.names.remove(p);
            }
            Req::Begin(id, path, size, delta) => {
                if *delta && !self.names.contains_key(path) {
                    self.lane_fail(path, "delta base unavailable", true);
                    return;
                }
                let (path, size) = (path.clone(), *size);
                self.staged.insert(
                    *id,
                    Staged {
                        path,
                        size,
                        data: Vec::new(),
                    },
                );
            }
            Req::Data(id, d) | Req::Delta(id, d) => {
                if let Some(s) = self.staged.get_mut(id) {
                    // A delta's output is stopped at the announced size.
                    let room = (s.size - s.data.len() as u64) as usize;
                    assert!(
                        matches!(r, Req::Delta(..)) || d.len() <= room,
                        "over-size data reached a lane"
                    );
                    s.data.extend_from_slice(&d[..d.len().min(room)]);
                }
            }
            Req::End(id, want) => {
                let Some(s) = self.staged.remove(id) else {
                    return;
                };
                let got = hash(&s.data);
                let entry = self.announced.entry(s.path.clone()).or_default();
                entry.push((s.size, *want));
                match content_check(s.size, s.data.len() as u64, want, &got) {
                    Ok(()) => self.verified.push((s.path, s.data)),
                    Err(e) => self.lane_fail(&s.path, &e, true),
                }
            }
            Req::Abort(id) => {
                self.staged.remove(id);
            }
            _ => {}
        }
    }

    /// What holds after every request, whatever was sent.
    fn check(&self) {
        // Never a partial file under a real name: every name holds exactly
        // what some FileEnd announced (size and hash).
        for (p, d) in &self.names {
            let ok = self.announced.get(p).is_some_and(|v| {
                v.iter()
                    .any(|(size, h)| *size == d.len() as u64 && *h == hash(d))
            });
            assert!(ok, "{p} holds content no FileEnd announced");
        }
        assert!(
            self.rx.in_flight() <= 8,
            "more files in flight than the cap"
        );
        for (_, f, _) in &self.answers {
            assert!(f.len() <= 5, "more failures kept than the cap");
        }
    }
}

fn file(id: u64, path: &str, content: &[u8]) -> Vec<Req> {
    vec![
        Req::Begin(id, rp(path), content.len() as u64, false),
        Req::Data(id, content.to_vec()),
        Req::End(id, hash(content)),
    ]
}

#[test]
fn a_commit_is_answered_after_its_files_are_durable() {
    let mut f = Fake::new(Mode::Write);
    let mut s = file(1, "a", b"hello");
    s.extend(file(2, "b", b"world"));
    f.script(s).unwrap();
    assert!(f.names.is_empty(), "renamed before a barrier");
    f.send(Req::Commit(7)).unwrap();
    assert_eq!(f.names.get(&rp("a")).unwrap(), b"hello");
    assert_eq!(f.durable.get(&rp("b")).unwrap(), b"world");
    assert_eq!(f.answers, vec![(7, vec![], 0)]);
    assert_eq!(f.commits_recorded, vec![7]);
}

#[test]
fn effects_come_in_order_and_wait_for_the_shell() {
    let mut rx = Receiver::new(Mode::Write, 2);
    rx.handle(Input::Meta).unwrap();
    assert_eq!(rx.poll_effect(), Some(Effect::Forward { lane: 0 }));
    rx.handle(Input::Commit { id: 1 }).unwrap();
    assert_eq!(rx.poll_effect(), Some(Effect::Flush));
    assert_eq!(rx.poll_effect(), None);
    // Nothing more is taken while the flush is under way.
    assert_eq!(
        rx.handle(Input::Meta),
        Err(ReceiverError::Busy("a metadata request"))
    );
    rx.handle_flushed(FailureLog::default());
    assert_eq!(rx.poll_effect(), Some(Effect::RecordCommit { id: 1 }));
    assert_eq!(rx.poll_effect(), Some(Effect::Sync));
    assert_eq!(rx.poll_effect(), None, "answered before the sync");
    rx.handle_synced();
    let done = Effect::BarrierDone {
        id: 1,
        failures: vec![],
        dropped: 0,
    };
    assert_eq!(rx.poll_effect(), Some(done));
    rx.handle(Input::Finish).unwrap();
    // Nothing went to the lanes since the commit's flush: straight to the sync.
    assert_eq!(rx.poll_effect(), Some(Effect::Sync));
    rx.handle_synced();
    assert_eq!(rx.poll_effect(), Some(Effect::Finished));
    assert!(rx.is_finished());
}

/// Pipelined commits rely on this: the next batch's listing, sent right
/// behind a commit, is taken only once that commit is durable and answered,
/// so replies stay in order and a later batch is applied after it.
#[test]
fn a_request_behind_a_commit_waits_for_its_sync_and_answer() {
    let mut rx = Receiver::new(Mode::Write, 2);
    rx.handle(Input::Commit { id: 1 }).unwrap();
    assert_eq!(rx.poll_effect(), Some(Effect::RecordCommit { id: 1 }));
    assert_eq!(rx.poll_effect(), Some(Effect::Sync));
    for early in [Input::ListScope, Input::Meta, Input::Barrier { id: 2 }] {
        assert!(
            matches!(rx.handle(early), Err(ReceiverError::Busy(_))),
            "{early:?} taken during the commit's sync"
        );
    }
    rx.handle_synced();
    assert!(matches!(
        rx.poll_effect(),
        Some(Effect::BarrierDone { id: 1, .. })
    ));
    rx.handle(Input::ListScope).unwrap();
    assert_eq!(rx.poll_effect(), Some(Effect::List));
}

/// A live batch asks for its listing, and commits right after its last
/// metadata: lanes that were given nothing since their last flush are not
/// asked again, but a commit is still durable before its answer, and
/// whatever went to a lane is flushed before the next answer.
#[test]
fn lanes_are_flushed_only_when_they_were_given_something() {
    let mut rx = Receiver::new(Mode::Write, 2);
    rx.handle(Input::ListScope).unwrap();
    assert_eq!(rx.poll_effect(), Some(Effect::List), "an idle flush first");
    rx.handle(Input::Barrier { id: 1 }).unwrap();
    let done = |id| Effect::BarrierDone {
        id,
        failures: vec![],
        dropped: 0,
    };
    assert_eq!(rx.poll_effect(), Some(done(1)));
    // A dropped file is lane work too (its staging is removed).
    let p = rp("f");
    rx.handle(Input::Begin {
        id: 3,
        path: &p,
        size: 1,
        delta: false,
    })
    .unwrap();
    assert_eq!(rx.poll_effect(), Some(Effect::Forward { lane: 1 }));
    rx.handle(Input::Data { id: 3, len: 2 }).unwrap();
    assert_eq!(rx.poll_effect(), Some(Effect::Drop { lane: 1, id: 3 }));
    rx.handle(Input::Barrier { id: 2 }).unwrap();
    assert_eq!(rx.poll_effect(), Some(Effect::Flush));
    rx.handle_flushed(FailureLog::default());
    assert!(matches!(
        rx.poll_effect(),
        Some(Effect::BarrierDone { id: 2, .. })
    ));
    // Nothing since: the commit goes straight to its record and sync.
    rx.handle(Input::Commit { id: 9 }).unwrap();
    assert_eq!(rx.poll_effect(), Some(Effect::RecordCommit { id: 9 }));
    assert_eq!(rx.poll_effect(), Some(Effect::Sync));
    assert_eq!(rx.poll_effect(), None, "answered before the sync");
    rx.handle_synced();
    assert_eq!(rx.poll_effect(), Some(done(9)));
    // Metadata after the content's barrier: the commit flushes it.
    rx.handle(Input::Meta).unwrap();
    assert_eq!(rx.poll_effect(), Some(Effect::Forward { lane: 0 }));
    rx.handle(Input::Commit { id: 10 }).unwrap();
    assert_eq!(rx.poll_effect(), Some(Effect::Flush));
    assert_eq!(rx.poll_effect(), None, "the commit waits for its flush");
}

/// A listing (a full batch's digest rounds included) comes after what the
/// lanes were given before it, e.g. lane 0's renames; idle lanes are not
/// asked.
#[test]
fn a_listing_waits_for_work_given_to_the_lanes() {
    let mut rx = Receiver::new(Mode::Write, 2);
    rx.handle(Input::List).unwrap();
    assert_eq!(rx.poll_effect(), Some(Effect::List), "idle lanes: at once");
    rx.handle(Input::Meta).unwrap();
    assert_eq!(rx.poll_effect(), Some(Effect::Forward { lane: 0 }));
    rx.handle(Input::List).unwrap();
    assert_eq!(rx.poll_effect(), Some(Effect::Flush));
    assert_eq!(rx.poll_effect(), None, "the listing waits for the flush");
    rx.handle_flushed(FailureLog::default());
    assert_eq!(rx.poll_effect(), Some(Effect::List));
}

#[test]
fn a_barrier_does_not_sync_and_reports_failures_once() {
    let mut f = Fake::new(Mode::Write);
    f.script(vec![
        Req::Begin(1, rp("x"), 3, false),
        Req::Data(1, b"abc".to_vec()),
    ])
    .unwrap();
    f.script(vec![Req::End(1, [9; 32]), Req::Barrier(4), Req::Barrier(5)])
        .unwrap();
    assert!(f.durable.is_empty());
    let (id, fails, _) = &f.answers[0];
    assert_eq!(*id, 4);
    assert!(fails[0].error.contains("content check failed") && fails[0].retry_whole);
    assert_eq!(f.answers[1], (5, vec![], 0));
    assert!(f.names.is_empty());
}

#[test]
fn files_go_to_lanes_by_id_and_metadata_to_lane_zero() {
    let mut rx = Receiver::new(Mode::Write, 4);
    let p = rp("f");
    rx.handle(Input::Begin {
        id: 6,
        path: &p,
        size: 1,
        delta: false,
    })
    .unwrap();
    assert_eq!(rx.poll_effect(), Some(Effect::Forward { lane: 2 }));
    rx.handle(Input::Meta).unwrap();
    assert_eq!(rx.poll_effect(), Some(Effect::Forward { lane: 0 }));
}
