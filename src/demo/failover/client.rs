//! The demo's client: a file every 50 ms through the service address, and
//! what it was told.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::lab::Lab;
use crate::demo::nfs;

/// How often, and for how long at most, the client found no service.
#[derive(Default)]
pub(super) struct Outage {
    pub attempts: u64,
    since: Option<Instant>,
    pub longest: Duration,
}

impl Outage {
    fn failed(&mut self) {
        self.attempts += 1;
        self.since.get_or_insert_with(Instant::now);
    }

    fn served(&mut self) {
        if let Some(since) = self.since.take() {
            self.longest = self.longest.max(since.elapsed());
        }
    }
}

/// Every write the client was told succeeded (name → content), and its outage.
#[derive(Default)]
pub(super) struct Record {
    pub written: BTreeMap<String, String>,
    pub outage: Outage,
}

enum Attempt {
    Written(String),
    /// No node served the address (or NFS refused the write).
    NoService,
    /// A node held the address but the write failed: not acknowledged.
    Lost,
}

/// Writes until `stop`; the thread returns its record.
pub(super) fn spawn(
    lab: Arc<Mutex<Lab>>,
    via: Option<nfs::Client>,
    stop: Arc<AtomicBool>,
) -> JoinHandle<Record> {
    std::thread::spawn(move || {
        let mut rec = Record::default();
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let name = format!("w{n:05}.txt");
            match write_one(&lab, via.as_ref(), &name, n) {
                Attempt::Written(content) => {
                    rec.outage.served();
                    rec.written.insert(name, content);
                }
                Attempt::NoService => rec.outage.failed(),
                Attempt::Lost => rec.outage.served(),
            }
            n += 1;
            std::thread::sleep(Duration::from_millis(50));
        }
        rec
    })
}

fn write_one(lab: &Mutex<Lab>, via: Option<&nfs::Client>, name: &str, n: u64) -> Attempt {
    if let Some(c) = via {
        let content = format!("write {n} through NFS at the service address\n");
        return if c.put(name, &content) {
            Attempt::Written(content)
        } else {
            Attempt::NoService
        };
    }
    let target = {
        let l = lab.lock().unwrap_or_else(|p| p.into_inner());
        l.holder().map(|h| (h, l.export(h)))
    };
    let Some((h, dir)) = target else {
        return Attempt::NoService;
    };
    let content = format!("write {n} through the service address, to node {h}\n");
    match std::fs::write(dir.join(name), &content) {
        Ok(()) => Attempt::Written(content),
        Err(_) => Attempt::Lost,
    }
}
