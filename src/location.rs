//! This file is long (about 730 lines, 250 of them tests) because every
//! near miss it recognises has its own suggestion and its own test.
//!
//! Locations as people type them: store locations (`--spec-store`,
//! `--logs-store`, `spec show --store`, the URLs of a job spec's
//! `input_files` and `output_files`) and the driver's URL (`--driver-url`),
//! each parsed once, here, with an error that says what is wrong and, where
//! the intent is clear, what to type instead.
//!
//! # Store locations ([`parse_store`])
//!
//! | typed | means |
//! | --- | --- |
//! | `/abs/dir` | the local directory, as `file:///abs/dir` |
//! | `file:///abs/dir` (or `file:/abs/dir`, `file://localhost/abs/dir`) | the local directory |
//! | `memory:///prefix` | a store in this process's memory (tests, the demo) |
//! | `s3://bucket/prefix` (`s3a://`) | Amazon S3, or an S3-compatible store (`AWS_ENDPOINT`) |
//! | `gs://bucket/prefix` | Google Cloud Storage |
//! | `az://container/prefix` (`adl`, `azure`, `abfs`, `abfss`) | Azure Blob Storage (`AZURE_STORAGE_ACCOUNT_NAME`) |
//! | `https://ACCOUNT.blob.core.windows.net/container/prefix` | Azure Blob Storage (also `dfs.core.windows.net`, Fabric) |
//! | `https://s3.REGION.amazonaws.com/bucket/prefix` | Amazon S3 (also Cloudflare R2) |
//!
//! These are the URLs `object_store` 0.14's `ObjectStoreScheme::parse`
//! recognises, less plain HTTP(S) stores (the `http` feature is off).
//! Refused, with a suggestion: a relative path (the absolute form of it,
//! made with `std::path::absolute`), `file://tmp/x` (two slashes: `tmp` is
//! taken as a host), near misses of a scheme (`s3:/bucket`, `gs:bucket`,
//! `az//x`, `gcs://b`, Hail's `hail-az://ACCOUNT/container/x`); and without
//! one, an unknown scheme (the supported ones listed).
//!
//! # The driver's URL ([`parse_driver_url`])
//!
//! An `http://` or `https://` URL with a host. `127.0.0.1:5000`,
//! `localhost:5000`, `[::1]:5000` and `driver:5000` are refused with "did
//! you mean http://127.0.0.1:5000?" (the worker does not guess between
//! http and https); other schemes and file paths are refused naming why.

use std::path::Path;

use object_store::ObjectStoreScheme;
use url::Url;

/// The schemes [`parse_store`] takes, as the errors list them.
pub const SUPPORTED_STORES: &str = "file:///abs/path (or /abs/path), s3://bucket/prefix, \
     gs://bucket/prefix, az://container/prefix, \
     https://ACCOUNT.blob.core.windows.net/container/prefix, memory:///prefix";

/// Scheme names a store URL may start with (`object_store`'s), and common
/// other names for them: `(typed, meant)`.
const SCHEME_NAMES: [(&str, &str); 15] = [
    ("file", "file"),
    ("memory", "memory"),
    ("s3", "s3"),
    ("s3a", "s3a"),
    ("s3n", "s3"),
    ("gs", "gs"),
    ("gcs", "gs"),
    ("az", "az"),
    ("adl", "adl"),
    ("azure", "azure"),
    ("abfs", "abfs"),
    ("abfss", "abfss"),
    ("wasb", "az"),
    ("wasbs", "az"),
    ("https", "https"),
];

/// The kind of store a location names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    /// Local files (`file://`).
    Local,
    /// This process's memory (`memory://`).
    Memory,
    /// Amazon S3 or an S3-compatible store.
    S3,
    /// Google Cloud Storage.
    Gcs,
    /// Azure Blob Storage.
    Azure,
}

