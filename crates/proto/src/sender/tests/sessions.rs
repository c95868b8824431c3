//! Scripted and seeded sessions between a Sender and a Receiver.

use super::shell::Shell;
use super::*;
use syncd_testkit::rng::Rng;

fn primary(files: &[(&str, &[u8])]) -> Primary {
    Primary {
        files: files.iter().map(|(p, d)| (rp(p), d.to_vec())).collect(),
        mutations: HashMap::new(),
        chunk: 4,
    }
}

fn sent(as_delta: bool) -> Outcome {
    Outcome::Sent { as_delta }
}

#[test]
fn a_session_sends_small_large_and_delta_files_and_commits_them() {
    let big = vec![7u8; SMALL as usize + 10];
    let mut pri = primary(&[("a", b"hello"), ("empty", b""), ("d", b"new text")]);
    pri.files.insert(rp("big"), big.clone());
    pri.chunk = 64 << 10;
    let mut sb = Standby::default();
    // The standby's old copy of "d": the base of a delta.
    sb.seed(rp("d"), b"old");
    let mut sh = Shell::new(pri, sb);
    sh.hello().unwrap();
    sh.ship(1).unwrap();
    assert_eq!(sh.outcomes[&rp("a")], sent(false));
    assert_eq!(sh.outcomes[&rp("empty")], sent(false));
    assert_eq!(sh.outcomes[&rp("big")], sent(false));
    assert_eq!(sh.outcomes[&rp("d")], sent(true));
    assert_eq!(sh.sb.durable[&rp("big")], big);
    assert_eq!(sh.sb.durable[&rp("d")], b"new text");
    assert_eq!(sh.ctl.acknowledged(), Some(1));
}

#[test]
fn a_failed_content_check_is_resent_whole() {
    let mut sb = Standby::default();
    sb.seed(rp("d"), b"old");
    sb.corrupt = [rp("small"), rp("d")].into_iter().collect();
    let mut sh = Shell::new(primary(&[("small", b"0123456789"), ("d", b"delta me")]), sb);
    sh.hello().unwrap();
    sh.ship(1).unwrap();
    assert_eq!(sh.outcomes[&rp("small")], sent(false));
    // The delta failed its check; the whole resend passed.
    assert_eq!(sh.outcomes[&rp("d")], sent(false));
    assert_eq!(sh.sb.durable[&rp("small")], b"0123456789");
    assert_eq!(sh.sb.durable[&rp("d")], b"delta me");
}

#[test]
fn a_file_that_changes_while_read_is_reread_or_left_for_later() {
    let mut pri = primary(&[
        ("grows", b"12345678"),
        ("rewritten", b"abcdefgh"),
        ("open", b"busy!"),
    ]);
    let q = |m: &[Mutation]| m.iter().copied().collect::<VecDeque<_>>();
    pri.mutations.insert(rp("grows"), q(&[Mutation::Grow]));
    pri.mutations.insert(
        rp("rewritten"),
        q(&[Mutation::Rewrite; REREADS as usize + 1]),
    );
    pri.mutations.insert(rp("open"), q(&[Mutation::Touch]));
    let mut sh = Shell::new(pri, Standby::default());
    sh.hello().unwrap();
    sh.ship(1).unwrap();
    // Reread once it held still: what is committed is what was read last.
    assert_eq!(sh.outcomes[&rp("grows")], sent(false));
    assert_eq!(sh.sb.durable[&rp("grows")], b"12345678more");
    match &sh.outcomes[&rp("rewritten")] {
        Outcome::Failed(f) => assert_eq!(f.error, KEPT_CHANGING),
        o => panic!("{o:?}"),
    }
    assert!(!sh.sb.names.contains_key(&rp("rewritten")));
    // Open for writing elsewhere: a value, retried once closed.
    assert_eq!(sh.outcomes[&rp("open")], Outcome::Busy);
    assert!(!sh.sb.names.contains_key(&rp("open")));
}

