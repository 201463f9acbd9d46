//! Optional bearer-token authentication of the API (`serve
//! --api-token-file`): every endpoint but [`OPEN_PATHS`] needs
//! `Authorization: Bearer <token>`; without it, or with another token, the
//! answer is 401 with `WWW-Authenticate: Bearer` and the [`ApiError`]
//! envelope. The comparison takes the same time wherever the tokens first
//! differ (`subtle`); only the length of the token can be learned from
//! timing.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use super::ApiError;
use crate::wire::Secret;

/// Paths that never need the token: the fleet's health checks and the
/// metrics scraper.
pub const OPEN_PATHS: [&str; 2] = ["/healthcheck", "/metrics"];

/// The API token: the bytes of the token file, less one trailing newline
/// (`\n` or `\r\n`). Its `Debug` is `<redacted>`.
#[derive(Clone)]
pub struct ApiToken(Arc<Secret<Vec<u8>>>);

impl std::fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiToken(<redacted>)")
    }
}

/// An API token file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    /// The file cannot be read.
    #[error("cannot read the API token file {path}: {source}")]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file holds no token (empty, or only a newline).
    #[error("the API token file {path} is empty; expected one token")]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// The token has bytes a header value cannot carry: whitespace,
    /// control characters or non-ASCII bytes (at the byte offset given).
    #[error(
        "the API token file {path} has a byte a bearer token cannot hold at offset {offset} \
         (expected one line of printable ASCII without spaces)"
    )]
    BadByte {
        /// The file.
        path: PathBuf,
        /// Byte offset of the first such byte.
        offset: usize,
    },
}

impl ApiToken {
    /// The token `value` (printable ASCII without spaces; see
    /// [`ApiToken::from_file`] for the checks).
    ///
    /// # Errors
    /// As [`ApiToken::from_file`], with `path` empty.
    pub fn new(value: &str) -> Result<ApiToken, TokenFileError> {
        Self::from_bytes(value.as_bytes(), Path::new(""))
    }

    /// Reads the token from `path`.
    ///
    /// # Errors
    /// [`TokenFileError`]: unreadable, empty, or a byte that is not
    /// printable ASCII (space included) before the trailing newline.
    pub fn from_file(path: &Path) -> Result<ApiToken, TokenFileError> {
        let bytes = std::fs::read(path).map_err(|source| TokenFileError::Unreadable {
            path: path.to_owned(),
            source,
        })?;
        Self::from_bytes(&bytes, path)
    }

    fn from_bytes(bytes: &[u8], path: &Path) -> Result<ApiToken, TokenFileError> {
        let token = bytes
            .strip_suffix(b"\n")
            .map(|b| b.strip_suffix(b"\r").unwrap_or(b))
            .unwrap_or(bytes);
        if token.is_empty() {
            return Err(TokenFileError::Empty {
                path: path.to_owned(),
            });
        }
        if let Some(offset) = token.iter().position(|b| !b.is_ascii_graphic()) {
            return Err(TokenFileError::BadByte {
                path: path.to_owned(),
                offset,
            });
        }
        Ok(ApiToken(Arc::new(Secret::new(token.to_vec()))))
    }

    /// The `Authorization: Bearer <token>` header value a client sends,
    /// marked sensitive (never logged).
    pub fn header_value(&self) -> axum::http::HeaderValue {
        let mut bearer = b"Bearer ".to_vec();
        bearer.extend_from_slice(self.0.expose());
        let mut value = axum::http::HeaderValue::from_bytes(&bearer)
            .expect("a token is printable ASCII, so a valid header value");
        zeroize::Zeroize::zeroize(&mut bearer);
        value.set_sensitive(true);
        value
    }

    /// Whether an `Authorization` header value carries this token.
    fn admits(&self, authorization: &[u8]) -> bool {
        // RFC 7235: the scheme is case-insensitive, then one or more spaces.
        let Some((scheme, rest)) = authorization.split_at_checked(6) else {
            return false;
        };
        if !scheme.eq_ignore_ascii_case(b"bearer") || !rest.starts_with(b" ") {
            return false;
        }
        let presented = rest.trim_ascii_start();
        presented.ct_eq(self.0.expose()).into()
    }
}

/// The middleware: passes everything when there is no token, else
/// [`OPEN_PATHS`] and requests carrying the token; answers 401 to the rest
/// before their bodies are read.
pub async fn require_token(
    State(token): State<Option<ApiToken>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(token) = token else {
        return next.run(request).await;
    };
    if OPEN_PATHS.contains(&request.uri().path()) {
        return next.run(request).await;
    }
    let admitted = request
        .headers()
        .get(header::AUTHORIZATION)
        .is_some_and(|value| token.admits(value.as_bytes()));
    if admitted {
        next.run(request).await
    } else {
        let mut answer = ApiError::Unauthorized(
            "this worker needs `Authorization: Bearer <token>` (serve --api-token-file)".into(),
        )
        .into_response();
        answer.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
        answer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_file_loses_one_trailing_newline_and_bad_files_name_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, bytes: &[u8]| {
            let path = dir.path().join(name);
            std::fs::write(&path, bytes).unwrap();
            path
        };
        let token = ApiToken::from_file(&file("ok", b"s3cr3t-T0KEN\r\n")).unwrap();
        assert!(token.admits(b"Bearer s3cr3t-T0KEN"));
        assert!(!token.admits(b"Bearer s3cr3t-T0KE"));
        assert!(!token.admits(b"Bearer s3cr3t-T0KEN "));
        assert!(!token.admits(b"Basic s3cr3t-T0KEN"));
        assert!(token.admits(b"BEARER s3cr3t-T0KEN"));
        assert!(token.admits(b"bearer   s3cr3t-T0KEN"));
        assert!(!token.admits(b"Bearers3cr3t-T0KEN"));
        assert!(!token.admits(b"Bearer"));
        assert!(!token.admits(b"s3cr3t-T0KEN"));
        assert_eq!(format!("{token:?}"), "ApiToken(<redacted>)");
        assert!(matches!(
            ApiToken::from_file(&file("empty", b"\n")),
            Err(TokenFileError::Empty { .. })
        ));
        assert!(matches!(
            ApiToken::from_file(&file("two", b"abc def\n")),
            Err(TokenFileError::BadByte { offset: 3, .. })
        ));
        assert!(matches!(
            ApiToken::from_file(&dir.path().join("absent")),
            Err(TokenFileError::Unreadable { .. })
        ));
    }
}
