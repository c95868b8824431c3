use super::*;

/// A listing: (path, content stand-in, is_dir).
fn tree(entries: &[(&str, &str, bool)]) -> Tree {
    Tree::build(
        entries
            .iter()
            .map(|(p, c, d)| (p.as_bytes(), leaf(c.as_bytes()), *d)),
    )
}

/// Runs the walk between `ours` and `theirs` as the shells would (postcard
/// across, as on the wire); returns the differences and the round trips.
fn walk(ours: &Tree, theirs: &Tree) -> (Vec<Differs>, usize) {
    let mut w = Walk::new(ours);
    let mut rounds = 0;
    while !w.done() {
        let qs = w.poll_queries(1000);
        assert!(!qs.is_empty(), "a walk that is not done asks something");
        rounds += 1;
        for q in qs {
            let q: Query = postcard::from_bytes(&postcard::to_stdvec(&q).unwrap()).unwrap();
            let a = theirs.answer(&q);
            let a: Answer = postcard::from_bytes(&postcard::to_stdvec(&a).unwrap()).unwrap();
            w.handle_answer(a).unwrap();
        }
    }
    (w.into_differences(), rounds)
}

fn e(p: &str) -> Differs {
    Differs::Entry(p.as_bytes().to_vec())
}
fn s(p: &str) -> Differs {
    Differs::Subtree(p.as_bytes().to_vec())
}

/// A deep tree: a/b{0..4}/c/f{0..9}.
fn deep() -> Vec<(String, String, bool)> {
    let mut v = vec![("a".to_string(), "dir".to_string(), true)];
    for b in 0..5 {
        v.push((format!("a/b{b}"), "dir".into(), true));
        v.push((format!("a/b{b}/c"), "dir".into(), true));
        for f in 0..10 {
            v.push((format!("a/b{b}/c/f{f}"), format!("x{b}{f}"), false));
        }
    }
    v
}

fn build(v: &[(String, String, bool)]) -> Tree {
    Tree::build(
        v.iter()
            .map(|(p, c, d)| (p.as_bytes(), leaf(c.as_bytes()), *d)),
    )
}

#[test]
fn equal_trees_take_one_round_trip_and_differ_nowhere() {
    let v = deep();
    // The order of a listing does not matter.
    let mut r = v.clone();
    r.reverse();
    let (d, rounds) = walk(&build(&v), &build(&r));
    assert_eq!(d, vec![]);
    assert_eq!(rounds, 1);
    assert_eq!(build(&v).root().tree, build(&r).root().tree);
}

#[test]
fn a_changed_file_deep_down_is_named_alone() {
    let v = deep();
    let mut r = v.clone();
    let i = r.iter().position(|x| x.0 == "a/b3/c/f7").unwrap();
    r[i].1 = "same size, other content".into();
    let (d, rounds) = walk(&build(&v), &build(&r));
    assert_eq!(d, vec![e("a/b3/c"), e("a/b3/c/f7")]);
    // root, a, a/b3, a/b3/c
    assert_eq!(rounds, 4);
}

#[test]
fn a_new_and_a_deleted_file_are_named_from_either_side() {
    let v = deep();
    let mut ours = v.clone();
    ours.push(("a/b1/c/new".into(), "n".into(), false));
    let mut theirs = v.clone();
    theirs.retain(|x| x.0 != "a/b4/c/f0");
    theirs.push(("a/b2/c/gone-here".into(), "g".into(), false));
    let (d, _) = walk(&build(&ours), &build(&theirs));
    assert_eq!(
        d,
        vec![
            e("a/b1/c"),
            e("a/b1/c/new"),
            e("a/b2/c"),
            e("a/b2/c/gone-here"),
            e("a/b4/c"),
            e("a/b4/c/f0"),
        ]
    );
}

#[test]
fn a_directory_on_one_side_only_is_a_whole_subtree() {
    let v = deep();
    let mut ours = v.clone();
    ours.push(("a/b0/extra".into(), "dir".into(), true));
    ours.push(("a/b0/extra/f".into(), "1".into(), false));
    let mut theirs = v.clone();
    theirs.retain(|x| !x.0.starts_with("a/b4"));
    let (d, _) = walk(&build(&ours), &build(&theirs));
    assert_eq!(d, vec![e("a"), e("a/b0"), s("a/b0/extra"), s("a/b4")]);
}