#[test]
fn a_large_file_growing_while_read_sends_no_more_than_announced() {
    let mut pri = primary(&[]);
    pri.files.insert(rp("big"), vec![1; SMALL as usize + 1]);
    pri.mutations
        .insert(rp("big"), [Mutation::Grow].into_iter().collect());
    pri.chunk = 256 << 10;
    let mut sh = Shell::new(pri, Standby::default());
    sh.hello().unwrap();
    sh.ship(1).unwrap();
    assert!(matches!(&sh.outcomes[&rp("big")], Outcome::Failed(f) if f.error == KEPT_CHANGING));
    assert!(sh.sb.durable.is_empty());
}

#[test]
fn a_refused_hello_is_an_error_value_with_its_reason() {
    let sb = Standby {
        refuse: Some("export_id \"a\" does not match this standby's \"b\"".into()),
        ..Standby::default()
    };
    let mut sh = Shell::new(primary(&[("a", b"x")]), sb);
    match sh.hello() {
        Err(SenderError::Refused { reason, .. }) => assert!(reason.contains("export_id")),
        r => panic!("{r:?}"),
    }
    assert!(sh.ctl.is_ended());
    assert_eq!(sh.ctl.awaiting(), 0);
}

#[test]
fn a_standby_that_stops_answering_times_out_without_an_acknowledgement() {
    let sb = Standby {
        hang_sync: true,
        ..Standby::default()
    };
    let mut sh = Shell::new(primary(&[("a", b"x")]), sb);
    sh.hello().unwrap();
    let start = sh.now;
    assert_eq!(
        sh.ship(1),
        Err(SenderError::Timeout(Duration::from_secs(60)))
    );
    assert_eq!(
        sh.now - start,
        Duration::from_secs(60),
        "gave up at the deadline"
    );
    assert_eq!(sh.ctl.acknowledged(), None);
}

#[test]
fn the_deadline_counts_from_the_last_reply_and_spares_a_checksum_list() {
    let t = Instant::now();
    let mut tx = Sender::new(SenderConfig::default());
    assert_eq!(tx.poll_timeout(), None, "nothing awaited");
    tx.expect(Expect::List { checksum: false }, t);
    let d = Duration::from_secs(60);
    assert_eq!(tx.poll_timeout(), Some(t + d));
    let later = t + Duration::from_secs(50);
    tx.handle_reply(
        Reply::ListChunk {
            entries: 1,
            bytes: 1,
        },
        later,
    )
    .unwrap();
    assert_eq!(tx.poll_timeout(), Some(later + d));
    assert_eq!(tx.handle_timeout(later + Duration::from_secs(59)), Ok(()));
    tx.handle_reply(Reply::ListEnd, later).unwrap();
    tx.expect(Expect::List { checksum: true }, later);
    assert_eq!(
        tx.poll_timeout(),
        None,
        "hashing the export takes what it takes"
    );
}

#[test]
fn a_manifest_past_the_caps_is_refused() {
    let t = Instant::now();
    let cfg = SenderConfig {
        max_list_entries: 3,
        max_list_bytes: 100,
        ..SenderConfig::default()
    };
    let mut tx = Sender::new(cfg);
    tx.expect(Expect::List { checksum: false }, t);
    tx.handle_reply(
        Reply::ListChunk {
            entries: 3,
            bytes: 10,
        },
        t,
    )
    .unwrap();
    let e = tx
        .handle_reply(
            Reply::ListChunk {
                entries: 1,
                bytes: 1,
            },
            t,
        )
        .unwrap_err();
    assert!(e.to_string().contains("exceeds 3 entries"), "{e}");
    let mut tx = Sender::new(cfg);
    tx.expect(Expect::List { checksum: false }, t);
    assert!(tx
        .handle_reply(
            Reply::ListChunk {
                entries: 1,
                bytes: 101
            },
            t
        )
        .is_err());
}

