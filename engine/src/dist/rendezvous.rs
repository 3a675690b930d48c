//! Forming the job: rank 0 listens on `MASTER_ADDR:MASTER_PORT`, every other rank connects and
//! proves itself with the job token, rank 0 answers with everyone's ring address, and each rank
//! connects to the next one round the ring. The connection to rank 0 stays open as the control
//! channel: heartbeats both ways, and the abort message that names a lost rank.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::dist::env::WorldInfo;
use crate::dist::wire::{Frame, Hello, Member, hostname, same_token};
use crate::error::EngineError;

/// Where the distributed layer reports refused connections and other warnings.
pub type Warn = Arc<dyn Fn(&str) + Send + Sync>;

/// A formed job: this rank's ring links and the shared health state.
pub struct Group {
    /// This rank.
    pub rank: usize,
    /// Number of ranks.
    pub world_size: usize,
    /// Every rank's host name, by rank.
    pub hosts: Vec<String>,
    /// Connection to the next rank round the ring (we send on it).
    pub next: TcpStream,
    /// Connection from the previous rank (we receive on it).
    pub prev: TcpStream,
    /// Failure state, heartbeats and the control channel.
    pub health: Arc<Health>,
}

/// What every rank knows about the job's health. The first failure wins and is what every
/// rank reports.
pub struct Health {
    failure: Mutex<Option<String>>,
    closing: AtomicBool,
    ring: Mutex<Vec<TcpStream>>,
    controls: Mutex<Vec<TcpStream>>,
    /// Silence longer than this is a lost peer.
    pub timeout: Duration,
    warn: Warn,
}

impl Health {
    fn new(timeout: Duration, warn: Warn) -> Self {
        Self {
            failure: Mutex::new(None),
            closing: AtomicBool::new(false),
            ring: Mutex::new(Vec::new()),
            controls: Mutex::new(Vec::new()),
            timeout,
            warn,
        }
    }

    /// Why the job failed, once it has.
    pub fn failure(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Records the failure (the first one wins), tells the peers on the control channel and
    /// cuts the ring so that no rank waits on it.
    pub fn fail(&self, reason: String) {
        {
            let mut failure = self.failure.lock().unwrap_or_else(PoisonError::into_inner);
            if failure.is_some() || self.closing.load(Ordering::SeqCst) {
                return;
            }
            *failure = Some(reason.clone());
        }
        // Cut the ring first: telling the peers may wait on one that stopped reading.
        for s in self
            .ring
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
        self.send_all(&Frame::Abort(reason));
    }

    /// A broken connection: first waits a little (up to 3 s, or the timeout) for the reason a
    /// peer may be sending on the control channel, which names the real cause, and records
    /// `reason` only if none comes.
    pub fn fail_unless_told(&self, reason: String) {
        let until = Instant::now() + self.timeout.min(Duration::from_secs(3));
        while Instant::now() < until {
            if self.failure().is_some() || self.closing.load(Ordering::SeqCst) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.fail(reason);
    }

    /// Marks a clean end: peers closing from now on are not failures.
    pub fn close(&self) {
        if self.closing.swap(true, Ordering::SeqCst) {
            return;
        }
        self.send_all(&Frame::Goodbye);
        for s in self
            .controls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            let _ = s.shutdown(std::net::Shutdown::Write);
        }
    }

    fn send_all(&self, frame: &Frame) {
        for mut s in self
            .controls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            let _ = frame.write(&mut s);
        }
    }

    fn stopped(&self) -> bool {
        self.closing.load(Ordering::SeqCst) || self.failure().is_some()
    }
}

/// How long ranks wait for each other to start.
fn join_deadline(info: &WorldInfo) -> Duration {
    info.timeout
        .saturating_mul(4)
        .clamp(Duration::from_secs(60), Duration::from_secs(24 * 3600))
}

fn dist_error(message: String) -> EngineError {
    EngineError::Distributed(message)
}