/// A store location or driver URL that cannot be used. `Display` gives the
/// problem and the suggestion, not the input (clap and the job spec's
/// errors show that themselves); [`LocationError::input`] has it, without
/// credentials (see [`crate::store::redact_text`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LocationError {
    /// Nothing was typed.
    #[error("empty: expected a store location such as {SUPPORTED_STORES}")]
    Empty,
    /// A relative path: relative to what would change with the directory
    /// the worker is started from.
    #[error(
        "a relative path is not a store location (it would depend on the directory the worker \
         starts in): did you mean {suggestion}?{}",
        scheme_hint(.input)
    )]
    RelativePath {
        /// What was typed.
        input: String,
        /// The absolute form, as a `file:///` URL.
        suggestion: String,
    },
    /// `file://host/path`: two slashes, so the path's first part was taken
    /// as a host.
    #[error(
        "file URLs need three slashes (file:///absolute/path; after two, {host:?} is read as a \
         host name): did you mean {suggestion}?"
    )]
    FileHost {
        /// What was typed.
        input: String,
        /// The part taken as a host.
        host: String,
        /// The three-slash form.
        suggestion: String,
    },
    /// `file:rel/path`: a file URL without a root.
    #[error(
        "a file URL names an absolute path (file:///absolute/path): did you mean {suggestion}?"
    )]
    FileNotAbsolute {
        /// What was typed.
        input: String,
        /// The three-slash form of the path made absolute.
        suggestion: String,
    },
    /// A known scheme, mistyped (`s3:/bucket`, `gs:bucket`, `az//x`,
    /// `gcs://b`).
    #[error("not a store URL: did you mean {suggestion}?")]
    NearMiss {
        /// What was typed.
        input: String,
        /// The URL meant.
        suggestion: String,
    },
    /// A cloud scheme without its bucket or container (`s3://`).
    #[error("{scheme}:// needs a bucket or container: {scheme}://NAME/prefix")]
    NoBucket {
        /// What was typed.
        input: String,
        /// The scheme.
        scheme: String,
    },
    /// A scheme no store here opens (`ftp://`).
    #[error("{scheme}:// is not a store this worker opens; expected one of: {SUPPORTED_STORES}")]
    UnknownScheme {
        /// What was typed.
        input: String,
        /// The scheme.
        scheme: String,
    },
    /// An `http(s)://` URL that is not a cloud store's endpoint.
    #[error(
        "{host} is not a blob store endpoint this worker knows (plain HTTP stores are not \
         supported); expected one of: {SUPPORTED_STORES}"
    )]
    HttpStore {
        /// What was typed.
        input: String,
        /// The host.
        host: String,
    },
    /// Not a URL at all, or one `object_store` refuses (a bad escape).
    #[error("not a usable store URL ({reason}); expected one of: {SUPPORTED_STORES}")]
    Unusable {
        /// What was typed.
        input: String,
        /// Why.
        reason: String,
    },
    /// `--driver-url` without `http://` or `https://`.
    #[error("the driver's URL needs its scheme: did you mean {suggestion}?")]
    DriverNoScheme {
        /// What was typed.
        input: String,
        /// `http://` and what was typed.
        suggestion: String,
    },
    /// `--driver-url` with a scheme other than `http` or `https`.
    #[error("{scheme}:// is not how the worker calls the driver: expected http://HOST:PORT or https://HOST")]
    DriverScheme {
        /// What was typed.
        input: String,
        /// The scheme.
        scheme: String,
    },
    /// `--driver-url` that is a file path or has no host.
    #[error("{reason}: expected the driver's base URL, http://HOST:PORT or https://HOST")]
    DriverNotUrl {
        /// What was typed.
        input: String,
        /// Why.
        reason: String,
    },
}

/// " (or s3://bucket/x?)" when a relative path's first part is a scheme's
/// name with the colon lost (`s3/bucket/x`).
fn scheme_hint(input: &str) -> String {
    let Some((first, rest)) = input.split_once('/') else {
        return String::new();
    };
    match SCHEME_NAMES
        .iter()
        .find(|(typed, _)| typed.eq_ignore_ascii_case(first))
    {
        Some((_, meant)) if *meant != "file" && !rest.is_empty() => {
            format!(" Or {}?", with_scheme(meant, rest.trim_start_matches('/')))
        }
        _ => String::new(),
    }
}

impl LocationError {
    /// What was typed, credentials redacted; empty for [`LocationError::Empty`].
    pub fn input(&self) -> &str {
        match self {
            LocationError::Empty => "",
            LocationError::RelativePath { input, .. }
            | LocationError::FileHost { input, .. }
            | LocationError::FileNotAbsolute { input, .. }
            | LocationError::NearMiss { input, .. }
            | LocationError::NoBucket { input, .. }
            | LocationError::UnknownScheme { input, .. }
            | LocationError::HttpStore { input, .. }
            | LocationError::Unusable { input, .. }
            | LocationError::DriverNoScheme { input, .. }
            | LocationError::DriverScheme { input, .. }
            | LocationError::DriverNotUrl { input, .. } => input,
        }
    }