#[test]
fn a_file_replaced_by_a_directory_is_a_subtree() {
    let ours = tree(&[("x", "file", false)]);
    let theirs = tree(&[("x", "dir", true), ("x/y", "1", false)]);
    let (d, _) = walk(&ours, &theirs);
    assert_eq!(d, vec![s("x")]);
    let (d, _) = walk(&theirs, &ours);
    assert_eq!(d, vec![s("x")]);
}

#[test]
fn metadata_of_a_directory_alone_is_its_entry() {
    let ours = tree(&[("d", "dir mode 755", true), ("d/f", "1", false)]);
    let theirs = tree(&[("d", "dir mode 700", true), ("d/f", "1", false)]);
    let (d, _) = walk(&ours, &theirs);
    assert_eq!(d, vec![e("d")]);
}

#[test]
fn an_answer_not_asked_for_is_an_error() {
    let t = tree(&[("d", "dir", true)]);
    let mut w = Walk::new(&t);
    assert!(w
        .handle_answer(Answer {
            path: b"d".to_vec(),
            state: State::Same
        })
        .is_err());
    let _ = w.poll_queries(10);
    let bogus = Answer {
        path: b"zz".to_vec(),
        state: State::Same,
    };
    assert!(matches!(w.handle_answer(bogus), Err(WalkError::Unasked(_))));
}

#[test]
fn queries_come_in_rounds_of_at_most_max() {
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    for i in 0..25 {
        ours.push((format!("d{i}"), "dir".to_string(), true));
        ours.push((format!("d{i}/f"), "a".to_string(), false));
        theirs.push((format!("d{i}"), "dir".to_string(), true));
        theirs.push((format!("d{i}/f"), "b".to_string(), false));
    }
    let (o, t) = (build(&ours), build(&theirs));
    let mut w = Walk::new(&o);
    let root = w.poll_queries(10);
    assert_eq!(root.len(), 1);
    w.handle_answer(t.answer(&root[0])).unwrap();
    let mut sizes = Vec::new();
    while !w.done() {
        let qs = w.poll_queries(10);
        // Nothing new while a round is unanswered.
        assert!(w.poll_queries(10).is_empty());
        sizes.push(qs.len());
        for q in qs {
            w.handle_answer(t.answer(&q)).unwrap();
        }
    }
    assert_eq!(sizes, vec![10, 10, 5]);
    assert_eq!(w.into_differences().len(), 50);
}

#[test]
fn the_answer_size_counts_every_name() {
    let t = tree(&[("d", "dir", true), ("d/abc", "1", false), ("e", "f", false)]);
    let q = Query {
        path: Vec::new(),
        own: [0; 16],
        tree: [0; 16],
    };
    let a = t.answer(&q);
    // subdir d; leaves d and e
    assert_eq!(a.size(), (3, 3));
}

#[test]
fn a_directory_too_large_to_answer_is_a_whole_subtree() {
    let n = MAX_ANSWER / 20 + 1;
    let ours: Vec<(String, String, bool)> = (0..n)
        .map(|i| (format!("big/{i:08}"), "a".to_string(), false))
        .collect();
    let mut theirs = ours.clone();
    theirs[7].1 = "b".into();
    let (o, t) = (build(&ours), build(&theirs));
    let (d, _) = walk(&o, &t);
    assert_eq!(d, vec![s("big")]);
}

/// The digests are part of the protocol: a peer of an earlier release
/// computes them the same way, so how the tree is built may change but
/// not what it yields (values from the first implementation).
#[test]
fn digests_are_those_every_release_computes() {
    let mut v = deep();
    v.push(("z".into(), "top".into(), false));
    v.push(("a/b1/c/f3".into(), "dup name, other content".into(), false));
    v.push(("orphan/x/f".into(), "its parents unlisted".into(), false));
    v.push(("a/e".into(), "dir".into(), true));
    let t = build(&v);
    let hex = |d: &Digest| d.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let r = t.root();
    let got = [
        hex(&r.own),
        hex(&r.tree),
        hex(&t.dir(b"a/b1/c").unwrap().own),
        hex(&t.dir(b"a/e").unwrap().tree),
        hex(&t.dir(b"orphan/x").unwrap().tree),
    ];
    assert_eq!(
        got,
        [
            "23b08992b66ca8b6ecc4aad2941a132a",
            "01ea0eaedea09af8c2d41697e1a3c503",
            "7e430910a7ac41f05d410cc526278cf9",
            "fdb538af87bc7d869da7ec7c68972c88",
            "d8f154e65b8302086870a054943386f1",
        ]
    );
}

