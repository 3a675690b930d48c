//! Beyond localhost `kiln ui` wants `KILN_UI_TOKEN`: scripts send `Authorization: Bearer
//! <token>`, a browser signs in once on the page (the token becomes an HttpOnly cookie). The
//! comparison takes the same time whatever the token's first wrong byte. Without a token (bound
//! to a loopback address) only requests addressed to this machine by name or loopback address
//! are answered, so a web page cannot reach the history by rebinding its own name to 127.0.0.1.

use axum::extract::{Request, State as AxumState};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Form, Json};

use crate::api::State;

const COOKIE: &str = "kiln_ui_token";

/// Lets a request through when it carries the token, or when no token is set and it is
/// addressed to localhost; the page itself and the login form stay open (the page asks for
/// the token).
pub async fn require_token(
    AxumState(state): AxumState<State>,
    request: Request,
    next: Next,
) -> Response {
    let Some(token) = state.token.as_deref() else {
        if addressed_to_loopback(request.headers()) {
            return next.run(request).await;
        }
        return (
            StatusCode::FORBIDDEN,
            Json(serde_json::json!({ "error": "this kiln ui answers requests addressed to localhost, 127.0.0.1 or [::1] only (Host header); to serve other names, bind another address with KILN_UI_TOKEN set" })),
        )
            .into_response();
    };
    let path = request.uri().path();
    if path == "/"
        || path == "/login"
        || presented(request.headers()).is_some_and(|t| same(&t, token))
    {
        return next.run(request).await;
    }
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        Json(serde_json::json!({ "error": "this kiln ui needs its token: send 'Authorization: Bearer <KILN_UI_TOKEN>' or sign in on the page" })),
    )
        .into_response()
}

/// Whether the request's `Host` names this machine: `localhost` or a loopback address, any
/// port (a request without `Host`, HTTP/1.0, is no browser's).
fn addressed_to_loopback(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST) else {
        return true;
    };
    let Ok(host) = host.to_str() else {
        return false;
    };
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or_default(),
        None => host.split(':').next().unwrap_or_default(),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The cookie's value for `token`: hex, so any token survives the cookie syntax.
fn cookie_value(token: &str) -> String {
    token.bytes().map(|b| format!("{b:02x}")).collect()
}

/// The token a request presents: a bearer header or the login cookie.
fn presented(headers: &HeaderMap) -> Option<String> {
    if let Some(v) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        && let Some(t) = v.strip_prefix("Bearer ")
    {
        return Some(t.trim().to_string());
    }
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| {
            kv.trim()
                .strip_prefix(&format!("{COOKIE}="))
                .and_then(from_cookie)
        })
}

/// The token a cookie value holds ([`cookie_value`] undone).
fn from_cookie(hex: &str) -> Option<String> {
    let bytes = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    String::from_utf8(bytes).ok()
}

/// Constant-time equality (over the longer of the two lengths).
pub fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let n = a.len().max(b.len());
    let mut diff = (a.len() != b.len()) as u8;
    for i in 0..n {
        diff |= a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0);
    }
    diff == 0
}

/// The login form's body.
#[derive(serde::Deserialize)]
pub struct Login {
    token: String,
}

/// `POST /login`: a right token becomes the session cookie; a wrong one is 401.
pub async fn login(AxumState(state): AxumState<State>, Form(login): Form<Login>) -> Response {
    match state.token.as_deref() {
        Some(token) if !same(&login.token, token) => (
            StatusCode::UNAUTHORIZED,
            Json(serde_json::json!({ "error": "wrong token" })),
        )
            .into_response(),
        _ => (
            [(
                header::SET_COOKIE,
                format!(
                    "{COOKIE}={}; HttpOnly; SameSite=Strict; Path=/",
                    cookie_value(&login.token)
                ),
            )],
            Redirect::to("/"),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::{cookie_value, from_cookie, same};

    #[test]
    fn tokens_compare_whole() {
        assert!(same("abc", "abc"));
        assert!(!same("abc", "abd") && !same("abc", "ab") && !same("", "a"));
    }

    #[test]
    fn any_token_survives_the_cookie() {
        for token in ["s3cret", "a; b=c, d", "ünï", ""] {
            assert_eq!(from_cookie(&cookie_value(token)).as_deref(), Some(token));
        }
        assert_eq!(from_cookie("zz"), None);
        assert_eq!(from_cookie("abc"), None);
    }
}