    /// What to type instead, when the intent is clear.
    pub fn suggestion(&self) -> Option<&str> {
        match self {
            LocationError::RelativePath { suggestion, .. }
            | LocationError::FileHost { suggestion, .. }
            | LocationError::FileNotAbsolute { suggestion, .. }
            | LocationError::NearMiss { suggestion, .. }
            | LocationError::DriverNoScheme { suggestion, .. } => Some(suggestion),
            _ => None,
        }
    }
}

/// `text` without credentials: userinfo and a query (a SAS token) hidden.
fn shown(text: &str) -> String {
    let text = crate::store::redact_text(text);
    match text.split_once('?') {
        Some((before, _)) => format!("{before}?***"),
        None => text,
    }
}

/// `scheme://rest`, or `file:///rest` (`memory:///rest`): no host.
fn with_scheme(scheme: &str, rest: &str) -> String {
    if scheme == "file" || scheme == "memory" {
        format!("{scheme}:///{}", rest.trim_start_matches('/'))
    } else {
        format!("{scheme}://{rest}")
    }
}

/// The `file:///` URL of an absolute `path` (`.` and `..` resolved as
/// URLs resolve them).
fn file_url(path: &Path) -> Option<Url> {
    let url = Url::from_file_path(path).ok()?;
    Url::parse(url.as_str()).ok()
}

/// The `file:///` URL `path` would be if made absolute against the
/// current directory, as text (the path itself if that fails).
fn absolute_file_url(path: &str) -> String {
    std::path::absolute(path)
        .ok()
        .and_then(|abs| file_url(&abs))
        .map_or_else(|| format!("file:///{path}"), |url| url.to_string())
}

/// `s3:/b`, `gs:b`, `az//x`, `gcs://b`, `hail-az://acct/c/x`: the URL
/// meant, if `text` starts with a store scheme's name typed wrong.
fn near_miss(text: &str) -> Option<String> {
    if let Some(rest) = text.strip_prefix("hail-az://") {
        // Hail's own Azure URLs: hail-az://ACCOUNT/CONTAINER/PATH.
        let (account, path) = rest.split_once('/')?;
        return Some(format!("https://{account}.blob.core.windows.net/{path}"));
    }
    let split = text.find([':', '/'])?;
    let (name, after) = text.split_at(split);
    let (_, meant) = SCHEME_NAMES
        .iter()
        .find(|(typed, _)| typed.eq_ignore_ascii_case(name))?;
    let rest = after.trim_start_matches([':', '/']);
    if rest.is_empty() {
        return None;
    }
    if matches!(*meant, "file" | "memory") {
        // `file:/x` and `file:///x` are right, `file:x` is relative (see
        // parse_store); only the colon can be missing here.
        return after.starts_with("//").then(|| with_scheme(meant, rest));
    }
    let right = after.starts_with("://") && !after[3..].starts_with('/');
    if right && name.eq_ignore_ascii_case(meant) {
        return None;
    }
    // `s3/x` is a relative path (handled as one, with this as a hint).
    if !after.starts_with(':') && !after.starts_with("//") {
        return None;
    }
    Some(with_scheme(meant, rest))
}

/// Parses a store location as people type it (see the module's table):
/// the URL `object_store` opens, and its kind. Surrounding whitespace is
/// ignored.
///
/// # Errors
/// [`LocationError`] saying what is wrong and, where the intent is clear,
/// what to type instead.
pub fn parse_store(text: &str) -> Result<(Url, StoreKind), LocationError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(LocationError::Empty);
    }
    let input = shown(text);
    if text.starts_with('/') {
        let url = file_url(Path::new(text)).ok_or_else(|| LocationError::Unusable {
            input: input.clone(),
            reason: "not a usable absolute path".into(),
        })?;
        return Ok((url, StoreKind::Local));
    }
    if let Some(suggestion) = near_miss(text) {
        return Err(LocationError::NearMiss { input, suggestion });
    }
    let url = match Url::parse(text) {
        Ok(url) => url,
        Err(url::ParseError::RelativeUrlWithoutBase) => {
            return Err(LocationError::RelativePath {
                suggestion: absolute_file_url(text),
                input,
            })
        }
        Err(e) => {
            return Err(LocationError::Unusable {
                input,
                reason: e.to_string(),
            })
        }
    };
    if url.scheme() == "file" {
        // What follows the scheme's colon (Url::parse has already
        // lowercased the scheme and dropped tabs and leading controls).
        let after = text.split_once(':').map_or("", |(_, after)| after);
        if !after.starts_with('/') {
            return Err(LocationError::FileNotAbsolute {
                suggestion: absolute_file_url(after),
                input,
            });
        }
    }
    check_store_url(&url).map(|kind| (url, kind))
}

