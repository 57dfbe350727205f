//! One mapping from store errors to gRPC status codes.

use tonic::Status;

pub(crate) fn from_store(error: penwarden_store::Error) -> Status {
    match error {
        penwarden_store::Error::NotFound(what) => Status::not_found(format!("{what} not found")),
        penwarden_store::Error::Invalid(why) => Status::invalid_argument(why),
        other => {
            tracing::error!(error = %other, "store error while serving a request");
            Status::internal("internal error; see the server log")
        }
    }
}

/// Parses a required typed id from a request field, naming the field in the error.
pub(crate) fn required<T>(
    field: &str,
    value: &str,
    parse: impl FnOnce(&str) -> Result<T, penwarden_domain::ids::InvalidId>,
) -> Result<T, Status> {
    if value.is_empty() {
        return Err(Status::invalid_argument(format!("{field} is required")));
    }
    parse(value).map_err(|e| Status::invalid_argument(format!("{field}: {e}")))
}

/// Parses an optional typed id (empty means absent).
pub(crate) fn optional<T>(
    field: &str,
    value: &str,
    parse: impl FnOnce(&str) -> Result<T, penwarden_domain::ids::InvalidId>,
) -> Result<Option<T>, Status> {
    if value.is_empty() {
        Ok(None)
    } else {
        required(field, value, parse).map(Some)
    }
}
