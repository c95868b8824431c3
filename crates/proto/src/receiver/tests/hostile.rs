//! Hostile sequences, scripted and seeded: a clear error or a failed file,
//! never a panic, never a change a rule forbids.

use syncd_testkit::rng::Rng;

use super::*;

/// One hostile sequence and what it must come to.
struct Case {
    name: &'static str,
    mode: Mode,
    script: Vec<Req>,
    /// The session ends with this error…
    fatal: Option<ReceiverError>,
    /// …or the barrier after it reports this failure (text, retry whole).
    failure: Option<(&'static str, bool)>,
}

/// Sequences that break a file's accounting: they end the session.
fn file_order_cases() -> Vec<Case> {
    let a = || rp("a");
    let case = |name, mode, script, fatal| Case {
        name,
        mode,
        script,
        fatal: Some(fatal),
        failure: None,
    };
    let w = Mode::Write;
    let not_open = |id, what| ReceiverError::NotOpen { id, what };
    vec![
        case(
            "data for a file never opened",
            w,
            vec![Req::Data(3, vec![1])],
            not_open(3, "FileData"),
        ),
        case(
            "delta for a file never opened",
            w,
            vec![Req::Delta(3, vec![1])],
            not_open(3, "DeltaSegment"),
        ),
        case(
            "end of a file never opened",
            w,
            vec![Req::End(3, [0; 32])],
            not_open(3, "FileEnd"),
        ),
        case(
            "data after the end",
            w,
            [file(1, "a", b"x"), vec![Req::Data(1, vec![2])]].concat(),
            not_open(1, "FileData"),
        ),
        case(
            "a file opened twice",
            w,
            vec![Req::Begin(1, a(), 1, false), Req::Begin(1, a(), 1, false)],
            ReceiverError::AlreadyOpen(1),
        ),
    ]
}

/// Sequences that break a session rule: they end the session.
fn session_cases() -> Vec<Case> {
    let a = || rp("a");
    let case = |name, mode, script, fatal| Case {
        name,
        mode,
        script,
        fatal: Some(fatal),
        failure: None,
    };
    let w = Mode::Write;
    vec![
        case(
            "a second Hello",
            w,
            vec![Req::Hello],
            ReceiverError::DuplicateHello,
        ),
        case(
            "a peer message",
            w,
            vec![Req::Peer],
            ReceiverError::NotHere("a peer message"),
        ),
        case(
            "a commit twice",
            w,
            vec![Req::Commit(2), Req::Commit(2)],
            ReceiverError::CommitReplayed { id: 2, last: 2 },
        ),
        case(
            "commits out of order",
            w,
            vec![Req::Commit(5), Req::Commit(3)],
            ReceiverError::CommitReplayed { id: 3, last: 5 },
        ),
        case(
            "anything after Finish",
            w,
            vec![Req::Finish, Req::Mkdir(a())],
            ReceiverError::AfterFinish("a metadata request"),
        ),
        case(
            "too many files in flight",
            w,
            (0..9).map(|i| Req::Begin(i, a(), 1, false)).collect(),
            ReceiverError::TooManyInFlight(8),
        ),
        case(
            "a change in a verify session",
            Mode::Verify,
            vec![Req::List, Req::Mkdir(a())],
            ReceiverError::VerifyChanges("a metadata request"),
        ),
        case(
            "a file in a verify session",
            Mode::Verify,
            file(1, "a", b"x"),
            ReceiverError::VerifyChanges("FileBegin"),
        ),
        case(
            "a signature in a verify session",
            Mode::Verify,
            vec![Req::Sig(1)],
            ReceiverError::VerifyChanges("SigRequest"),
        ),
        case(
            "a commit on a file stream",
            Mode::FileStream,
            vec![Req::Commit(1)],
            ReceiverError::NotOnFileStream("a barrier"),
        ),
        case(
            "a list on a file stream",
            Mode::FileStream,
            vec![Req::List],
            ReceiverError::NotOnFileStream("List"),
        ),
    ]
}

/// Sequences that fail one file and leave the session going.
fn failing_file_cases() -> Vec<Case> {
    let a = || rp("a");
    let case = |name, script, failure| Case {
        name,
        mode: Mode::Write,
        script,
        fatal: None,
        failure: Some(failure),
    };
    vec![
        case(
            "more data than announced",
            vec![
                Req::Begin(1, a(), 2, false),
                Req::Data(1, vec![1, 2, 3]),
                Req::Data(1, vec![4]),
                Req::End(1, hash(&[1, 2])),
            ],
            ("more data than the announced size", false),
        ),
        case(
            "a length that overflows",
            vec![
                Req::Begin(1, a(), u64::MAX, false),
                Req::Data(1, vec![1]),
                Req::Data(1, vec![1]),
                Req::End(1, [0; 32]),
            ],
            ("content check failed", true),
        ),
        case(
            "a delta for a file announced whole",
            vec![
                Req::Begin(1, a(), 1, false),
                Req::Delta(1, vec![1]),
                Req::End(1, hash(&[1])),
            ],
            ("announced whole", true),
        ),
        case(
            "a delta without a base",
            vec![
                Req::Begin(1, a(), 1, true),
                Req::Delta(1, vec![1]),
                Req::End(1, hash(&[1])),
            ],
            ("base unavailable", true),
        ),
        case(
            "a short file",
            vec![
                Req::Begin(1, a(), 5, false),
                Req::Data(1, vec![1]),
                Req::End(1, hash(&[1])),
            ],
            ("got 1 of 5 bytes", true),
        ),
        case(
            "a wrong hash",
            vec![
                Req::Begin(1, a(), 1, false),
                Req::Data(1, vec![1]),
                Req::End(1, hash(&[2])),
            ],
            ("mismatch", true),
        ),
    ]
}

#[test]
fn hostile_sequences_end_the_session_or_fail_the_file_and_change_nothing() {
    let cases = file_order_cases().into_iter().chain(session_cases());
    for c in cases.chain(failing_file_cases()) {
        let mut f = Fake::new(c.mode);
        let r = f.script(c.script);
        match (&c.fatal, r) {
            (Some(want), Err(got)) => assert_eq!(&got, want, "{}", c.name),
            (None, Ok(())) => {}
            (want, got) => panic!("{}: wanted {want:?}, got {got:?}", c.name),
        }
        if let Some((text, retry_whole)) = c.failure {
            f.send(Req::Barrier(1)).unwrap();
            let fails = &f.answers.last().unwrap().1;
            assert_eq!(fails.len(), 1, "{}: {fails:?}", c.name);
            assert!(
                fails[0].error.contains(text),
                "{}: {}",
                c.name,
                fails[0].error
            );
            assert_eq!(fails[0].retry_whole, retry_whole, "{}", c.name);
        }
        assert!(f.names.is_empty(), "{}: the export changed", c.name);
    }
}

#[test]
fn a_verify_session_lists_and_finishes_without_changing_anything() {
    let mut f = Fake::new(Mode::Verify);
    f.script(vec![Req::List, Req::ListScope, Req::CaughtUp, Req::Finish])
        .unwrap();
    assert!(f.finished && f.names.is_empty() && f.dirs.is_empty());
}

#[test]
fn a_file_stream_is_answered_once_its_file_is_committed() {
    let mut f = Fake::new(Mode::FileStream);
    f.script(file(1, "big", b"content")).unwrap();
    f.rx.handle_stream_end();
    while let Some(e) = f.rx.poll_effect() {
        f.carry(e, &Req::Barrier(0));
    }
    assert_eq!(f.names.get(&rp("big")).unwrap(), b"content");
    assert_eq!(f.answers, vec![(0, vec![], 0)]);
}

#[test]
fn failures_beyond_the_cap_are_counted() {
    let mut f = Fake::new(Mode::Write);
    for id in 0..7 {
        f.script(vec![
            Req::Begin(id, rp("a"), 1, false),
            Req::Data(id, vec![1]),
            Req::End(id, [0; 32]),
        ])
        .unwrap();
    }
    f.send(Req::Barrier(1)).unwrap();
    let (_, kept, dropped) = &f.answers[0];
    assert_eq!((kept.len(), *dropped), (5, 2));
}

/// A request drawn from a small world of ids and names, honest or not.
fn random_requests(rng: &mut Rng, commit: &mut u64) -> Vec<Req> {
    if rng.chance(50) {
        // An honest file, so that commits have something to make durable.
        let (id, name) = (rng.below(10) as u64, ["a", "b", "d/c"][rng.below(3)]);
        let n = rng.below(8);
        return file(id, name, &rng.bytes(n));
    }
    vec![random_request(rng, commit)]
}

fn random_request(rng: &mut Rng, commit: &mut u64) -> Req {
    let names = ["a", "b", "d/c", "e"];
    let id = rng.below(10) as u64;
    let path = rp(names[rng.below(names.len())]);
    let data = |rng: &mut Rng| {
        let n = rng.below(6);
        rng.bytes(n)
    };
    match rng.below(16) {
        0 => Req::Mkdir(path),
        1 => Req::Delete(path),
        2 | 3 => Req::Begin(id, path, rng.below(12) as u64, rng.chance(20)),
        4..=6 => Req::Data(id, data(rng)),
        7 => Req::Delta(id, data(rng)),
        8 => {
            // Usually the right hash of some short content.
            let d = data(rng);
            Req::End(id, if rng.chance(70) { hash(&d) } else { [1; 32] })
        }
        9 => Req::Abort(id),
        10 => Req::Barrier(rng.below(100) as u64),
        11 => {
            // Now and then a replayed id.
            *commit += u64::from(!rng.chance(10)) * (1 + rng.below(3) as u64);
            Req::Commit(*commit)
        }
        12 => Req::Sig(id),
        13 => Req::ListScope,
        14 => Req::List,
        _ => [Req::CaughtUp, Req::Hello, Req::Finish][rng.below(3)].clone(),
    }
}

#[test]
fn seeded_random_sequences_never_panic_and_keep_the_invariants() {
    let (mut committed, mut answered) = (0, 0);
    for seed in 1..400u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let mode = [Mode::Write, Mode::Write, Mode::Verify, Mode::FileStream][rng.below(4)];
        let mut f = Fake::new(mode);
        let mut commit = 0;
        'session: for _ in 0..100 {
            for r in random_requests(&mut rng, &mut commit) {
                let mutating = input(&r).mutating();
                let before = (f.names.clone(), f.dirs.clone());
                if f.send(r).is_err() {
                    break 'session; // the session ends; the shell drops what lanes staged
                }
                if mode == Mode::Verify && mutating {
                    panic!("seed {seed}: a verify session accepted a change");
                }
                if mode == Mode::Verify {
                    assert_eq!((f.names.clone(), f.dirs.clone()), before, "seed {seed}");
                }
            }
        }
        committed += f.names.len();
        answered += f.commits_recorded.len();
    }
    // The runs reached the interesting states, not only early errors.
    assert!(
        committed > 50 && answered > 20,
        "{committed} files, {answered} commits"
    );
}