/// Checks a store URL already parsed (a [`Url`] built in code, or one that
/// came through another parser): the kind of store it names.
///
/// # Errors
/// [`LocationError`] as [`parse_store`] gives for the same text.
pub fn check_store_url(url: &Url) -> Result<StoreKind, LocationError> {
    let input = shown(url.as_str());
    let scheme = url.scheme();
    if scheme == "file" {
        if let Some(host) = url.host_str().filter(|h| !h.is_empty()) {
            return Err(LocationError::FileHost {
                suggestion: format!("file:///{host}{}", url.path()),
                host: host.to_owned(),
                input,
            });
        }
    }
    if scheme == "memory" {
        if let Some(host) = url.host_str().filter(|h| !h.is_empty()) {
            return Err(LocationError::NearMiss {
                suggestion: format!("memory:///{host}{}", url.path()),
                input,
            });
        }
    }
    let known = SCHEME_NAMES
        .iter()
        .any(|(typed, meant)| typed == meant && *typed == scheme);
    if !known && scheme != "http" {
        return Err(LocationError::UnknownScheme {
            input,
            scheme: scheme.to_owned(),
        });
    }
    let parsed = ObjectStoreScheme::parse(url);
    match parsed {
        Ok((ObjectStoreScheme::Local, _)) => Ok(StoreKind::Local),
        Ok((ObjectStoreScheme::Memory, _)) => Ok(StoreKind::Memory),
        Ok((ObjectStoreScheme::AmazonS3, _)) => Ok(StoreKind::S3),
        Ok((ObjectStoreScheme::GoogleCloudStorage, _)) => Ok(StoreKind::Gcs),
        Ok((ObjectStoreScheme::MicrosoftAzure, _)) => Ok(StoreKind::Azure),
        Ok(_) => Err(LocationError::HttpStore {
            input,
            host: url.host_str().unwrap_or_default().to_owned(),
        }),
        // Unrecognised (no host where one is needed) or a bad path.
        Err(e) if url.host_str().is_none_or(str::is_empty) => {
            let path = url.path().trim_start_matches('/');
            if path.is_empty() {
                Err(LocationError::NoBucket {
                    input,
                    scheme: scheme.to_owned(),
                })
            } else if scheme == "file" || scheme == "memory" {
                Err(LocationError::Unusable {
                    input,
                    reason: e.to_string(),
                })
            } else {
                // `s3:///bucket/x`: the bucket where the host goes.
                Err(LocationError::NearMiss {
                    input,
                    suggestion: with_scheme(scheme, path),
                })
            }
        }
        Err(e) => Err(LocationError::Unusable {
            input,
            reason: e.to_string(),
        }),
    }
}

/// [`parse_store`] for clap's `value_parser`: the URL alone.
///
/// # Errors
/// As [`parse_store`].
pub fn store_url(text: &str) -> Result<Url, LocationError> {
    parse_store(text).map(|(url, _)| url)
}