#[test]
fn barrier_failures_in_chunks_and_counted_ones_add_up() {
    let t = Instant::now();
    let f = |p: &str| crate::model::Failure {
        path: rp(p),
        error: "e".into(),
        retry_whole: false,
    };
    let mut tx = Sender::new(SenderConfig::default());
    tx.expect(Expect::Commit(9), t);
    tx.handle_reply(
        Reply::FailureChunk {
            id: 9,
            failures: vec![f("a")],
        },
        t,
    )
    .unwrap();
    tx.handle_reply(Reply::FailuresDropped { id: 9, count: 5 }, t)
        .unwrap();
    assert_eq!(tx.acknowledged(), None, "not before BarrierDone");
    tx.handle_reply(
        Reply::BarrierDone {
            id: 9,
            failures: vec![f("b")],
        },
        t,
    )
    .unwrap();
    assert_eq!(
        tx.poll_answer(),
        Some(Answer::Committed {
            id: 9,
            failures: vec![f("a"), f("b")]
        })
    );
    assert_eq!(tx.acknowledged(), Some(9));
    assert_eq!(tx.take_failures_dropped(), 5);
    // Another barrier's reply, or one nobody awaits, ends the session.
    tx.expect(Expect::Barrier(10), t);
    let e = tx.handle_reply(
        Reply::BarrierDone {
            id: 11,
            failures: vec![],
        },
        t,
    );
    assert_eq!(
        e,
        Err(SenderError::Unexpected {
            expected: "BarrierDone",
            got: "BarrierDone"
        })
    );
    assert_eq!(tx.handle_reply(Reply::ListEnd, t), Err(SenderError::Ended));
}

/// A session, past its hello, over files "a" and "b" whose standby cuts
/// the connection after taking `n` messages: each cut point in turn.
fn two_files_cut_after(n: usize) -> Shell {
    let files: &[(&str, &[u8])] = &[("a", b"first"), ("b", b"second file")];
    let sb = Standby {
        cut_after: Some(n),
        ..Standby::default()
    };
    let mut sh = Shell::new(primary(files), sb);
    sh.hello().unwrap();
    sh
}

#[test]
fn a_connection_lost_mid_batch_acknowledges_nothing_uncommitted() {
    // Every cut point of a two-batch session.
    let mut n = 0;
    loop {
        n += 1;
        let mut sh = two_files_cut_after(n);
        let first = sh.ship(1);
        if first.is_ok() {
            sh.pri.files.insert(rp("a"), b"changed".to_vec());
        }
        let second = first.and_then(|_| sh.ship(2));
        match (&second, sh.ctl.acknowledged()) {
            (Ok(()), Some(2)) => break,
            // The standby may have committed what it could not
            // acknowledge (the reply was lost), never the other way round:
            // `ship` checks every acknowledged file is durable.
            (Err(_), None) => assert!(sh
                .sb
                .durable
                .get(&rp("b"))
                .is_none_or(|d| d == b"second file")),
            (Err(_), Some(1)) => {
                let a = &sh.sb.durable[&rp("a")];
                assert!(a == b"first" || a == b"changed", "cut after {n}");
            }
            r => panic!("cut after {n}: {r:?}"),
        }
        assert!(sh.ctl.is_ended());
    }
    assert!(n > 10);
}

