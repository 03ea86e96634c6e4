//! Extractors that answer every rejection with an [`ApiError`]
//! (`{"error": ...}`), never axum's plain text: [`Json`], [`Query`],
//! [`Path`] and [`Form`] wrap axum's extractors of the same name and map
//! their rejections to a status and a message naming the field
//! ([`from_rejection`]); [`limit`] checks a page size against its range.
//!
//! Statuses: malformed JSON, a missing field or a wrong type, a bad query
//! string or path parameter are 400 (bad input, like every validation
//! error of the APIs); a missing or wrong `Content-Type` is 415; a body
//! over the limit is 413.

use axum::extract::rejection::{FormRejection, JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, OptionalFromRequest, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::ApiError;

/// axum's wording of its rejections, and ours. The rest of the text
/// (`field: what is wrong at line L column C`) is kept as is.
const REWORDINGS: &[(&str, &str)] = &[
    (
        "Failed to deserialize the JSON body into the target type: ",
        "invalid JSON body: ",
    ),
    (
        "Failed to parse the request body as JSON: ",
        "malformed JSON body: ",
    ),
    (
        "Expected request with `Content-Type: application/json`",
        "send the body as JSON with `Content-Type: application/json`",
    ),
    (
        "Failed to deserialize query string: ",
        "invalid query string: ",
    ),
    ("Failed to deserialize form body: ", "invalid form: "),
    ("Failed to deserialize form: ", "invalid form: "),
    (
        "Form requests must have `Content-Type: application/x-www-form-urlencoded`",
        "send the form with `Content-Type: application/x-www-form-urlencoded`",
    ),
    ("Invalid URL: ", "invalid path parameter: "),
    (
        "Failed to buffer the request body: length limit exceeded",
        "request body too large",
    ),
    (
        "Failed to buffer the request body: ",
        "could not read the request body: ",
    ),
];

/// The message of an axum rejection text, in our words.
pub(crate) fn message_of(text: &str) -> String {
    for (theirs, ours) in REWORDINGS {
        if let Some(rest) = text.strip_prefix(theirs) {
            return format!("{ours}{rest}");
        }
    }
    text.to_string()
}

/// The [`ApiError`] of a rejection's status and text.
pub fn from_rejection(status: StatusCode, text: &str) -> ApiError {
    let message = message_of(text);
    match status {
        // axum answers 422 for well-formed JSON of the wrong shape; for us
        // it is bad input like any other (400).
        StatusCode::UNPROCESSABLE_ENTITY => ApiError::BadRequest(message),
        s => ApiError::from_status(s, message),
    }
}

fn json_rejection(r: JsonRejection) -> ApiError {
    from_rejection(r.status(), &r.body_text())
}

/// A JSON request body (as axum's `Json`) whose rejections are
/// [`ApiError`]s; as a response, the value serialised as JSON.
#[derive(Debug, Clone, Copy, Default)]
#[must_use]
pub struct Json<T>(pub T);

impl<T, S> FromRequest<S> for Json<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match <axum::Json<T> as FromRequest<S>>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(Json(v)),
            Err(r) => Err(json_rejection(r)),
        }
    }
}

/// `Option<Json<T>>`: `None` without a body's `Content-Type`, an error for
/// a body that is not (valid) JSON.
impl<T, S> OptionalFromRequest<S> for Json<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Option<Self>, ApiError> {
        match <axum::Json<T> as OptionalFromRequest<S>>::from_request(req, state).await {
            Ok(v) => Ok(v.map(|axum::Json(v)| Json(v))),
            Err(r) => Err(json_rejection(r)),
        }
    }
}

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

impl<T> std::ops::Deref for Json<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

/// Query parameters (as axum's `Query`) whose rejections are
/// [`ApiError`]s naming the parameter.
#[derive(Debug, Clone, Copy, Default)]
pub struct Query<T>(pub T);

impl<T, S> FromRequestParts<S> for Query<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(Query(v)),
            Err(r) => Err(query_rejection(r)),
        }
    }
}

fn query_rejection(r: QueryRejection) -> ApiError {
    from_rejection(r.status(), &r.body_text())
}

/// Path parameters (as axum's `Path`) whose rejections are [`ApiError`]s.
#[derive(Debug, Clone, Copy, Default)]
pub struct Path<T>(pub T);

impl<T, S> FromRequestParts<S> for Path<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(Path(v)),
            Err(r) => Err(path_rejection(r)),
        }
    }
}

fn path_rejection(r: PathRejection) -> ApiError {
    from_rejection(r.status(), &r.body_text())
}

/// A URL-encoded form body (as axum's `Form`) whose rejections are
/// [`ApiError`]s naming the field.
#[derive(Debug, Clone, Copy, Default)]
pub struct Form<T>(pub T);

impl<T, S> FromRequest<S> for Form<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match <axum::Form<T> as FromRequest<S>>::from_request(req, state).await {
            Ok(axum::Form(v)) => Ok(Form(v)),
            Err(r) => Err(form_rejection(r)),
        }
    }
}

fn form_rejection(r: FormRejection) -> ApiError {
    from_rejection(r.status(), &r.body_text())
}

/// A page size: `default` when absent, else it must be within
/// `1..=max` (a 400 that gives the range otherwise).
pub fn limit(given: Option<usize>, default: usize, max: usize) -> Result<usize, ApiError> {
    match given {
        None => Ok(default),
        Some(n) if (1..=max).contains(&n) => Ok(n),
        Some(n) => Err(ApiError::BadRequest(format!(
            "limit must be between 1 and {max}, not {n}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_limit_outside_its_range_is_a_bad_request_giving_the_range() {
        assert_eq!(limit(None, 100, 1000).unwrap(), 100);
        assert_eq!(limit(Some(1), 100, 1000).unwrap(), 1);
        assert_eq!(limit(Some(1000), 100, 1000).unwrap(), 1000);
        for bad in [0, 1001] {
            let e = limit(Some(bad), 100, 1000).unwrap_err();
            assert!(
                matches!(&e, ApiError::BadRequest(m) if m.contains("between 1 and 1000")),
                "{e:?}"
            );
        }
    }

    #[test]
    fn axum_rejection_texts_are_reworded_and_keep_the_field() {
        let e = from_rejection(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Failed to deserialize the JSON body into the target type: uses: invalid type: string \"x\", expected u32 at line 1 column 12",
        );
        assert!(
            matches!(&e, ApiError::BadRequest(m) if m == "invalid JSON body: uses: invalid type: string \"x\", expected u32 at line 1 column 12"),
            "{e:?}"
        );
        let e = from_rejection(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Expected request with `Content-Type: application/json`",
        );
        assert!(
            matches!(&e, ApiError::UnsupportedMediaType(m) if m.contains("Content-Type: application/json"))
        );
        let e = from_rejection(
            StatusCode::PAYLOAD_TOO_LARGE,
            "Failed to buffer the request body: length limit exceeded",
        );
        assert!(matches!(&e, ApiError::PayloadTooLarge(m) if m == "request body too large"));
    }
}
