//! The test's primary shell: reads files out of [`Primary`] with one reader
//! for every send path, and does what the Sender, its `FileJob`s and
//! `Reading`s say.

use super::*;

/// How a session ended, per file.
pub(super) struct Shell {
    pub pri: Primary,
    pub sb: Standby,
    pub now: Instant,
    pub cfg: SenderConfig,
    pub ctl: Sender,
    /// Offer deltas for files the standby has.
    pub deltas: bool,
    next_id: u64,
    pub outcomes: BTreeMap<RelPath, Outcome>,
    /// The content each sent file was read with, until its batch is acknowledged.
    read: BTreeMap<RelPath, Vec<u8>>,
    /// Mutations that happened, per file.
    pub mutated: HashMap<RelPath, Vec<Mutation>>,
    /// Commits sent and not yet answered, with what their batch read.
    in_flight: VecDeque<(u64, BTreeMap<RelPath, Vec<u8>>)>,
    /// Commits answered, in the order their answers came.
    pub acked: Vec<u64>,
}

impl Shell {
    pub fn new(pri: Primary, sb: Standby) -> Shell {
        let cfg = SenderConfig {
            reply_deadline: Some(Duration::from_secs(60)),
            ..SenderConfig::default()
        };
        Shell {
            pri,
            sb,
            now: Instant::now(),
            cfg,
            ctl: Sender::new(cfg),
            deltas: true,
            next_id: 0,
            outcomes: BTreeMap::new(),
            read: BTreeMap::new(),
            mutated: HashMap::new(),
            in_flight: VecDeque::new(),
            acked: Vec::new(),
        }
    }

    pub fn hello(&mut self) -> Result<(), SenderError> {
        self.sb.open(Mode::Write);
        self.ctl.expect(Expect::Welcome, self.now);
        let r = self.sb.hello();
        self.ctl.handle_reply(r, self.now)?;
        match self.ctl.poll_answer() {
            Some(Answer::Welcome { .. }) => Ok(()),
            a => panic!("{a:?}"),
        }
    }

    fn put(&mut self, s: usize, m: Msg) -> Result<(), SenderError> {
        match self.sb.take(s, &m) {
            true => Ok(()),
            false => Err(SenderError::Ended),
        }
    }

    /// The next answer on stream `s`, waiting on the simulated clock.
    fn answer(
        sb: &mut Standby,
        now: &mut Instant,
        tx: &mut Sender,
        s: usize,
    ) -> Result<Answer, SenderError> {
        loop {
            if let Some(a) = tx.poll_answer() {
                return Ok(a);
            }
            let r = if sb.lost() {
                None
            } else {
                sb.replies.get_mut(&s).and_then(|q| q.pop_front())
            };
            match (r, tx.poll_timeout()) {
                (Some(r), _) => tx.handle_reply(r, *now)?,
                (None, Some(t)) if !sb.lost() => {
                    *now = t;
                    tx.handle_timeout(*now)?;
                }
                _ => {
                    tx.handle_lost();
                    return Err(SenderError::Ended);
                }
            }
        }
    }

