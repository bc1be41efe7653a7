//! The S3 store (aws-sdk-s3): keys live at `<prefix>/<key>` in one bucket, on AWS
//! or any S3-compatible endpoint (`FLEET_S3_ENDPOINT`, path-style).
//!
//! Every call has the SDK's deadlines ([`Timeouts`]) and its few retries; around
//! them an outer retry with backoff rides out an endpoint that is down for tens of
//! seconds, up to the store's retry budget, then fails with
//! `StoreError::Unavailable`. Non-transient failures (403, a missing bucket) fail at
//! once as `StoreError::Io` naming the bucket and key (see `error.rs`).
//!
//! Status records are updated with optimistic concurrency ([`S3Store::update_status`]):
//! conditional writes (`If-Match` on the ETag read, `If-None-Match: *` to create).

mod error;
mod multipart;
mod settings;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_config::default_provider::credentials::DefaultCredentialsChain;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    BehaviorVersion, Region, ResponseChecksumValidation, SharedCredentialsProvider,
};
use aws_sdk_s3::primitives::{ByteStream, Length};
use bytes::Bytes;
use rand::Rng;

pub use settings::{DEFAULT_REGION, ENDPOINT_ENV, S3Settings, Timeouts, parse_spec};

use self::error::{Class, Failure, retrying};
use super::StoreError;
use crate::job::StatusRecord;

/// Files larger than this go up in parts (multipart upload).
pub const MULTIPART_THRESHOLD: u64 = 8 * 1024 * 1024;

/// Read-modify-write rounds of [`S3Store::update_status`] before it gives up with
/// `StoreError::Conflict`.
const CAS_ROUNDS: u32 = 24;

/// A conditional write's precondition.
#[derive(Debug, Clone)]
pub enum Precondition {
    /// Write only over the object whose ETag is this.
    IfMatch(String),
    /// Write only if there is no object yet (`If-None-Match: *`).
    IfAbsent,
}

#[derive(Clone)]
pub struct S3Store {
    client: Client,
    settings: Arc<S3Settings>,
}

impl S3Store {
    /// Builds the client. Touches no network: credentials resolve on first use
    /// (bounded by the SDK's identity-cache load timeout) and [`S3Store::ping`] checks
    /// the bucket.
    pub async fn connect(settings: S3Settings) -> Result<S3Store, StoreError> {
        let region = Region::new(settings.region.clone());
        let credentials = match &settings.credentials {
            Some(c) => SharedCredentialsProvider::new(c.clone()),
            None => {
                // The chain ends with IMDS; off EC2 its defaults would spend seconds
                // per resolution on retries to an address that never answers.
                let imds = aws_config::imds::Client::builder()
                    .max_attempts(1)
                    .connect_timeout(Duration::from_secs(1))
                    .read_timeout(Duration::from_secs(1))
                    .operation_timeout(Duration::from_secs(2))
                    .build();
                let chain = DefaultCredentialsChain::builder()
                    .region(region.clone())
                    .imds_client(imds)
                    .build()
                    .await;
                SharedCredentialsProvider::new(chain)
            }
        };
        let sdk = aws_config::defaults(BehaviorVersion::latest())
            .region(region)
            .credentials_provider(credentials)
            .timeout_config(timeout_config(settings.timeouts))
            .retry_config(
                RetryConfig::standard().with_max_attempts(settings.sdk_max_attempts.max(1)),
            )
            .load()
            .await;
        let mut conf = aws_sdk_s3::config::Builder::from(&sdk);
        if let Some(endpoint) = &settings.endpoint {
            conf = conf.endpoint_url(endpoint).force_path_style(true);
        }
        if !settings.validate_download_checksums {
            conf = conf.response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        }
        Ok(S3Store {
            client: Client::from_conf(conf.build()),
            settings: Arc::new(settings),
        })
    }

    pub fn settings(&self) -> &S3Settings {
        &self.settings
    }