#[test]
fn a_tree_built_on_several_threads_is_the_one_built_on_one() {
    // More directories at one depth than are finished on the caller's
    // thread, an entry whose parent is not listed, and a mix of depths.
    let mut v = Vec::new();
    for d in 0..40 {
        v.push((format!("d{d:02}"), "dir".to_string(), true));
        for s in 0..30 {
            v.push((format!("d{d:02}/s{s:02}"), "dir".into(), true));
            for f in 0..3 {
                v.push((
                    format!("d{d:02}/s{s:02}/f{f}"),
                    format!("x{d}{s}{f}"),
                    false,
                ));
            }
        }
        v.push((format!("d{d:02}/top"), format!("t{d}"), false));
    }
    v.push(("unlisted/child".into(), "orphan".into(), false));
    // Parents never listed, of directories never listed either: `u` gets
    // its slot only while the level below it is finished. And 1,801
    // directories at depth 2, which no thread count here divides.
    for i in 0..601 {
        v.push((format!("u/v{i:03}/f"), format!("y{i}"), false));
    }
    v.push(("file".into(), "f".into(), false));
    let one = build(&v);
    for threads in [2, 3, 8] {
        let many = Tree::build_on(
            v.iter()
                .map(|(p, c, d)| (p.as_bytes(), leaf(c.as_bytes()), *d)),
            threads,
        );
        assert_eq!(many.root(), one.root(), "{threads} threads");
        assert_eq!(many.dirs, one.dirs, "{threads} threads");
    }
    let mut changed = v.clone();
    changed[2].1 = "other".into();
    let other = Tree::build_on(
        changed
            .iter()
            .map(|(p, c, d)| (p.as_bytes(), leaf(c.as_bytes()), *d)),
        4,
    );
    assert_ne!(other.root().tree, one.root().tree);
    assert_eq!(changed[2].0, "d00/s00/f0");
    assert!(walk(&other, &one).0.contains(&e("d00/s00/f0")));
}

/// Parts are hashed in pieces of 64 KiB: a directory past that has the
/// digest of one part after the other, as every release computed it.
#[test]
fn a_directory_past_one_hashing_piece_has_the_per_part_digest() {
    let names: Vec<String> = (0..5000)
        .map(|i| format!("file-{i:06}-of-a-large-directory"))
        .collect();
    let mut v: Vec<(String, String, bool)> = vec![("big".into(), "dir".into(), true)];
    for n in &names {
        v.push((format!("big/{n}"), n.clone(), false));
    }
    let t = build(&v);
    let per_part = |parts: &[&[u8]]| {
        let mut h = blake3::Hasher::new();
        for p in parts {
            h.update(&(p.len() as u64).to_le_bytes());
            h.update(p);
        }
        let mut d = [0; 16];
        d.copy_from_slice(&h.finalize().as_bytes()[..16]);
        d
    };
    let leaves: Vec<Digest> = names
        .iter()
        .map(|n| per_part(&[b"leaf", n.as_bytes()]))
        .collect();
    let mut parts: Vec<&[u8]> = vec![b"own"];
    for (n, l) in names.iter().zip(&leaves) {
        parts.push(n.as_bytes());
        parts.push(l);
    }
    assert!(parts.iter().map(|p| p.len() + 8).sum::<usize>() > 4 * (1 << 16));
    let big = t.dir(b"big").unwrap();
    assert_eq!(big.own, per_part(&parts));
    assert_eq!(big.tree, per_part(&[b"tree", &big.own]));
    assert_eq!(leaf(b"x"), per_part(&[b"leaf", b"x"]));
}
