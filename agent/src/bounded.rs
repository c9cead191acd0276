//! Listeners the network cannot wear down. Each connection holds one of a
//! fixed number of permits, and one peer address at most a few of them:
//! past either cap a new connection is closed at once, so idle or slow
//! clients cannot use up the agent's file descriptors (which the control
//! socket, feeds and state saves need too), and one client cannot crowd out
//! the scraper and the kubelet's probes. Each connection also has an idle
//! timeout (no byte read or written) and, optionally, a lifetime, which
//! together end slow-loris clients whatever their pace.
use std::{
    collections::HashMap,
    io,
    net::IpAddr,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use axum::serve::Listener;
use prometheus::IntCounter;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    sync::{OwnedSemaphorePermit, Semaphore},
    time::{Instant, Sleep},
};

/// What one listener allows.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connections open at once; more are closed on accept.
    pub max_connections: usize,
    /// Connections open at once from one peer address (TCP only).
    pub per_peer: usize,
    /// A connection with no byte in either direction for this long is closed.
    pub idle: Duration,
    /// A connection is closed this long after it was accepted, busy or not.
    pub lifetime: Option<Duration>,
}

/// A listener with [`Limits`]; `refused` counts connections closed at the cap.
/// Open connections per peer address.
type PeerCounts = Arc<Mutex<HashMap<IpAddr, usize>>>;

pub struct Bounded<L> {
    inner: L,
    permits: Arc<Semaphore>,
    peers: PeerCounts,
    limits: Limits,
    refused: IntCounter,
}

impl<L> Bounded<L> {
    pub fn new(inner: L, limits: Limits, refused: IntCounter) -> Self {
        Self {
            inner,
            permits: Arc::new(Semaphore::new(limits.max_connections)),
            peers: Arc::default(),
            limits,
            refused,
        }
    }

    /// A slot for one more connection from `peer`, if its cap allows.
    fn peer_slot(&self, peer: Option<IpAddr>) -> Option<PeerSlot> {
        let Some(ip) = peer else {
            return Some(PeerSlot(None));
        };
        let mut peers = crate::sync::lock(&self.peers);
        let n = peers.entry(ip).or_insert(0);
        if *n >= self.limits.per_peer {
            return None;
        }
        *n += 1;
        Some(PeerSlot(Some((ip, self.peers.clone()))))
    }
}

/// The peer address a listener's connections are counted by.
pub trait PeerIp {
    fn peer_ip(&self) -> Option<IpAddr>;
}

impl PeerIp for std::net::SocketAddr {
    fn peer_ip(&self) -> Option<IpAddr> {
        Some(self.ip().to_canonical())
    }
}

impl PeerIp for tokio::net::unix::SocketAddr {
    fn peer_ip(&self) -> Option<IpAddr> {
        None
    }
}

/// One connection's share of its peer's cap, given back on drop.
struct PeerSlot(Option<(IpAddr, PeerCounts)>);

impl Drop for PeerSlot {
    fn drop(&mut self) {
        if let Some((ip, peers)) = &self.0 {
            let mut peers = crate::sync::lock(peers);
            if let Some(n) = peers.get_mut(ip) {
                *n -= 1;
                if *n == 0 {
                    peers.remove(ip);
                }
            }
        }
    }
}

