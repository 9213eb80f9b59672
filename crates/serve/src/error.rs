//! Errors of the HTTP API in OpenAI's JSON shape, `{"error": {"message", "type", "param",
//! "code"}}`, and the JSON body extractor that reports malformed or oversized bodies that way
//! (axum's own rejections are plain text).

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::engine::SubmitError;

/// An error answer: an HTTP status and OpenAI's error object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// Human-readable explanation (names the offending field or path).
    pub message: String,
    /// OpenAI's error `type`, e.g. `invalid_request_error`.
    pub kind: &'static str,
    /// The request field at fault, when there is one.
    pub param: Option<String>,
    /// A machine-readable code, e.g. `model_not_found`.
    pub code: Option<&'static str>,
}

impl ApiError {
    /// 400: field `param` is invalid.
    pub fn invalid(param: &str, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param: Some(param.to_string()),
            code: None,
        }
    }

    /// 400: the request as a whole is invalid (malformed JSON and the like).
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param: None,
            code: None,
        }
    }

    /// 404: the request names a model this server does not serve.
    pub fn model_not_found(requested: &str, served: &str) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            message: format!("the model `{requested}` does not exist; this server serves `{served}`"),
            kind: "invalid_request_error",
            param: Some("model".into()),
            code: Some("model_not_found"),
        }
    }

    /// 404: no such route.
    pub fn route_not_found(method: &str, path: &str) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            message: format!("no route for {method} {path}"),
            kind: "invalid_request_error",
            param: None,
            code: Some("not_found"),
        }
    }

    /// 405: the route exists but not for this method.
    pub fn method_not_allowed(method: &str, path: &str) -> Self {
        Self {
            status: StatusCode::METHOD_NOT_ALLOWED,
            message: format!("{path} does not accept {method}"),
            kind: "invalid_request_error",
            param: None,
            code: Some("method_not_allowed"),
        }
    }

    /// 413: the body is larger than `--max-body-bytes`.
    pub fn too_large(limit: usize) -> Self {
        Self {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            message: format!("the request body is larger than the server's limit of {limit} bytes"),
            kind: "invalid_request_error",
            param: None,
            code: Some("request_too_large"),
        }
    }

    /// 500: something failed inside the server.
    pub fn internal(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: message.into(),
            kind: "internal_error",
            param: None,
            code: None,
        }
    }

    /// The JSON body.
    pub fn body(&self) -> serde_json::Value {
        json!({"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}})
    }
}

impl From<SubmitError> for ApiError {
    fn from(e: SubmitError) -> Self {
        let (status, kind, code) = match e {
            SubmitError::QueueFull(_) => (StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", "queue_full"),
            SubmitError::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "service_unavailable", "shutting_down"),
            SubmitError::Superseded => (StatusCode::CONFLICT, "conflict_error", "reload_superseded"),
        };
        Self { status, message: e.to_string(), kind, param: None, code: Some(code) }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body())).into_response()
    }
}

/// A request body type: how it is read from JSON bytes (errors are 400s naming the field).
pub trait JsonBody: Sized {
    /// Parses the body.
    fn from_json(bytes: &[u8]) -> Result<Self, ApiError>;
}

/// A JSON body extractor whose rejections are [`ApiError`]s: 413 past the body limit, 400 with
/// serde's message (naming the field's path) for malformed JSON or a wrong type. The
/// `Content-Type` header is not required.
#[derive(Debug, Clone)]
pub struct ApiJson<T>(pub T);

/// The configured body limit, for the 413 message (set as a request extension by the router).
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub usize);

impl<T: JsonBody, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let limit = req.extensions().get::<BodyLimit>().map_or(0, |l| l.0);
        let bytes = Bytes::from_request(req, state).await.map_err(|r| {
            if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::too_large(limit)
            } else {
                ApiError::bad_request(r.body_text())
            }
        })?;
        T::from_json(&bytes).map(ApiJson)
    }
}

/// Parses a JSON body, mapping serde's error to a 400 whose `param` is the failing field's path.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    match Json::<T>::from_bytes(bytes) {
        Ok(Json(v)) => Ok(v),
        Err(rejection) => {
            let text = rejection.body_text();
            let param = failing_path(&text);
            Err(ApiError { param, ..ApiError::bad_request(text) })
        }
    }
}

/// The field path axum's JSON rejection names (`…target type: temperature: invalid type…`).
fn failing_path(text: &str) -> Option<String> {
    let (_, rest) = text.split_once("target type: ")?;
    let (path, _) = rest.split_once(": ")?;
    let looks_like_path = !path.is_empty()
        && path != "."
        && path.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '[' | ']'));
    looks_like_path.then(|| path.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_has_openai_shape() {
        let e = ApiError::invalid("temperature", "temperature must be >= 0");
        let b = e.body();
        assert_eq!(b["error"]["message"], "temperature must be >= 0");
        assert_eq!(b["error"]["type"], "invalid_request_error");
        assert_eq!(b["error"]["param"], "temperature");
        assert!(b["error"]["code"].is_null());
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
    }

    #[test]
    fn model_not_found_is_404_with_code() {
        let e = ApiError::model_not_found("gpt-4", "tiny");
        assert_eq!(e.status, StatusCode::NOT_FOUND);
        assert_eq!(e.body()["error"]["code"], "model_not_found");
        assert!(e.message.contains("gpt-4") && e.message.contains("tiny"));
    }

    #[test]
    fn submit_errors_map_to_429_and_503() {
        assert_eq!(ApiError::from(SubmitError::QueueFull(3)).status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(ApiError::from(SubmitError::ShuttingDown).status, StatusCode::SERVICE_UNAVAILABLE);
    }

    #[derive(Debug, serde::Deserialize)]
    struct Probe {
        #[allow(dead_code)]
        temperature: Option<f32>,
    }

    #[test]
    fn wrong_type_names_the_field() {
        let e = parse_json::<Probe>(br#"{"temperature": "hot"}"#).unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert_eq!(e.param.as_deref(), Some("temperature"), "{}", e.message);
        assert!(e.message.contains("invalid type"), "{}", e.message);
    }

    #[test]
    fn malformed_json_is_400() {
        let e = parse_json::<Probe>(b"{not json").unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert!(!e.message.is_empty());
    }
}