#[test]
fn seeded_sessions_keep_the_invariants() {
    let muts = [Mutation::Grow, Mutation::Rewrite, Mutation::Touch];
    for seed in 1..300u64 {
        let mut r = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let mut pri = primary(&[]);
        pri.chunk = 1 + r.below(8);
        let mut sb = Standby::default();
        for i in 0..1 + r.below(6) {
            let p = rp(&format!("f{i}"));
            let len = r.below(30);
            pri.files.insert(p.clone(), r.bytes(len));
            if r.chance(40) {
                let n = r.below(10);
                sb.seed(p.clone(), &r.bytes(n));
            }
            if r.chance(30) {
                let q = (0..1 + r.below(5)).map(|_| muts[r.below(3)]).collect();
                pri.mutations.insert(p.clone(), q);
            }
            if r.chance(20) {
                sb.corrupt.insert(p);
            }
        }
        if r.chance(30) {
            sb.cut_after = Some(1 + r.below(60));
        }
        sb.hang_sync = r.chance(5);
        let corrupt = sb.corrupt.clone();
        let mut sh = Shell::new(pri, sb);
        sh.deltas = r.chance(70);
        sh.hello().unwrap();
        // `ship` checks that an acknowledgement means durable as read.
        let res = sh.ship(seed);
        assert_eq!(
            res.is_ok(),
            sh.ctl.acknowledged() == Some(seed),
            "seed {seed}"
        );
        if res.is_err() {
            continue;
        }
        for (p, o) in &sh.outcomes {
            let m = sh.mutated.get(p).cloned().unwrap_or_default();
            match o {
                Outcome::Sent { .. } | Outcome::Vanished => {}
                Outcome::Busy => assert!(m.contains(&Mutation::Touch), "seed {seed}: {p}"),
                // Only a file that changed under the reader, or a check
                // that failed twice, is left failed.
                Outcome::Failed(_) => {
                    assert!(!m.is_empty() || corrupt.contains(p), "seed {seed}: {p}")
                }
            }
        }
    }
}

/// Pipelined commits: batch 2 is listed and sent while commit 1 is still
/// awaited. Its answer comes first (the standby takes requests in order),
/// each acknowledgement means durable with what its batch read, and the
/// later write of the same path is the one that stays.
#[test]
fn pipelined_commits_are_answered_in_order_and_a_later_write_lands_last() {
    let mut sh = Shell::new(
        primary(&[("a", b"first"), ("b", b"bee")]),
        Standby::default(),
    );
    // Small files on the control stream: batch 2 waits for its barrier.
    sh.deltas = false;
    sh.hello().unwrap();
    sh.ship_pipelined(1).unwrap();
    assert_eq!(sh.ctl.acknowledged(), None, "not before its answer");
    sh.pri.files.insert(rp("a"), b"second".to_vec());
    sh.pri.files.remove(&rp("b"));
    sh.ship_pipelined(2).unwrap();
    // Commit 1's answer arrived before batch 2's barrier's.
    assert_eq!(sh.acked, [1]);
    assert_eq!(sh.ctl.awaiting(), 1, "commit 2 in flight");
    sh.await_commits().unwrap();
    assert_eq!(sh.acked, [1, 2]);
    assert_eq!(sh.ctl.acknowledged(), Some(2));
    assert_eq!(sh.sb.durable[&rp("a")], b"second");
    assert_eq!(sh.sb.names[&rp("a")], b"second");
}

/// Every cut point of a session with two batches in flight: what is
/// acknowledged is durable as read (checked at each answer), answers are
/// taken in order, and a lost session acknowledges nothing more.
#[test]
fn a_connection_lost_with_two_commits_in_flight_acknowledges_only_what_is_durable() {
    let mut n = 0;
    loop {
        n += 1;
        let mut sh = two_files_cut_after(n);
        let r = sh.ship_pipelined(1).and_then(|()| {
            sh.pri.files.insert(rp("a"), b"changed".to_vec());
            sh.ship_pipelined(2)
        });
        let r = r.and_then(|()| sh.await_commits());
        let want: &[u64] = match sh.ctl.acknowledged() {
            None => &[],
            Some(1) => &[1],
            Some(2) => &[1, 2],
            a => panic!("cut after {n}: {a:?}"),
        };
        assert_eq!(sh.acked, want, "cut after {n}");
        if r.is_ok() {
            assert_eq!(sh.acked, [1, 2]);
            break;
        }
        assert!(sh.ctl.is_ended(), "cut after {n}");
    }
    assert!(n > 10);
}