impl<L: Listener> Listener for Bounded<L>
where
    L::Addr: PeerIp,
{
    type Io = Guarded<L::Io>;
    type Addr = L::Addr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            // The inner accept retries its own errors (EMFILE included).
            let (io, addr) = self.inner.accept().await;
            let admitted = self
                .permits
                .clone()
                .try_acquire_owned()
                .ok()
                .and_then(|permit| self.peer_slot(addr.peer_ip()).map(|slot| (permit, slot)));
            if let Some((permit, slot)) = admitted {
                return (Guarded::new(io, (permit, slot), self.limits), addr);
            }
            // Dropping the stream closes it: its descriptor is free at once.
            self.refused.inc();
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// A connection that gives its permit back when it closes, and fails with
/// `TimedOut` once idle too long or past its lifetime.
pub struct Guarded<S> {
    inner: S,
    _permit: (OwnedSemaphorePermit, PeerSlot),
    idle: Duration,
    idle_deadline: Pin<Box<Sleep>>,
    end: Option<Pin<Box<Sleep>>>,
}

impl<S> Guarded<S> {
    fn new(inner: S, permit: (OwnedSemaphorePermit, PeerSlot), limits: Limits) -> Self {
        let now = Instant::now();
        Self {
            inner,
            _permit: permit,
            idle: limits.idle,
            idle_deadline: Box::pin(tokio::time::sleep_until(now + limits.idle)),
            end: limits
                .lifetime
                .map(|l| Box::pin(tokio::time::sleep_until(now + l))),
        }
    }

    /// The stream itself (for peer credentials).
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Err once a deadline has passed; polling registers the task's waker,
    /// so a connection nobody touches is still woken and closed on time.
    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        let lifetime_over = self
            .end
            .as_mut()
            .is_some_and(|e| e.as_mut().poll(cx).is_ready());
        if lifetime_over || self.idle_deadline.as_mut().poll(cx).is_ready() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "connection idle or open too long",
            ));
        }
        Ok(())
    }

    fn progressed(&mut self) {
        self.idle_deadline
            .as_mut()
            .reset(Instant::now() + self.idle);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        match r {
            Poll::Ready(Ok(())) if buf.filled().len() > before => self.progressed(),
            Poll::Ready(_) => {}
            Poll::Pending => self.check(cx)?,
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, data);
        match &r {
            Poll::Ready(Ok(n)) if *n > 0 => self.progressed(),
            Poll::Ready(_) => {}
            Poll::Pending => self.check(cx)?,
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        if r.is_pending() {
            self.check(cx)?;
        }
        r
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn limits(max: usize) -> Limits {
        Limits {
            max_connections: max,
            per_peer: max,
            idle: Duration::from_millis(300),
            lifetime: Some(Duration::from_secs(2)),
        }
    }

    async fn bounded(max: usize) -> (Bounded<tokio::net::TcpListener>, std::net::SocketAddr) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let refused = IntCounter::new("refused", "refused").unwrap();
        (Bounded::new(l, limits(max), refused), addr)
    }

    #[tokio::test]
    async fn connections_past_the_cap_are_closed_and_counted() {
        let (mut l, addr) = bounded(2).await;
        let refused = l.refused.clone();
        let mut clients = Vec::new();
        for _ in 0..3 {
            clients.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        }
        let (_a, _) = l.accept().await;
        let (_b, _) = l.accept().await;
        // The third is accepted and closed inside the next accept, which then
        // waits for a fourth.
        let waiting = tokio::time::timeout(Duration::from_millis(200), l.accept()).await;
        assert!(waiting.is_err(), "no fourth connection");
        assert_eq!(refused.get(), 1);
        let mut buf = [0u8; 1];
        let n = clients[2].read(&mut buf).await.unwrap_or(0);
        assert_eq!(n, 0, "the refused client sees the connection closed");
    }

    #[tokio::test]
    async fn one_peer_holds_at_most_its_share() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let refused = IntCounter::new("refused", "refused").unwrap();
        let mut l = Bounded::new(
            l,
            Limits {
                per_peer: 2,
                ..limits(10)
            },
            refused.clone(),
        );
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        }
        let (a, _) = l.accept().await;
        let (_b, _) = l.accept().await;
        let waiting = tokio::time::timeout(Duration::from_millis(200), l.accept()).await;
        assert!(waiting.is_err());
        assert_eq!(refused.get(), 1, "the third from one address is refused");
        drop(a);
        held.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        let got = tokio::time::timeout(Duration::from_secs(1), l.accept()).await;
        assert!(got.is_ok(), "a closed connection frees its peer's share");
        assert_eq!(crate::sync::lock(&l.peers).get(&addr.ip()), Some(&2));
    }

    #[tokio::test]
    async fn a_closed_connection_gives_its_permit_back() {
        let (mut l, addr) = bounded(1).await;
        let _c1 = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (a, _) = l.accept().await;
        drop(a);
        let _c2 = tokio::net::TcpStream::connect(addr).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(1), l.accept()).await;
        assert!(got.is_ok(), "the freed permit serves the next connection");
        assert_eq!(l.refused.get(), 0);
    }

    #[tokio::test]
    async fn an_idle_connection_times_out() {
        let (mut l, addr) = bounded(1).await;
        let _c = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut a, _) = l.accept().await;
        let started = std::time::Instant::now();
        let mut buf = [0u8; 8];
        let e = a.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= Duration::from_millis(250));
    }

    #[tokio::test]
    async fn a_slow_client_is_cut_at_the_lifetime_even_while_it_trickles() {
        let (mut l, addr) = bounded(1).await;
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut a, _) = l.accept().await;
        let trickle = tokio::spawn(async move {
            for _ in 0..40 {
                if c.write_all(b"x").await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        let started = std::time::Instant::now();
        let mut buf = [0u8; 8];
        let end = loop {
            match a.read(&mut buf).await {
                Ok(0) => break None,
                Ok(_) => {}
                Err(e) => break Some(e.kind()),
            }
        };
        assert_eq!(end, Some(io::ErrorKind::TimedOut));
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(1900) && took < Duration::from_secs(4),
            "{took:?}"
        );
        trickle.abort();
    }
}