/// Joins the job `info` describes; returns once the ring is connected.
pub fn join(info: &WorldInfo, warn: Warn) -> Result<Group, EngineError> {
    if info.world_size < 2 {
        return Err(dist_error(
            "a job of one rank has no ring to join (use dist::Solo)".into(),
        ));
    }
    let deadline = Instant::now() + join_deadline(info);
    let health = Arc::new(Health::new(info.timeout, warn.clone()));
    let ring_listener = TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0))
        .map_err(|e| dist_error(format!("cannot open a ring port: {e}")))?;
    let ring_port = ring_listener
        .local_addr()
        .map_err(|e| dist_error(e.to_string()))?
        .port();
    let (members, master_ip) = if info.rank == 0 {
        (host_rendezvous(info, ring_port, &health, deadline)?, None)
    } else {
        let (members, ip) = join_rendezvous(info, ring_port, &health, deadline)?;
        (members, Some(ip))
    };
    // Heartbeats start before the ring forms, so a slow ring connection is not a silent peer.
    start_heartbeats(&health);
    let n = info.world_size;
    let next = (info.rank + 1) % n;
    let prev = (info.rank + n - 1) % n;
    let next_addr = match (&members[next].ring_addr, master_ip) {
        // ":port" is on rank 0's host, reached at the address the control channel uses.
        (addr, Some(ip)) if addr.starts_with(':') => {
            SocketAddr::new(ip, addr[1..].parse().unwrap_or(0)).to_string()
        }
        (addr, None) if addr.starts_with(':') => format!("127.0.0.1{addr}"),
        (addr, _) => addr.clone(),
    };
    let mut next_stream = connect_until(&next_addr, deadline, Some(&health))
        .map_err(|e| dist_error(format!("cannot reach rank {next} at {next_addr}: {e}")))
        .inspect_err(|e| health.fail(e.to_string()))?;
    Hello {
        token: info.token.clone(),
        rank: info.rank as u32,
        world_size: n as u32,
        host: hostname(),
        ring_port,
    }
    .write(&mut next_stream)
    .map_err(|e| dist_error(format!("rank {next} at {next_addr}: {e}")))
    .inspect_err(|e| health.fail(e.to_string()))?;
    let prev_stream = accept_ring(&ring_listener, info, prev, &warn, &health, deadline)
        .inspect_err(|e| health.fail(e.to_string()))?;
    for s in [&next_stream, &prev_stream] {
        let _ = s.set_nodelay(true);
    }
    {
        let mut ring = health.ring.lock().unwrap_or_else(PoisonError::into_inner);
        for s in [&next_stream, &prev_stream] {
            ring.push(s.try_clone().map_err(|e| dist_error(e.to_string()))?);
        }
    }
    Ok(Group {
        rank: info.rank,
        world_size: n,
        hosts: members.into_iter().map(|m| m.host).collect(),
        next: next_stream,
        prev: prev_stream,
        health,
    })
}

