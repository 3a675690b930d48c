//! Every failure a request can meet, answered as `{"error": "..."}` with its HTTP status; the
//! server goes on serving after each.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// A request's failure: its status and a message naming what was wrong.
#[derive(Debug)]
pub struct Fault {
    /// The HTTP status.
    pub status: StatusCode,
    /// What was wrong, and what was expected.
    pub message: String,
}

impl Fault {
    /// A fault with `status`.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    /// 400: the request itself is wrong.
    pub fn bad(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// 404: no such model or route.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }
}

impl IntoResponse for Fault {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(serde_json::json!({ "error": self.message })),
        )
            .into_response()
    }
}
