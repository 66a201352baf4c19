//! Load generators for the benchmarks, run from inside a lab namespace.

use std::{
    io::Read as _,
    net::{Ipv4Addr, SocketAddr, TcpListener},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

pub use integration_tests::flood::{flood_origin, Syn};

/// Accepts and closes connections (server closes first) until stopped.
pub struct AcceptServer {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    _accepted: Arc<AtomicU64>,
}

impl AcceptServer {
    pub fn start(listener: TcpListener) -> AcceptServer {
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicU64::new(0));
        let (s, a) = (stop.clone(), accepted.clone());
        let t = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((c, _)) => {
                        a.fetch_add(1, Ordering::Relaxed);
                        drop(c);
                    }
                    Err(_) => std::thread::sleep(Duration::from_micros(200)),
                }
            }
        });
        AcceptServer {
            stop,
            threads: vec![t],
            _accepted: accepted,
        }
    }
}

impl Drop for AcceptServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Opens `rate` connections per second for `secs` from `from` to `to` (connect, wait for the
/// server's FIN, close), spread over `threads` paced threads. Must run in the client's
/// namespace (threads spawned here inherit it). Returns (made, failed).
pub fn connect_paced(from: Ipv4Addr, to: SocketAddr, rate: u64, secs: f64) -> (u64, u64) {
    const THREADS: u64 = 4;
    let per_thread = rate / THREADS;
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            std::thread::spawn(move || {
                let start = Instant::now() + Duration::from_micros(t * 1_000_000 / rate.max(1));
                let total = (per_thread as f64 * secs) as u64;
                let (mut made, mut failed) = (0u64, 0u64);
                for i in 0..total {
                    let due = start + Duration::from_secs_f64(i as f64 / per_thread as f64);
                    let now = Instant::now();
                    if due > now {
                        std::thread::sleep(due - now);
                    }
                    let ok = (|| -> std::io::Result<()> {
                        let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
                        s.bind(&SockAddr::from(SocketAddr::new(from.into(), 0)))?;
                        s.connect_timeout(&to.into(), Duration::from_secs(1))?;
                        let mut stream: std::net::TcpStream = s.into();
                        stream.set_read_timeout(Some(Duration::from_secs(1)))?;
                        let _ = stream.read(&mut [0u8; 1]);
                        Ok(())
                    })();
                    if ok.is_ok() {
                        made += 1;
                    } else {
                        failed += 1;
                    }
                }
                (made, failed)
            })
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().unwrap_or((0, 0)))
        .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
}
