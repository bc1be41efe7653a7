//! Settings of the S3 store: where (bucket, prefix, endpoint, region), who
//! (credentials) and how long every call may take.

use std::time::Duration;

use aws_sdk_s3::config::Credentials;

use crate::store::{StoreError, keys};

/// Env var naming a MinIO/moto-style endpoint (DESIGN.md "CLI"); path-style
/// addressing is forced when it is set.
pub const ENDPOINT_ENV: &str = "FLEET_S3_ENDPOINT";

/// The region when neither `AWS_REGION` nor `AWS_DEFAULT_REGION` names one.
pub const DEFAULT_REGION: &str = "us-east-1";

/// Everything the S3 store needs to connect. [`S3Settings::from_spec`] fills it from
/// an `s3://bucket/prefix` spec and the environment; tests set fields directly.
#[derive(Clone, Debug)]
pub struct S3Settings {
    pub bucket: String,
    /// Without leading or trailing `/`; empty for the bucket's root.
    pub prefix: String,
    /// `None` for AWS itself.
    pub endpoint: Option<String>,
    pub region: String,
    /// Static credentials; `None` uses the standard AWS chain (env, profile, web
    /// identity, ECS, then IMDS with a short bound).
    pub credentials: Option<Credentials>,
    /// Deadlines of small calls (records, listings, multipart control calls).
    pub timeouts: Timeouts,
    /// Deadlines of calls that carry a file's bytes (a part, or a small file whole).
    pub transfer_timeouts: Timeouts,
    /// Attempts the SDK makes itself before a call fails (its standard retry mode).
    pub sdk_max_attempts: u32,
    /// How long a read or write keeps retrying transient failures (endpoint down,
    /// timeouts, 5xx, throttling) before it gives up with `StoreError::Unavailable`.
    pub retry_budget: Duration,
    /// The deadline of [`super::S3Store::ping`].
    pub ping_timeout: Duration,
    /// Check downloads against the checksum the server reports. On by default for
    /// AWS, off for other endpoints: S3-compatible servers differ in how they report
    /// multipart checksums (moto 5.1 sends a composite CRC32 without its `-N` parts
    /// suffix, so the SDK would reject correct data). Uploads always carry checksums.
    pub validate_download_checksums: bool,
    /// Keys per ListObjectsV2 page; S3's own cap (1000) when None.
    pub list_page_size: Option<i32>,
}

/// The SDK's per-call deadlines.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    pub connect: Duration,
    /// One HTTP attempt.
    pub attempt: Duration,
    /// One call, all of the SDK's attempts and back-offs included.
    pub operation: Duration,
}

impl Timeouts {
    pub const SMALL: Timeouts = Timeouts {
        connect: Duration::from_secs(3),
        attempt: Duration::from_secs(15),
        operation: Duration::from_secs(45),
    };
    /// Sized for an 8–16 MiB part on a slow link; a stalled upload is cut sooner by
    /// the SDK's stalled-stream protection.
    pub const TRANSFER: Timeouts = Timeouts {
        connect: Duration::from_secs(3),
        attempt: Duration::from_secs(120),
        operation: Duration::from_secs(300),
    };
}

impl S3Settings {
    /// Default deadlines for `bucket`/`prefix`; no endpoint, the default region.
    pub fn new(bucket: &str, prefix: &str) -> S3Settings {
        S3Settings {
            bucket: bucket.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
            endpoint: None,
            region: DEFAULT_REGION.to_string(),
            credentials: None,
            timeouts: Timeouts::SMALL,
            transfer_timeouts: Timeouts::TRANSFER,
            sdk_max_attempts: 3,
            retry_budget: Duration::from_secs(120),
            ping_timeout: Duration::from_secs(3),
            validate_download_checksums: true,
            list_page_size: None,
        }
    }

    /// Parses `s3://bucket[/prefix]` and reads the endpoint (`FLEET_S3_ENDPOINT`) and
    /// region (`AWS_REGION`, then `AWS_DEFAULT_REGION`) from the environment.
    pub fn from_spec(spec: &str) -> Result<S3Settings, StoreError> {
        let (bucket, prefix) = parse_spec(spec)?;
        let mut s = S3Settings::new(&bucket, &prefix);
        s.endpoint = env_nonempty(ENDPOINT_ENV);
        s.validate_download_checksums = s.endpoint.is_none();
        s.region = env_nonempty("AWS_REGION")
            .or_else(|| env_nonempty("AWS_DEFAULT_REGION"))
            .unwrap_or_else(|| DEFAULT_REGION.to_string());
        Ok(s)
    }
}

fn env_nonempty(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// `s3://bucket/prefix` → (bucket, prefix without surrounding slashes).
pub fn parse_spec(spec: &str) -> Result<(String, String), StoreError> {
    let bad = |why: &str| StoreError::Io {
        key: spec.to_string(),
        source: std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("not an s3://bucket/prefix store: {why}"),
        ),
    };
    let rest = spec
        .strip_prefix("s3://")
        .ok_or_else(|| bad("missing s3:// scheme"))?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let prefix = prefix.trim_matches('/');
    // S3's rules, loosened to what S3-compatible servers accept too.
    let bucket_ok = (3..=63).contains(&bucket.len())
        && bucket
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    if !bucket_ok {
        return Err(bad(
            "the bucket name must be 3-63 letters, digits, '.', '-' or '_'",
        ));
    }
    if !prefix.is_empty() && !keys::is_safe(prefix) {
        return Err(bad("the prefix has an empty, '.' or '..' segment"));
    }
    Ok((bucket.to_string(), prefix.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs() {
        assert_eq!(
            parse_spec("s3://fleet").unwrap(),
            ("fleet".into(), "".into())
        );
        assert_eq!(
            parse_spec("s3://fleet/").unwrap(),
            ("fleet".into(), "".into())
        );
        assert_eq!(
            parse_spec("s3://fleet/a/b/").unwrap(),
            ("fleet".into(), "a/b".into())
        );
        assert!(parse_spec("s3://").is_err());
        assert!(parse_spec("s3://ab").is_err());
        assert!(parse_spec("s3://fleet/a/../b").is_err());
        assert!(parse_spec("s3://fleet/a//b").is_err());
        assert!(parse_spec("/tmp/x").is_err());
        assert!(parse_spec("s3://has space/x").is_err());
    }
}
