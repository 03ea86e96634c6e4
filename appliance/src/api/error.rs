//! API errors: a status code and `{"error": "..."}` (the type central's API
//! uses too).

pub use outpost_web::ApiError;
