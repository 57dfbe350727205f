//! Pagination shared by the list RPCs: newest first by id, opaque "v1.<id>" page tokens.

use tonic::Status;

use crate::status::invalid_argument;

pub(crate) const DEFAULT_PAGE_SIZE: u32 = 100;
pub(crate) const MAX_PAGE_SIZE: u32 = 1000;

/// The page size to use; 0 means the default.
pub(crate) fn page_size(requested: u32) -> Result<u32, Status> {
    match requested {
        0 => Ok(DEFAULT_PAGE_SIZE),
        size if size > MAX_PAGE_SIZE => Err(invalid_argument(format!("page_size must be at most {MAX_PAGE_SIZE}"))),
        size => Ok(size),
    }
}

/// The id below which the next page starts, from a token this server issued.
pub(crate) fn parse_page_token(token: &str) -> Result<Option<i64>, Status> {
    if token.is_empty() {
        return Ok(None);
    }
    token
        .strip_prefix("v1.")
        .and_then(|id| id.parse::<i64>().ok())
        .map(Some)
        .ok_or_else(|| invalid_argument("page_token is not one this server issued"))
}

/// Trims `rows` (fetched with one extra row) to `page_size` and returns the next page token,
/// empty on the last page.
pub(crate) fn finish_page<T>(rows: &mut Vec<T>, page_size: u32, id: impl Fn(&T) -> i64) -> String {
    if rows.len() > page_size as usize {
        rows.truncate(page_size as usize);
        rows.last().map(|row| format!("v1.{}", id(row))).unwrap_or_default()
    } else {
        String::new()
    }
}

/// Optional time range in Unix ms (0 = unbounded), checked for order.
pub(crate) fn time_range(from: i64, to: i64) -> Result<(Option<i64>, Option<i64>), Status> {
    let from = (from != 0).then_some(from);
    let to = (to != 0).then_some(to);
    if let (Some(from), Some(to)) = (from, to) {
        if from >= to {
            return Err(invalid_argument("from_unix_ms must be before to_unix_ms"));
        }
    }
    Ok((from, to))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_and_sizes() {
        assert_eq!(parse_page_token("v1.42").unwrap(), Some(42));
        assert_eq!(parse_page_token("").unwrap(), None);
        assert_eq!(parse_page_token("x").unwrap_err().code(), tonic::Code::InvalidArgument);
        assert_eq!(page_size(0).unwrap(), DEFAULT_PAGE_SIZE);
        assert_eq!(page_size(5000).unwrap_err().code(), tonic::Code::InvalidArgument);
        assert_eq!(time_range(5, 1).unwrap_err().code(), tonic::Code::InvalidArgument);
    }

    #[test]
    fn pages_end_with_an_empty_token() {
        let mut rows = vec![9, 8, 7];
        assert_eq!(finish_page(&mut rows, 2, |r| *r), "v1.8");
        assert_eq!(rows, [9, 8]);
        let mut rows = vec![9, 8];
        assert_eq!(finish_page(&mut rows, 2, |r| *r), "");
    }
}
