//! The hot path allocates nothing per request: a counting global allocator
//! watches the proxy's worker thread while a keep-alive client sends GETs
//! and POSTs with Content-Length through it to one backend. Every other
//! thread (this test, the backend, the client) is not counted.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};

use syncd_proxy::config::Config;
use syncd_proxy::reload::App;
use syncd_proxy::workers::Workers;

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// Set on the proxy's worker thread only.
    static WATCHED: Cell<bool> = const { Cell::new(false) };
}

fn count() {
    if WATCHED.try_with(Cell::get).unwrap_or(false) {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
    }
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Read one HTTP/1.1 message (head, then a Content-Length body) from `s`;
/// returns the head and the body, or `None` at end of stream.
fn read_message(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<(String, Vec<u8>)> {
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let len = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .map_or(0, |(_, v)| v.trim().parse::<usize>().unwrap());
    while buf.len() < end + len {
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = buf[end..end + len].to_vec();
    buf.drain(..end + len);
    Some((head, body))
}

/// A keep-alive backend answering every request with `hello`.
fn backend() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                while read_message(&mut s, &mut buf).is_some() {
                    let r = b"HTTP/1.1 200 OK\r\nServer: t\r\nContent-Length: 5\r\n\r\nhello";
                    if s.write_all(r).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// `n` requests on one connection, alternating GET and POST.
fn requests(c: &mut TcpStream, buf: &mut Vec<u8>, n: usize) {
    for i in 0..n {
        let req: &[u8] = if i % 2 == 0 {
            b"GET /a?b=c HTTP/1.1\r\nHost: x\r\nUser-Agent: t\r\nAccept: */*\r\n\r\n"
        } else {
            b"POST /form HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 11\r\n\r\nhello world"
        };
        c.write_all(req).unwrap();
        let (head, body) = read_message(c, buf).expect("a response");
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert_eq!(body, b"hello");
    }
}

#[test]
fn proxied_requests_allocate_nothing_on_the_worker() {
    let backend = backend();
    let port = syncd_testkit::port::free_port();
    let cfg = Config::parse(&format!(
        "[[listener]]\nlisten = \"127.0.0.1:{port}\"\nupstream = \"web\"\n\
         [[upstream]]\nname = \"web\"\nkeepalive = 8\n\
         [[upstream.server]]\naddr = \"{backend}\"\n"
    ))
    .unwrap();
    let workers = Workers::start(1).unwrap();
    let handles = workers.handles();
    let (tx, rx) = std::sync::mpsc::channel();
    handles[0].spawn(async move {
        WATCHED.with(|w| w.set(true));
        let _ = tx.send(());
    });
    rx.recv().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _app = rt.block_on(async { App::start(cfg, handles).unwrap() });

    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_nodelay(true).unwrap();
    let mut buf = Vec::new();
    // warm up: buffers, the keep-alive pool, the runtime's own structures
    requests(&mut c, &mut buf, 200);
    let before = ALLOCS.load(Ordering::Relaxed);
    const N: usize = 2000;
    requests(&mut c, &mut buf, N);
    let allocs = ALLOCS.load(Ordering::Relaxed) - before;
    eprintln!("{allocs} allocations on the worker for {N} requests");
    // a stray one (a runtime structure growing) is tolerated; one per
    // request is not
    assert!(
        allocs < (N / 100) as u64,
        "{allocs} allocations on the worker for {N} proxied requests"
    );
}
