//! Worker threads, nginx style: one single-threaded tokio runtime per
//! worker, each accepting on its own SO_REUSEPORT socket, so a connection and
//! everything it does (client socket, backend sockets, timers) stays on one
//! thread. Upstream health and failure counts live behind `Arc`s and short
//! locks, so every worker sees the same health; what every request writes
//! (metrics, retry deposits, the config snapshot's reference count, pooled
//! connections) has a slot per worker (`sharded`).

use std::cell::Cell;
use std::io;
use std::thread::JoinHandle;

use tokio::runtime::Handle;
use tokio::sync::oneshot;

thread_local! {
    static WORKER: Cell<usize> = const { Cell::new(0) };
}

/// Index of the worker running the current thread (0 outside workers).
pub fn index() -> usize {
    WORKER.with(|w| w.get())
}

/// Mark the current thread as worker `i` (worker threads at start; tests).
pub fn set_index(i: usize) {
    WORKER.with(|w| w.set(i));
}

pub struct Workers {
    handles: Vec<Handle>,
    threads: Vec<JoinHandle<()>>,
    stops: Vec<oneshot::Sender<()>>,
}

impl Workers {
    /// Start `n` worker threads (at least one).
    pub fn start(n: usize) -> io::Result<Workers> {
        let mut w = Workers {
            handles: Vec::new(),
            threads: Vec::new(),
            stops: Vec::new(),
        };
        for i in 0..n.max(1) {
            let (handle_tx, handle_rx) = std::sync::mpsc::channel();
            let (stop_tx, stop_rx) = oneshot::channel::<()>();
            let thread = std::thread::Builder::new()
                .name(format!("syncd-proxy-w{i}"))
                .spawn(move || {
                    set_index(i);
                    let rt = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(rt) => rt,
                        Err(e) => {
                            let _ = handle_tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = handle_tx.send(Ok(rt.handle().clone()));
                    rt.block_on(async {
                        let _ = stop_rx.await;
                    });
                })?;
            let handle = handle_rx
                .recv()
                .map_err(|_| io::Error::other("worker thread exited during start"))??;
            w.handles.push(handle);
            w.threads.push(thread);
            w.stops.push(stop_tx);
        }
        Ok(w)
    }

    pub fn handles(&self) -> Vec<Handle> {
        self.handles.clone()
    }

    /// Stop the worker runtimes (tasks still running are dropped) and join them.
    pub fn stop(self) {
        for s in self.stops {
            let _ = s.send(());
        }
        for t in self.threads {
            let _ = t.join();
        }
    }
}
