//! The bytes on kiln's sockets: control frames (`kind`, length, payload), the hello every
//! connection opens with, and the token comparison.

use std::io::{self, Read, Write};

/// First bytes of every kiln connection.
pub const MAGIC: &[u8; 8] = b"KILNDST1";

/// A control-channel message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// I am alive.
    Heartbeat,
    /// The job failed; the payload says why (naming the lost rank).
    Abort(String),
    /// I finished cleanly; the end of this connection is not a failure.
    Goodbye,
    /// Rank 0 to a worker: every rank's host and ring address.
    Table(Vec<Member>),
}

/// One worker, as rank 0 tells the others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Host name the worker reported.
    pub host: String,
    /// Address its ring listener accepts on.
    pub ring_addr: String,
}

/// What a connecting worker says first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// The job token.
    pub token: String,
    /// Sender's rank.
    pub rank: u32,
    /// Sender's idea of the world size.
    pub world_size: u32,
    /// Sender's host name.
    pub host: String,
    /// Port of the sender's ring listener.
    pub ring_port: u16,
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

/// Reads a little-endian u32 length and that many bytes, refusing lengths over `limit`.
fn get_bytes(r: &mut impl Read, limit: usize) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)?;
    let len = u32::from_le_bytes(len) as usize;
    if len > limit {
        return Err(bad("frame too long"));
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf)?;
    Ok(buf)
}

fn get_str(r: &mut impl Read, limit: usize) -> io::Result<String> {
    String::from_utf8(get_bytes(r, limit)?).map_err(|_| bad("not UTF-8"))
}

impl Hello {
    /// Writes the hello, magic first.
    pub fn write(&self, w: &mut impl Write) -> io::Result<()> {
        let mut out = MAGIC.to_vec();
        put_str(&mut out, &self.token);
        out.extend_from_slice(&self.rank.to_le_bytes());
        out.extend_from_slice(&self.world_size.to_le_bytes());
        put_str(&mut out, &self.host);
        out.extend_from_slice(&self.ring_port.to_le_bytes());
        w.write_all(&out)?;
        w.flush()
    }

    /// Reads a hello; anything that is not one is an error.
    pub fn read(r: &mut impl Read) -> io::Result<Self> {
        let mut magic = [0u8; 8];
        r.read_exact(&mut magic)?;
        if &magic != MAGIC {
            return Err(bad("not a kiln worker"));
        }
        let token = get_str(r, 4096)?;
        let mut word = [0u8; 4];
        r.read_exact(&mut word)?;
        let rank = u32::from_le_bytes(word);
        r.read_exact(&mut word)?;
        let world_size = u32::from_le_bytes(word);
        let host = get_str(r, 4096)?;
        let mut port = [0u8; 2];
        r.read_exact(&mut port)?;
        Ok(Self {
            token,
            rank,
            world_size,
            host,
            ring_port: u16::from_le_bytes(port),
        })
    }
}

impl Frame {
    /// Writes one frame.
    pub fn write(&self, w: &mut impl Write) -> io::Result<()> {
        let mut payload = Vec::new();
        let kind = match self {
            Frame::Heartbeat => 1u8,
            Frame::Abort(reason) => {
                payload.extend_from_slice(reason.as_bytes());
                2
            }
            Frame::Goodbye => 3,
            Frame::Table(members) => {
                payload.extend_from_slice(&(members.len() as u32).to_le_bytes());
                for m in members {
                    put_str(&mut payload, &m.host);
                    put_str(&mut payload, &m.ring_addr);
                }
                4
            }
        };
        let mut out = vec![kind];
        out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        out.extend_from_slice(&payload);
        w.write_all(&out)?;
        w.flush()
    }

    /// Reads one frame.
    pub fn read(r: &mut impl Read) -> io::Result<Self> {
        let mut kind = [0u8; 1];
        r.read_exact(&mut kind)?;
        let payload = get_bytes(r, 1 << 24)?;
        let mut p = payload.as_slice();
        Ok(match kind[0] {
            1 => Frame::Heartbeat,
            2 => Frame::Abort(String::from_utf8_lossy(&payload).into_owned()),
            3 => Frame::Goodbye,
            4 => {
                let mut n = [0u8; 4];
                p.read_exact(&mut n)?;
                let n = u32::from_le_bytes(n) as usize;
                let mut members = Vec::with_capacity(n.min(1 << 16));
                for _ in 0..n {
                    members.push(Member {
                        host: get_str(&mut p, 4096)?,
                        ring_addr: get_str(&mut p, 4096)?,
                    });
                }
                Frame::Table(members)
            }
            _ => return Err(bad("unknown frame")),
        })
    }
}

/// Compares two tokens in time that depends only on their lengths, so a peer cannot find the
/// token byte by byte from how fast it is refused.
pub fn same_token(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut diff = u8::from(a.len() != b.len());
    for i in 0..a.len().max(b.len()) {
        diff |= a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0);
    }
    diff == 0
}

/// This machine's name, for messages that name a lost rank.
pub fn hostname() -> String {
    // The kernel's name (gethostname), not $HOSTNAME, which some shells set and others not.
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .filter(|h| !h.trim().is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()))
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|| "localhost".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_and_hello_round_trip() {
        let frames = [
            Frame::Heartbeat,
            Frame::Goodbye,
            Frame::Abort("lost rank 2 on node7".into()),
            Frame::Table(vec![Member {
                host: "a".into(),
                ring_addr: "10.0.0.1:5000".into(),
            }]),
        ];
        for f in frames {
            let mut buf = Vec::new();
            f.write(&mut buf).unwrap();
            assert_eq!(Frame::read(&mut buf.as_slice()).unwrap(), f);
        }
        let hello = Hello {
            token: "t0k".into(),
            rank: 3,
            world_size: 4,
            host: "node".into(),
            ring_port: 4242,
        };
        let mut buf = Vec::new();
        hello.write(&mut buf).unwrap();
        assert_eq!(Hello::read(&mut buf.as_slice()).unwrap(), hello);
        assert!(Hello::read(&mut &b"GET / HTTP/1.1\r\n"[..]).is_err());
    }

    #[test]
    fn tokens_compare_exactly() {
        assert!(same_token("abc", "abc"));
        assert!(same_token("", ""));
        assert!(!same_token("abc", "abd"));
        assert!(!same_token("abc", "ab"));
        assert!(!same_token("", "a"));
    }
}
