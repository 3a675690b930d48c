//! API keys: every route but the two health checks wants `Authorization: Bearer <key>`, checked
//! in constant time against a primary and a secondary key. Two keys let a key be rotated
//! without downtime: make the new key secondary, move clients to it, then make it primary.
//! Keys come from `--keys-file FILE` (`primary[,secondary]`, re-read on SIGHUP), else
//! `KILN_SERVE_KEYS`, else one is generated and printed once at start.

use std::path::{Path, PathBuf};
use std::sync::RwLock;

use axum::Json;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use crate::App;

/// The environment variable holding `primary[,secondary]`.
pub const KEYS_VAR: &str = "KILN_SERVE_KEYS";
/// The shortest key accepted.
pub const MIN_KEY_LEN: usize = 16;

/// The keys a request may present.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    /// The key clients use.
    pub primary: String,
    /// The key being rotated in or out, if any.
    pub secondary: Option<String>,
}

impl Keys {
    /// Parses `primary[,secondary]` (a newline also separates them), as read from `source`.
    pub fn parse(text: &str, source: &str) -> Result<Self, String> {
        let keys: Vec<&str> = text
            .split([',', '\n'])
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .collect();
        let (primary, secondary) = match keys.as_slice() {
            [p] => (*p, None),
            [p, s] => (*p, Some(*s)),
            _ => {
                return Err(format!(
                    "{source} holds {} keys; expected primary[,secondary]",
                    keys.len()
                ));
            }
        };
        for key in std::iter::once(primary).chain(secondary) {
            if key.len() < MIN_KEY_LEN || !key.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(format!(
                    "{source}: a key must be at least {MIN_KEY_LEN} printable characters without \
                     spaces (one has {} characters)",
                    key.chars().count()
                ));
            }
        }
        Ok(Self {
            primary: primary.to_string(),
            secondary: secondary.map(str::to_string),
        })
    }

    /// Reads `primary[,secondary]` from `path`.
    pub fn read(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read --keys-file {}: {e}", path.display()))?;
        Self::parse(&text, &format!("--keys-file {}", path.display()))
    }

    /// A new random primary key: 32 bytes from the operating system's generator, in hex.
    pub fn generate() -> Self {
        let bytes: [u8; 32] = rand::random();
        Self {
            primary: bytes.iter().map(|b| format!("{b:02x}")).collect(),
            secondary: None,
        }
    }

    fn accepts(&self, presented: &str) -> bool {
        // Both comparisons always run, so the time taken says nothing about which matched.
        let primary = same(presented, &self.primary);
        let secondary = self
            .secondary
            .as_deref()
            .is_some_and(|s| same(presented, s));
        primary | secondary
    }
}

/// The server's keys: none (`--no-auth`), or keys that SIGHUP may reload from a file.
pub struct Auth {
    keys: RwLock<Option<Keys>>,
    file: Option<PathBuf>,
}

impl Auth {
    /// Checks requests against `keys`; `file`, when given, is re-read by [`Auth::reload`].
    pub fn new(keys: Option<Keys>, file: Option<PathBuf>) -> Self {
        Self {
            keys: RwLock::new(keys),
            file,
        }
    }

    /// Re-reads the keys file; on error the keys in use stay. Returns what happened, for the
    /// log.
    pub fn reload(&self) -> Result<String, String> {
        let Some(file) = &self.file else {
            return Err("SIGHUP: no --keys-file to reload keys from; keys unchanged".into());
        };
        let keys = Keys::read(file).map_err(|e| format!("{e}; keys unchanged"))?;
        let both = if keys.secondary.is_some() {
            "primary and secondary keys"
        } else {
            "primary key"
        };
        *self.keys.write().expect("keys lock") = Some(keys);
        Ok(format!(
            "SIGHUP: reloaded the {both} from {}",
            file.display()
        ))
    }

    fn allows(&self, headers: &HeaderMap) -> Result<(), &'static str> {
        let keys = self.keys.read().expect("keys lock");
        let Some(keys) = keys.as_ref() else {
            return Ok(());
        };
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                // The scheme's name is case-insensitive (RFC 7235).
                let (scheme, key) = v.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then_some(key)
            })
            .ok_or("this kiln serve needs a key: send 'Authorization: Bearer <key>'")?;
        if keys.accepts(presented.trim()) {
            Ok(())
        } else {
            Err("the key sent in 'Authorization: Bearer' is not this server's")
        }
    }
}

/// Lets a request through when it carries a key, or goes to a health check.
pub async fn require_key(
    State(app): State<std::sync::Arc<App>>,
    request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path();
    if path == "/v2/health/live" || path == "/v2/health/ready" {
        return next.run(request).await;
    }
    match app.auth.allows(request.headers()) {
        Ok(()) => next.run(request).await,
        Err(why) => (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            Json(serde_json::json!({ "error": why })),
        )
            .into_response(),
    }
}

/// Whether `a` equals `b`, in a time that says nothing about either: their SHA-256 digests
/// (always 32 bytes) are compared without stopping at the first difference.
fn same(a: &str, b: &str) -> bool {
    let (a, b) = (Sha256::digest(a.as_bytes()), Sha256::digest(b.as_bytes()));
    let diff = a.iter().zip(b.iter()).fold(0u8, |d, (x, y)| d | (x ^ y));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_one_or_two_keys_and_refuses_weak_ones() {
        let k = Keys::parse("aaaaaaaaaaaaaaaa, bbbbbbbbbbbbbbbb\n", "x").unwrap();
        assert_eq!(k.secondary.as_deref(), Some("bbbbbbbbbbbbbbbb"));
        assert!(k.accepts("aaaaaaaaaaaaaaaa") && k.accepts("bbbbbbbbbbbbbbbb"));
        assert!(!k.accepts("aaaaaaaaaaaaaaa") && !k.accepts(""));
        assert!(
            Keys::parse("short", "KILN_SERVE_KEYS")
                .unwrap_err()
                .contains("KILN_SERVE_KEYS")
        );
        assert!(Keys::parse("", "x").unwrap_err().contains("0 keys"));
        assert!(Keys::parse("a,b,c", "x").unwrap_err().contains("3 keys"));
        assert_eq!(Keys::generate().primary.len(), 64);
    }
}