    /// One read of `path`, as the shell's one source reader does it.
    fn read(&mut self, s: usize, path: &RelPath, e: Encoding) -> Result<ReadEnd, SenderError> {
        self.next_id += 1;
        let id = self.next_id;
        let Some(size) = self.pri.files.get(path).map(|d| d.len() as u64) else {
            return Ok(ReadEnd::Vanished);
        };
        let (mut r, begin) = Reading::begin(id, size, e);
        let FileMsg::Begin { size, .. } = begin else {
            unreachable!()
        };
        self.put(s, Msg::Begin(id, path.clone(), size, e == Encoding::Delta))?;
        let (mut fin, mut mutated, mut got) = (
            Finish {
                changed: false,
                touched: false,
            },
            false,
            Vec::new(),
        );
        loop {
            let cur = &self.pri.files[path];
            let at = got.len();
            let piece = cur[at.min(cur.len())..cur.len().min(at + self.pri.chunk)].to_vec();
            if piece.is_empty() && mutated {
                break;
            }
            if !piece.is_empty() {
                if !r.chunk(piece.len() as u64) {
                    break;
                }
                got.extend_from_slice(&piece);
                let m = match e {
                    Encoding::Whole => Msg::Data(id, piece),
                    Encoding::Delta => Msg::Delta(id, piece),
                };
                self.put(s, m)?;
            }
            if !mutated {
                mutated = true;
                self.mutate(path, &mut fin);
            }
        }
        let (msg, end) = r.finish(fin);
        match msg {
            FileMsg::End { id } => self.put(s, Msg::End(id, hash(&got)))?,
            FileMsg::Abort { id } => self.put(s, Msg::Abort(id))?,
            FileMsg::Begin { .. } => unreachable!(),
        }
        if end == ReadEnd::Sent {
            self.read.insert(path.clone(), got);
        }
        Ok(end)
    }

    fn mutate(&mut self, path: &RelPath, fin: &mut Finish) {
        let Some(m) = self.pri.mutations.get_mut(path).and_then(|q| q.pop_front()) else {
            return;
        };
        self.mutated.entry(path.clone()).or_default().push(m);
        let d = self.pri.files.get_mut(path).unwrap();
        match m {
            Mutation::Grow => d.extend_from_slice(b"more"),
            Mutation::Rewrite => match d.first_mut() {
                Some(b) => *b ^= 0x55,
                None => d.push(0),
            },
            Mutation::Touch => fin.touched = true,
        }
        fin.changed |= m != Mutation::Touch;
    }

    fn done(&mut self, job: FileJob, o: Outcome) {
        if !matches!(o, Outcome::Sent { .. }) {
            self.read.remove(job.path());
        }
        self.outcomes.insert(job.path().clone(), o);
    }

    /// One file on the control stream, until it waits for a barrier or ends.
    fn control(
        &mut self,
        mut job: FileJob,
        mut next: Next,
        pending: &mut Vec<FileJob>,
    ) -> Result<(), SenderError> {
        loop {
            next = match next {
                Next::Send(e) => {
                    let end = self.read(0, &job.path().clone(), e)?;
                    job.handle_read(end)
                }
                Next::Verdict => {
                    pending.push(job);
                    return Ok(());
                }
                Next::Done(o) => {
                    self.done(job, o);
                    return Ok(());
                }
            }
        }
    }

    /// One file on its own streams, until its outcome.
    fn stream(&mut self, mut job: FileJob, mut next: Next) -> Result<(), SenderError> {
        let mut s = self.sb.open(Mode::FileStream);
        let mut tx = Sender::new(self.cfg);
        let mut asked = false;
        let path = job.path().clone();
        loop {
            next = match next {
                Next::Send(Encoding::Delta) if !asked => {
                    asked = true;
                    self.put(s, Msg::Sig(1, path.clone()))?;
                    tx.expect(Expect::Signature, self.now);
                    match Self::answer(&mut self.sb, &mut self.now, &mut tx, s)? {
                        Answer::Signature(have) => job.handle_signature(have),
                        a => panic!("{a:?}"),
                    }
                }
                Next::Send(e) => {
                    let end = self.read(s, &path, e)?;
                    job.handle_read(end)
                }
                Next::Verdict => {
                    self.put(s, Msg::StreamEnd)?;
                    tx.expect(Expect::StreamEnd, self.now);
                    let Answer::BarrierDone { failures, .. } =
                        Self::answer(&mut self.sb, &mut self.now, &mut tx, s)?
                    else {
                        panic!("no verdict")
                    };
                    let next = job.handle_verdict(failures.into_iter().next());
                    if matches!(next, Next::Send(_)) {
                        (s, tx, asked) =
                            (self.sb.open(Mode::FileStream), Sender::new(self.cfg), false);
                    }
                    next
                }
                Next::Done(o) => {
                    self.done(job, o);
                    return Ok(());
                }
            }
        }
    }

