//! Beyond localhost `kiln ui` wants `KILN_UI_TOKEN`: scripts send `Authorization: Bearer
//! <token>`, a browser signs in once on the page (the token becomes an HttpOnly cookie). The
//! comparison takes the same time whatever the token's first wrong byte.

use axum::extract::{Request, State as AxumState};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Form, Json};

use crate::api::State;

const COOKIE: &str = "kiln_ui_token";

/// Lets a request through when no token is set, or when it carries the token; the page itself
/// and the login form stay open (the page asks for the token).
pub async fn require_token(
    AxumState(state): AxumState<State>,
    request: Request,
    next: Next,
) -> Response {
    let Some(token) = state.token.as_deref() else {
        return next.run(request).await;
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
                .map(str::to_string)
        })
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
                    login.token
                ),
            )],
            Redirect::to("/"),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::same;

    #[test]
    fn tokens_compare_whole() {
        assert!(same("abc", "abc"));
        assert!(!same("abc", "abd") && !same("abc", "ab") && !same("", "a"));
    }
}