/// Connects to `addr`, trying each address it resolves to (IPv4 first: kiln listens on IPv4),
/// until `deadline` or until the job fails.
fn connect_until(
    addr: &str,
    deadline: Instant,
    health: Option<&Health>,
) -> std::io::Result<TcpStream> {
    loop {
        let attempt = addr.to_socket_addrs().and_then(|addrs| {
            let mut addrs: Vec<SocketAddr> = addrs.collect();
            addrs.sort_by_key(|a| !a.is_ipv4());
            let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "no address");
            for a in addrs {
                match TcpStream::connect_timeout(&a, Duration::from_secs(2)) {
                    Ok(s) => return Ok(s),
                    Err(e) => last = e,
                }
            }
            Err(last)
        });
        if let Some(reason) = health.and_then(Health::failure) {
            return Err(std::io::Error::other(reason));
        }
        match attempt {
            Ok(s) => return Ok(s),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Rank 0: accepts the other ranks, for the whole job (later connections are refused and
/// logged), and sends everyone the table of ring addresses.
fn host_rendezvous(
    info: &WorldInfo,
    ring_port: u16,
    health: &Arc<Health>,
    deadline: Instant,
) -> Result<Vec<Member>, EngineError> {
    let listener = TcpListener::bind((Ipv4Addr::UNSPECIFIED, info.master_port)).map_err(|e| {
        dist_error(format!(
            "rank 0 cannot listen on port {} (MASTER_PORT): {e}",
            info.master_port
        ))
    })?;
    let joined = accept_joins(listener, info, health);
    let n = info.world_size;
    let mut members = vec![
        Member {
            host: hostname(),
            ring_addr: format!(":{ring_port}"),
        };
        n
    ];
    let mut controls: Vec<Option<TcpStream>> = (0..n).map(|_| None).collect();
    let mut missing = n - 1;
    while missing > 0 {
        let left = deadline.saturating_duration_since(Instant::now());
        match joined.recv_timeout(left) {
            Ok((hello, stream, addr)) => {
                let rank = hello.rank as usize;
                let ip: IpAddr = addr.ip();
                // A worker on rank 0's own host may have come over loopback; the others reach
                // it at rank 0's address (":port").
                let ring_addr = if ip.is_loopback() {
                    format!(":{}", hello.ring_port)
                } else {
                    SocketAddr::new(ip, hello.ring_port).to_string()
                };
                members[rank] = Member {
                    host: hello.host,
                    ring_addr,
                };
                controls[rank] = Some(stream);
                missing -= 1;
            }
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {
                let absent: Vec<usize> = (1..n).filter(|r| controls[*r].is_none()).collect();
                return Err(dist_error(format!(
                    "rank(s) {absent:?} did not join within {}s",
                    join_deadline(info).as_secs()
                )));
            }
        }
    }
    for (rank, stream) in controls.into_iter().enumerate().skip(1) {
        let Some(mut stream) = stream else { continue };
        Frame::Table(members.clone())
            .write(&mut stream)
            .map_err(|e| dist_error(format!("lost rank {rank} during rendezvous: {e}")))?;
        watch(health, stream, rank, members[rank].host.clone())?;
    }
    Ok(members)
}

/// Rank 0's acceptor, for the whole job: hands each rank that proves it belongs (the token,
/// a rank and world size that fit, not joined before) to the returned channel; refuses and
/// logs every other connection.
fn accept_joins(
    listener: TcpListener,
    info: &WorldInfo,
    health: &Arc<Health>,
) -> Receiver<(Hello, TcpStream, SocketAddr)> {
    let (joined_tx, joined) = channel::<(Hello, TcpStream, SocketAddr)>();
    let (token, n) = (info.token.clone(), info.world_size);
    let warn = health.warn.clone();
    let acceptor_health = health.clone();
    std::thread::spawn(move || {
        let mut seen = vec![false; n];
        seen[0] = true;
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let peer = stream
                .peer_addr()
                .map_or_else(|_| "?".into(), |a| a.to_string());
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let refuse = |why: String| warn(&format!("refused a connection from {peer}: {why}"));
            let hello = match Hello::read(&mut stream) {
                Ok(h) => h,
                Err(e) => {
                    refuse(format!("no valid hello ({e})"));
                    continue;
                }
            };
            if !same_token(&hello.token, &token) {
                refuse("wrong or missing KILN_JOB_TOKEN".into());
                continue;
            }
            let rank = hello.rank as usize;
            if hello.world_size as usize != n || rank == 0 || rank >= n {
                refuse(format!(
                    "it says rank {rank} of {}, the job is {n} ranks",
                    hello.world_size
                ));
                continue;
            }
            if std::mem::replace(&mut seen[rank], true) {
                refuse(format!("rank {rank} has already joined"));
                continue;
            }
            if acceptor_health.stopped() {
                return;
            }
            let addr = stream.peer_addr().unwrap_or(SocketAddr::from(([0; 4], 0)));
            if joined_tx.send((hello, stream, addr)).is_err() {
                // Rendezvous gave up; later joins are refused as duplicates or ignored.
                continue;
            }
        }
    });
    joined
}

/// Ranks above 0: connect to rank 0, say hello, get the table. Returns the table and rank 0's
/// address as this rank reaches it.
fn join_rendezvous(
    info: &WorldInfo,
    ring_port: u16,
    health: &Arc<Health>,
    deadline: Instant,
) -> Result<(Vec<Member>, IpAddr), EngineError> {
    let master = format!("{}:{}", info.master_addr, info.master_port);
    let mut stream = connect_until(&master, deadline, None).map_err(|e| {
        dist_error(format!(
            "cannot reach rank 0 at {master} (MASTER_ADDR:MASTER_PORT): {e}"
        ))
    })?;
    Hello {
        token: info.token.clone(),
        rank: info.rank as u32,
        world_size: info.world_size as u32,
        host: hostname(),
        ring_port,
    }
    .write(&mut stream)
    .map_err(|e| dist_error(format!("rank 0 at {master}: {e}")))?;
    let _ = stream.set_read_timeout(Some(deadline.saturating_duration_since(Instant::now())));
    let members = match Frame::read(&mut stream) {
        Ok(Frame::Table(members)) if members.len() == info.world_size => members,
        Ok(_) | Err(_) => {
            return Err(dist_error(format!(
                "rank 0 at {master} did not admit rank {}: check that every worker has the \
                 same KILN_JOB_TOKEN and WORLD_SIZE, and that rank {} is not started twice",
                info.rank, info.rank
            )));
        }
    };
    let ip = stream
        .peer_addr()
        .map_err(|e| dist_error(e.to_string()))?
        .ip();
    watch(health, stream, 0, members[0].host.clone())?;
    Ok((members, ip))
}

/// Rank `prev`'s connection to our ring port; anything else is refused and logged.
fn accept_ring(
    listener: &TcpListener,
    info: &WorldInfo,
    prev: usize,
    warn: &Warn,
    health: &Health,
    deadline: Instant,
) -> Result<TcpStream, EngineError> {
    listener
        .set_nonblocking(true)
        .map_err(|e| dist_error(e.to_string()))?;
    loop {
        match listener.accept() {
            Ok((mut stream, peer)) => {
                let _ = stream.set_nonblocking(false);
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                match Hello::read(&mut stream) {
                    Ok(h) if same_token(&h.token, &info.token) && h.rank as usize == prev => {
                        let _ = stream.set_read_timeout(None);
                        return Ok(stream);
                    }
                    Ok(h) if same_token(&h.token, &info.token) => warn(&format!(
                        "refused a ring connection from {peer}: rank {}, expected rank {prev}",
                        h.rank
                    )),
                    Ok(_) => warn(&format!(
                        "refused a ring connection from {peer}: wrong or missing KILN_JOB_TOKEN"
                    )),
                    Err(e) => warn(&format!(
                        "refused a ring connection from {peer}: no valid hello ({e})"
                    )),
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if let Some(reason) = health.failure() {
                    return Err(dist_error(reason));
                }
                if Instant::now() >= deadline {
                    return Err(dist_error(format!(
                        "rank {prev} did not connect to rank {} within {}s",
                        info.rank,
                        join_deadline(info).as_secs()
                    )));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(dist_error(format!("ring port: {e}"))),
        }
    }
}

/// Keeps `stream` as a control channel to `rank`: a thread reads its heartbeats and aborts;
/// silence for the timeout, or the connection closing without a goodbye, loses the rank.
fn watch(
    health: &Arc<Health>,
    stream: TcpStream,
    rank: usize,
    host: String,
) -> Result<(), EngineError> {
    let _ = stream.set_nodelay(true);
    stream
        .set_read_timeout(Some(health.timeout))
        .map_err(|e| dist_error(e.to_string()))?;
    let _ = stream.set_write_timeout(Some(health.timeout));
    health
        .controls
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(stream.try_clone().map_err(|e| dist_error(e.to_string()))?);
    let health = health.clone();
    std::thread::spawn(move || {
        let mut stream = stream;
        loop {
            match Frame::read(&mut stream) {
                Ok(Frame::Heartbeat | Frame::Table(_)) => {}
                Ok(Frame::Goodbye) => return,
                Ok(Frame::Abort(reason)) => {
                    health.fail(reason);
                    return;
                }
                Err(e) => {
                    if !health.closing.load(Ordering::SeqCst) {
                        let what = match e.kind() {
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                                format!("no heartbeat for {}s", health.timeout.as_secs_f64())
                            }
                            _ => "its connection closed (the process died?)".to_string(),
                        };
                        health.fail(format!("lost rank {rank} on {host}: {what}"));
                    }
                    return;
                }
            }
        }
    });
    Ok(())
}

fn start_heartbeats(health: &Arc<Health>) {
    let health = health.clone();
    let every = (health.timeout / 6).clamp(Duration::from_millis(50), Duration::from_secs(5));
    std::thread::spawn(move || {
        while !health.stopped() {
            health.send_all(&Frame::Heartbeat);
            std::thread::sleep(every);
        }
    });
}