    /// Sends every primary file, then commits batch `commit`. Once it is
    /// acknowledged, every file sent is durable on the standby as read.
    pub fn ship(&mut self, commit: u64) -> Result<(), SenderError> {
        let r = self.ship_inner(commit);
        if r.is_err() {
            self.ctl.handle_lost();
        }
        r
    }

    /// Sends every primary file and commit `commit` without waiting for
    /// its answer (pipelined: the next batch may follow at once).
    pub fn ship_pipelined(&mut self, commit: u64) -> Result<(), SenderError> {
        let r = self.send_batch(commit);
        if r.is_err() {
            self.ctl.handle_lost();
        }
        r
    }

    /// Waits for every commit in flight to be answered.
    pub fn await_commits(&mut self) -> Result<(), SenderError> {
        while !self.in_flight.is_empty() {
            let a = Self::answer(&mut self.sb, &mut self.now, &mut self.ctl, 0)?;
            self.committed(a);
        }
        Ok(())
    }

    /// A commit's answer: the oldest in flight, and durable with what its
    /// batch read.
    fn committed(&mut self, a: Answer) {
        let Answer::Committed { id, .. } = a else {
            panic!("expected a commit's answer, got {a:?}")
        };
        let (want, read) = self.in_flight.pop_front().expect("no commit in flight");
        assert_eq!(id, want, "commits answered out of order");
        assert_eq!(self.ctl.acknowledged(), Some(id));
        self.acked.push(id);
        for (p, d) in read {
            // A batch sent after this one may already have replaced it
            // (the in-memory standby runs ahead of its answers being read).
            let later = self.in_flight.iter().filter_map(|(_, r)| r.get(&p));
            let durable = self.sb.durable.get(&p);
            assert!(
                durable == Some(&d) || later.into_iter().any(|l| durable == Some(l)),
                "{p} acknowledged, not durable"
            );
        }
    }

    fn ship_inner(&mut self, commit: u64) -> Result<(), SenderError> {
        self.send_batch(commit)?;
        self.await_commits()
    }

    fn send_batch(&mut self, commit: u64) -> Result<(), SenderError> {
        let mut pending = Vec::new();
        let paths: Vec<RelPath> = self.pri.files.keys().cloned().collect();
        for path in paths {
            let size = self.pri.files[&path].len() as u64;
            let delta = self.deltas && self.sb.names.contains_key(&path);
            let (job, next) = FileJob::new(path, size, delta);
            match job.route() {
                Route::Control => self.control(job, next, &mut pending)?,
                Route::Stream => self.stream(job, next)?,
            }
        }
        let mut barrier = 0;
        while !pending.is_empty() {
            barrier += 1;
            self.put(0, Msg::Barrier(barrier))?;
            self.ctl.expect(Expect::Barrier(barrier), self.now);
            let mut a = Self::answer(&mut self.sb, &mut self.now, &mut self.ctl, 0)?;
            // The previous batch's commit is answered first.
            while matches!(a, Answer::Committed { .. }) {
                self.committed(a);
                a = Self::answer(&mut self.sb, &mut self.now, &mut self.ctl, 0)?;
            }
            let Answer::BarrierDone { id, failures } = a else {
                panic!("no barrier")
            };
            assert_eq!(id, barrier);
            for mut job in std::mem::take(&mut pending) {
                let f = failures.iter().find(|f| f.path == *job.path()).cloned();
                let next = job.handle_verdict(f);
                self.control(job, next, &mut pending)?;
            }
        }
        self.put(0, Msg::Commit(commit))?;
        self.ctl.expect(Expect::Commit(commit), self.now);
        // Acknowledged (at its answer) means durable, with what was read.
        let read = std::mem::take(&mut self.read);
        self.in_flight.push_back((commit, read));
        Ok(())
    }
}
