//! One mapping from store errors to gRPC status codes.

use tonic::Status;

pub(crate) fn from_store(error: penwarden_store::Error) -> Status {
    match error {
        penwarden_store::Error::NotFound(what) => Status::not_found(shorten(format!("{what} not found"))),
        penwarden_store::Error::Invalid(why) => invalid_argument(why),
        // Busy, locked, a full disk, a lost connection: the same call may succeed later.
        transient if transient.is_transient() => {
            tracing::warn!(error = %transient, "store unavailable while serving a request");
            Status::unavailable("the store is temporarily unavailable; retry later")
        }
        other => {
            tracing::error!(error = %other, "store error while serving a request");
            Status::internal("internal error; see the server log")
        }
    }
}

/// Longest message a client gets back: an error must not echo a huge request field.
const MAX_MESSAGE_CHARS: usize = 200;

/// INVALID_ARGUMENT with a message of at most 200 characters, however long the values it quotes.
pub(crate) fn invalid_argument(message: impl Into<String>) -> Status {
    Status::invalid_argument(shorten(message.into()))
}

fn shorten(message: String) -> String {
    match message.char_indices().nth(MAX_MESSAGE_CHARS) {
        Some((end, _)) => format!("{}… ({} bytes in all)", &message[..end], message.len()),
        None => message,
    }
}

/// Parses a required typed id from a request field, naming the field in the error.
pub(crate) fn required<T>(
    field: &str,
    value: &str,
    parse: impl FnOnce(&str) -> Result<T, penwarden_domain::ids::InvalidId>,
) -> Result<T, Status> {
    if value.is_empty() {
        return Err(invalid_argument(format!("{field} is required")));
    }
    parse(value).map_err(|e| invalid_argument(format!("{field}: {e}")))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_values_are_not_echoed() {
        let huge = "x".repeat(1 << 20);
        let status = required("pen_serial", &huge, penwarden_domain::PenSerial::parse).unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.message().len() < 400, "{} bytes", status.message().len());
        let status = invalid_argument(format!("unknown rule {huge:?}"));
        assert!(status.message().len() < 400 && status.message().ends_with("bytes in all)"), "{}", status.message());
        assert_eq!(invalid_argument("short").message(), "short");
    }

    #[tokio::test]
    async fn a_failing_store_is_unavailable_a_refusing_one_internal() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            penwarden_store::Store::connect(&format!("sqlite:{}", dir.path().join("s.db").display())).await.unwrap();
        store.close().await;
        let pen = penwarden_domain::PenSerial::parse("P1").unwrap();
        let transient = store.pen(&pen).await.unwrap_err();
        assert_eq!(from_store(transient).code(), tonic::Code::Unavailable);
        assert_eq!(from_store(penwarden_store::Error::NotFound("pen P1".into())).code(), tonic::Code::NotFound);
        assert_eq!(from_store(penwarden_store::Error::UnsupportedUrl("x".into())).code(), tonic::Code::Internal);
    }
}