/// Parses the driver's base URL as people type it: `http://` or
/// `https://` with a host. Surrounding whitespace is ignored.
///
/// # Errors
/// [`LocationError::DriverNoScheme`] for `host:port` (suggesting
/// `http://host:port`), [`LocationError::DriverScheme`] for another
/// scheme, [`LocationError::DriverNotUrl`] for a path or no host.
pub fn parse_driver_url(text: &str) -> Result<Url, LocationError> {
    let text = text.trim();
    let input = shown(text);
    if text.is_empty() {
        return Err(LocationError::DriverNotUrl {
            input,
            reason: "empty".into(),
        });
    }
    if !text.contains("://") {
        if text.starts_with(['/', '.', '~']) {
            return Err(LocationError::DriverNotUrl {
                input,
                reason: "a file path, not a URL".into(),
            });
        }
        let suggestion = format!("http://{text}");
        return match Url::parse(&suggestion) {
            Ok(url) if url.host_str().is_some_and(|h| !h.is_empty()) => {
                Err(LocationError::DriverNoScheme { input, suggestion })
            }
            _ => Err(LocationError::DriverNotUrl {
                input,
                reason: "not a URL".into(),
            }),
        };
    }
    let url = Url::parse(text).map_err(|e| LocationError::DriverNotUrl {
        input: input.clone(),
        reason: format!("not a URL ({e})"),
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(LocationError::DriverScheme {
            input,
            scheme: url.scheme().to_owned(),
        });
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(LocationError::DriverNotUrl {
            input,
            reason: "no host".into(),
        });
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(text: &str) -> LocationError {
        match parse_store(text) {
            Ok((url, _)) => panic!("{text:?} accepted as {url}"),
            Err(e) => e,
        }
    }

    #[test]
    fn absolute_paths_are_local_file_stores() {
        let (url, kind) = parse_store("/tmp/x/specs").unwrap();
        assert_eq!(
            (url.as_str(), kind),
            ("file:///tmp/x/specs", StoreKind::Local)
        );
        let (url, _) = parse_store(" /tmp/with space/../y ").unwrap();
        assert_eq!(url.as_str(), "file:///tmp/y");
        assert_eq!(url.to_file_path().unwrap(), Path::new("/tmp/y"));
    }

    #[test]
    fn file_urls_with_three_slashes_or_localhost_work() {
        for text in [
            "file:///tmp/x",
            "file:/tmp/x",
            "file://localhost/tmp/x",
            "FILE:///tmp/x",
        ] {
            let (url, kind) = parse_store(text).unwrap();
            assert_eq!(
                (url.as_str(), kind),
                ("file:///tmp/x", StoreKind::Local),
                "{text}"
            );
        }
    }

    #[test]
    fn file_urls_with_two_slashes_suggest_three() {
        let e = refused("file://tmp/x");
        assert!(matches!(e, LocationError::FileHost { .. }), "{e:?}");
        assert_eq!(e.suggestion(), Some("file:///tmp/x"));
        assert_eq!(
            e.to_string(),
            "file URLs need three slashes (file:///absolute/path; after two, \"tmp\" is read as a \
             host name): did you mean file:///tmp/x?"
        );
        assert_eq!(e.input(), "file://tmp/x");
    }

    #[test]
    fn relative_paths_suggest_their_absolute_form() {
        let cwd = std::env::current_dir().unwrap();
        let e = refused("specs/here");
        let expected = Url::from_file_path(cwd.join("specs/here")).unwrap();
        assert_eq!(e.suggestion(), Some(expected.as_str()), "{e}");
        assert!(e.to_string().contains("a relative path"), "{e}");
        let e = refused("file:specs");
        assert!(matches!(e, LocationError::FileNotAbsolute { .. }), "{e:?}");
        assert_eq!(
            e.suggestion(),
            Some(Url::from_file_path(cwd.join("specs")).unwrap().as_str())
        );
        // A scheme's name that lost its colon: both readings offered.
        let e = refused("s3/bucket/x");
        assert!(e.to_string().ends_with("Or s3://bucket/x?"), "{e}");
    }

    #[test]
    fn cloud_urls_name_their_kind() {
        for (text, kind) in [
            ("s3://bucket/batch/specs", StoreKind::S3),
            ("s3a://bucket/x", StoreKind::S3),
            ("gs://bucket/x", StoreKind::Gcs),
            ("az://container/x", StoreKind::Azure),
            (
                "abfss://container@acct.dfs.core.windows.net/x",
                StoreKind::Azure,
            ),
            (
                "https://acct.blob.core.windows.net/container/x",
                StoreKind::Azure,
            ),
            ("https://s3.eu-west-3.amazonaws.com/bucket/x", StoreKind::S3),
            ("memory:///specs", StoreKind::Memory),
        ] {
            let (url, got) = parse_store(text).unwrap();
            assert_eq!(got, kind, "{text}");
            assert_eq!(url.as_str(), text);
        }
    }

    #[test]
    fn near_misses_of_a_scheme_get_a_did_you_mean() {
        for (text, meant) in [
            ("s3:/bucket/x", "s3://bucket/x"),
            ("s3:bucket", "s3://bucket"),
            ("s3:///bucket/x", "s3://bucket/x"),
            ("gs:bucket", "gs://bucket"),
            ("gs:/bucket/p", "gs://bucket/p"),
            ("az//x", "az://x"),
            ("az:x/y", "az://x/y"),
            ("gcs://bucket/x", "gs://bucket/x"),
            ("S3:/b", "s3://b"),
            ("memory://specs", "memory:///specs"),
            ("file//tmp/x", "file:///tmp/x"),
            (
                "hail-az://acct/container/x",
                "https://acct.blob.core.windows.net/container/x",
            ),
        ] {
            let e = refused(text);
            assert_eq!(e.suggestion(), Some(meant), "{text}: {e}");
            assert!(
                e.to_string().contains(&format!("did you mean {meant}?")),
                "{e}"
            );
        }
    }

    #[test]
    fn unknown_schemes_list_the_supported_ones() {
        let e = refused("ftp://host/x");
        assert_eq!(
            e,
            LocationError::UnknownScheme {
                input: "ftp://host/x".into(),
                scheme: "ftp".into()
            }
        );
        let message = e.to_string();
        for scheme in [
            "file:///",
            "s3://",
            "gs://",
            "az://",
            "blob.core.windows.net",
        ] {
            assert!(message.contains(scheme), "{message}");
        }
        let e = refused("https://example.com/x");
        assert!(matches!(e, LocationError::HttpStore { .. }), "{e:?}");
        assert!(e.to_string().contains("example.com"), "{e}");
        assert!(matches!(
            refused("http://example.com/x"),
            LocationError::HttpStore { .. }
        ));
    }

    #[test]
    fn empty_and_bucketless_urls_are_refused() {
        assert_eq!(refused("  "), LocationError::Empty);
        let e = refused("s3://");
        assert!(matches!(e, LocationError::NoBucket { .. }), "{e:?}");
        assert!(e.to_string().contains("s3://NAME/prefix"), "{e}");
    }

    #[test]
    fn credentials_never_show_in_errors() {
        let e = refused("ftp://user:pw123@host/x?sig=SIGNED");
        let shown = format!("{e} {e:?}");
        assert!(
            !shown.contains("pw123") && !shown.contains("SIGNED"),
            "{shown}"
        );
    }

    #[test]
    fn check_store_url_agrees_with_parse_store() {
        let url = Url::parse("file://tmp/x").unwrap();
        assert_eq!(
            check_store_url(&url).unwrap_err().suggestion(),
            Some("file:///tmp/x")
        );
        let url = Url::parse("s3://bucket/x").unwrap();
        assert_eq!(check_store_url(&url).unwrap(), StoreKind::S3);
    }

    #[test]
    fn driver_urls_without_a_scheme_suggest_http() {
        for text in [
            "127.0.0.1:5000",
            "localhost:5000",
            "[::1]:5000",
            "driver:5000",
            "driver",
        ] {
            let e = parse_driver_url(text).unwrap_err();
            let meant = format!("http://{text}");
            assert_eq!(e.suggestion(), Some(meant.as_str()), "{text}: {e}");
            assert!(
                e.to_string().contains(&format!("did you mean {meant}?")),
                "{e}"
            );
        }
    }

    #[test]
    fn driver_urls_of_other_schemes_or_paths_are_refused_with_the_reason() {
        let e = parse_driver_url("ftp://driver/x").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("ftp:// is not how the worker calls the driver"),
            "{e}"
        );
        for path in ["/var/run/driver.sock", "./driver", "~/driver"] {
            let e = parse_driver_url(path).unwrap_err();
            assert!(
                e.to_string().starts_with("a file path, not a URL"),
                "{path}: {e}"
            );
        }
        let e = parse_driver_url("http://").unwrap_err();
        assert!(matches!(e, LocationError::DriverNotUrl { .. }), "{e:?}");
    }

    #[test]
    fn driver_urls_with_a_scheme_and_host_are_taken() {
        for text in [
            "http://127.0.0.1:5000",
            "https://batch.example.org/",
            "http://[::1]:5000/x/",
        ] {
            let url = parse_driver_url(text).unwrap();
            assert!(
                url.as_str().starts_with(text.trim_end_matches('/')),
                "{url}"
            );
        }
    }
}