    /// The SDK client, for set-up and tests.
    pub fn client(&self) -> &Client {
        &self.client
    }

    fn bucket(&self) -> &str {
        &self.settings.bucket
    }

    /// The object key of a store key.
    fn object_key(&self, key: &str) -> String {
        if self.settings.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}/{key}", self.settings.prefix)
        }
    }

    /// `s3://bucket/prefix/key`.
    pub fn locate(&self, key: &str) -> String {
        format!("s3://{}/{}", self.bucket(), self.object_key(key))
    }

    /// Retries `call` (see [`error::retrying`]) and maps its final failure.
    async fn run<T, F, Fut>(&self, op: &str, key: &str, call: F) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, Failure>>,
    {
        let start = Instant::now();
        let location = self.locate(key);
        retrying(self.settings.retry_budget, op, &location, call)
            .await
            .map_err(|f| f.into_store_error(op, key, &location, start.elapsed()))
    }

    pub async fn put(&self, key: &str, body: Bytes) -> Result<(), StoreError> {
        let (object, body) = (&self.object_key(key), &body);
        self.run("PutObject", key, || async move {
            self.client
                .put_object()
                .bucket(self.bucket())
                .key(object)
                .body(ByteStream::from(body.clone()))
                .send()
                .await
                .map(drop)
                .map_err(Failure::from_sdk)
        })
        .await
    }

    /// A conditional write. Ok(false) when the precondition failed (someone else
    /// wrote, or the object is gone for `IfMatch`).
    ///
    /// A write whose response was lost and that the SDK then retries can find its
    /// own first attempt applied and report false: callers re-read and decide.
    pub async fn put_if(
        &self,
        key: &str,
        body: Bytes,
        cond: &Precondition,
    ) -> Result<bool, StoreError> {
        let (object, body) = (&self.object_key(key), &body);
        let result = self
            .run("PutObject", key, || async move {
                let req = self
                    .client
                    .put_object()
                    .bucket(self.bucket())
                    .key(object)
                    .body(ByteStream::from(body.clone()));
                let req = match cond {
                    Precondition::IfMatch(etag) => req.if_match(etag),
                    Precondition::IfAbsent => req.if_none_match("*"),
                };
                match req.send().await.map_err(Failure::from_sdk) {
                    Ok(_) => Ok(true),
                    Err(f) if matches!(f.class, Class::Precondition | Class::NotFound) => Ok(false),
                    Err(f) => Err(f),
                }
            })
            .await?;
        Ok(result)
    }

    /// Writes `body` only if nothing is at `key` yet (`If-None-Match: *`); false when
    /// something is. A retried write that finds its own lost first attempt (the
    /// same bytes) counts as written.
    pub async fn put_if_absent(&self, key: &str, body: Bytes) -> Result<bool, StoreError> {
        if self
            .put_if(key, body.clone(), &Precondition::IfAbsent)
            .await?
        {
            return Ok(true);
        }
        Ok(self.get(key).await?.is_some_and(|stored| stored == body))
    }

    /// Uploads a file: one PutObject up to [`MULTIPART_THRESHOLD`], a multipart
    /// upload streamed from disk part by part above it. Returns the bytes sent.
    pub async fn put_file(&self, key: &str, path: &Path) -> Result<u64, StoreError> {
        let local = |source| StoreError::Io {
            key: path.display().to_string(),
            source,
        };
        let size = tokio::fs::metadata(path).await.map_err(local)?.len();
        if size > MULTIPART_THRESHOLD {
            self.put_multipart(key, path, size).await?;
            return Ok(size);
        }
        let object = &self.object_key(key);
        self.run("PutObject", key, || async move {
            let body = file_body(path, 0, size).await?;
            self.client
                .put_object()
                .bucket(self.bucket())
                .key(object)
                .content_length(size as i64)
                .body(body)
                .customize()
                .config_override(self.transfer_config())
                .send()
                .await
                .map(drop)
                .map_err(Failure::from_sdk)
        })
        .await?;
        Ok(size)
    }

    pub async fn get(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        Ok(self.get_versioned(key).await?.map(|(body, _)| body))
    }

    /// The object and its ETag (the version a conditional write names).
    pub async fn get_versioned(
        &self,
        key: &str,
    ) -> Result<Option<(Bytes, Option<String>)>, StoreError> {
        let object = &self.object_key(key);
        self.run("GetObject", key, || async move {
            match self
                .client
                .get_object()
                .bucket(self.bucket())
                .key(object)
                .send()
                .await
            {
                Ok(out) => {
                    let etag = out.e_tag().map(str::to_string);
                    let body = out
                        .body
                        .collect()
                        .await
                        .map_err(Failure::body)?
                        .into_bytes();
                    Ok(Some((body, etag)))
                }
                Err(e) => match Failure::from_sdk(e) {
                    f if f.class == Class::NotFound => Ok(None),
                    f => Err(f),
                },
            }
        })
        .await
    }

    /// Downloads the object to the file `dest` (replaced), streamed chunk by
    /// chunk; false (and no file) when there is no object.
    pub async fn get_to_file(&self, key: &str, dest: &Path) -> Result<bool, StoreError> {
        let object = &self.object_key(key);
        self.run("GetObject", key, || async move {
            let out = match self
                .client
                .get_object()
                .bucket(self.bucket())
                .key(object)
                .customize()
                .config_override(self.transfer_config())
                .send()
                .await
            {
                Ok(out) => out,
                Err(e) => {
                    return match Failure::from_sdk(e) {
                        f if f.class == Class::NotFound => Ok(false),
                        f => Err(f),
                    };
                }
            };
            let local =
                |e: std::io::Error| Failure::fatal(format!("writing {}: {e}", dest.display()));
            let mut file = tokio::fs::File::create(dest).await.map_err(local)?;
            let mut body = out.body;
            while let Some(chunk) = body.try_next().await.map_err(Failure::body)? {
                tokio::io::AsyncWriteExt::write_all(&mut file, &chunk)
                    .await
                    .map_err(local)?;
            }
            tokio::io::AsyncWriteExt::flush(&mut file)
                .await
                .map_err(local)?;
            Ok(true)
        })
        .await
    }

    /// Store keys under `prefix` (recursive), without the store's own prefix, sorted.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let strip = if self.settings.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.settings.prefix)
        };
        let object_prefix = &format!("{strip}{prefix}");
        let mut keys = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let token_now = &token;
            let page = self
                .run("ListObjectsV2", prefix, || async move {
                    self.client
                        .list_objects_v2()
                        .bucket(self.bucket())
                        .prefix(object_prefix)
                        .set_max_keys(self.settings.list_page_size)
                        .set_continuation_token(token_now.clone())
                        .send()
                        .await
                        .map_err(Failure::from_sdk)
                })
                .await?;
            keys.extend(
                page.contents()
                    .iter()
                    .filter_map(|o| o.key())
                    .filter_map(|k| k.strip_prefix(&strip))
                    .map(str::to_string),
            );
            match page.next_continuation_token() {
                Some(next) if page.is_truncated() == Some(true) => token = Some(next.to_string()),
                _ => break,
            }
        }
        keys.sort();
        Ok(keys)
    }

    /// HeadBucket with a short deadline and no retries: for readiness probes.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let deadline = self.settings.ping_timeout;
        let start = Instant::now();
        let location = format!("s3://{}", self.bucket());
        let t = Timeouts {
            connect: deadline,
            attempt: deadline,
            operation: deadline,
        };
        let call = self
            .client
            .head_bucket()
            .bucket(self.bucket())
            .customize()
            .config_override(
                aws_sdk_s3::config::Builder::default()
                    .timeout_config(timeout_config(t))
                    .retry_config(RetryConfig::disabled()),
            )
            .send();
        let failure = match tokio::time::timeout(deadline + Duration::from_millis(500), call).await
        {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(e)) => Failure::from_sdk(e),
            Err(_) => Failure {
                class: Class::Transient,
                status: None,
                message: format!("no answer within {deadline:?}"),
            },
        };
        let failure = match (failure.class, failure.status) {
            // HEAD has no body: a 404 here is the bucket, not a key.
            (Class::NotFound, _) | (_, Some(404)) => Failure {
                class: Class::Fatal,
                message: "NoSuchBucket (HTTP 404)".into(),
                ..failure
            },
            _ => failure,
        };
        Err(failure.into_store_error("HeadBucket", "", &location, start.elapsed()))
    }

    /// Read-modify-write of the JSON status record at `key` with optimistic
    /// concurrency: read it and its ETag, apply `f`, write with `If-Match`; when
    /// someone else wrote in between (412), read again and re-apply `f`, up to
    /// `CAS_ROUNDS` (24) times, then `StoreError::Conflict`. So two workers racing to
    /// claim a job cannot both win.
    ///
    /// `f` may run several times and must decide from the record it is given. A
    /// write whose response was lost and retried can find its own first write
    /// applied; `f` then sees the record as it left it.
    ///
    /// Needs an S3 API that honours `If-Match` on PutObject (AWS S3 since late 2024,
    /// MinIO, moto 5). One that ignores it degrades to last-writer-wins; an object
    /// served without an ETag is written back unconditionally.
    ///
    /// Returns the record as stored after the call (None when there is none) and the
    /// bytes written.
    pub async fn update_status(
        &self,
        key: &str,
        f: impl Fn(&mut StatusRecord) -> bool,
    ) -> Result<(Option<StatusRecord>, u64), StoreError> {
        for round in 0..CAS_ROUNDS {
            let Some((body, etag)) = self.get_versioned(key).await? else {
                return Ok((None, 0));
            };
            let mut rec: StatusRecord =
                serde_json::from_slice(&body).map_err(|e| StoreError::Corrupt {
                    key: key.to_string(),
                    message: e.to_string(),
                })?;
            if !f(&mut rec) {
                return Ok((Some(rec), 0));
            }
            let out = Bytes::from(serde_json::to_vec_pretty(&rec).expect("records serialise"));
            let n = out.len() as u64;
            let Some(etag) = etag else {
                self.put(key, out).await?;
                return Ok((Some(rec), n));
            };
            if self.put_if(key, out, &Precondition::IfMatch(etag)).await? {
                return Ok((Some(rec), n));
            }
            // Lost the race: back off a little (jittered, growing) and re-read.
            let cap_ms = (5u64 << round.min(6)).min(250);
            let pause = rand::rng().random_range(1..=cap_ms);
            tracing::debug!(
                key,
                round,
                pause_ms = pause,
                "status record changed concurrently; retrying"
            );
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
        Err(StoreError::Conflict {
            key: key.to_string(),
        })
    }

    /// Per-call overrides for requests that carry a file's bytes.
    fn transfer_config(&self) -> aws_sdk_s3::config::Builder {
        aws_sdk_s3::config::Builder::default()
            .timeout_config(timeout_config(self.settings.transfer_timeouts))
    }
}

fn timeout_config(t: Timeouts) -> TimeoutConfig {
    TimeoutConfig::builder()
        .connect_timeout(t.connect)
        .operation_attempt_timeout(t.attempt)
        .operation_timeout(t.operation)
        .build()
}

/// `len` bytes of the file from `offset`, read as the request goes out (never
/// whole in memory) and re-readable for the SDK's own retries.
async fn file_body(path: &Path, offset: u64, len: u64) -> Result<ByteStream, Failure> {
    ByteStream::read_from()
        .path(path)
        .offset(offset)
        .length(Length::Exact(len))
        .build()
        .await
        .map_err(|e| {
            Failure::fatal(format!(
                "reading {}: {}",
                path.display(),
                aws_sdk_s3::error::DisplayErrorContext(&e)
            ))
        })
}
