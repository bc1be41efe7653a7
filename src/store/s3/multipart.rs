//! Multipart upload of a large file: parts are read from disk as they go out, one
//! at a time, so memory stays at the SDK's buffers whatever the file size. Each
//! part is retried on its own; a failed upload is aborted so S3 drops its parts.

use std::path::Path;
use std::time::Duration;

use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::types::{ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart};

use super::error::Failure;
use super::{S3Store, file_body};
use crate::store::StoreError;

/// The part size; grown for files so large that S3's 10,000-part cap would bind.
pub const PART_SIZE: u64 = 8 * 1024 * 1024;
const MAX_PARTS: u64 = 10_000;

/// Offsets and lengths of the parts of a `size`-byte file.
fn parts(size: u64) -> Vec<(u64, u64)> {
    let part = PART_SIZE.max(size.div_ceil(MAX_PARTS));
    (0..size.div_ceil(part))
        .map(|i| (i * part, part.min(size - i * part)))
        .collect()
}

impl S3Store {
    pub(super) async fn put_multipart(
        &self,
        key: &str,
        path: &Path,
        size: u64,
    ) -> Result<(), StoreError> {
        let object = &self.object_key(key);
        let created = self
            .run("CreateMultipartUpload", key, || async move {
                self.client
                    .create_multipart_upload()
                    .bucket(self.bucket())
                    .key(object)
                    .checksum_algorithm(ChecksumAlgorithm::Crc32)
                    .send()
                    .await
                    .map_err(Failure::from_sdk)
            })
            .await?;
        let Some(upload_id) = created.upload_id() else {
            return Err(
                Failure::fatal("CreateMultipartUpload returned no upload id").into_store_error(
                    "CreateMultipartUpload",
                    key,
                    &self.locate(key),
                    Duration::ZERO,
                ),
            );
        };
        let result = self.upload_parts(key, object, upload_id, path, size).await;
        if result.is_err() {
            self.abort(key, object, upload_id).await;
        }
        result
    }

    async fn upload_parts(
        &self,
        key: &str,
        object: &str,
        upload_id: &str,
        path: &Path,
        size: u64,
    ) -> Result<(), StoreError> {
        let mut done = Vec::new();
        for (i, (offset, len)) in parts(size).into_iter().enumerate() {
            let number = i as i32 + 1;
            let out = self
                .run("UploadPart", key, || async move {
                    let body = file_body(path, offset, len).await?;
                    self.client
                        .upload_part()
                        .bucket(self.bucket())
                        .key(object)
                        .upload_id(upload_id)
                        .part_number(number)
                        .content_length(len as i64)
                        .checksum_algorithm(ChecksumAlgorithm::Crc32)
                        .body(body)
                        .customize()
                        .config_override(self.transfer_config())
                        .send()
                        .await
                        .map_err(Failure::from_sdk)
                })
                .await?;
            done.push(
                CompletedPart::builder()
                    .part_number(number)
                    .set_e_tag(out.e_tag().map(str::to_string))
                    .set_checksum_crc32(out.checksum_crc32().map(str::to_string))
                    .build(),
            );
        }
        let manifest = &CompletedMultipartUpload::builder()
            .set_parts(Some(done))
            .build();
        self.run("CompleteMultipartUpload", key, || async move {
            self.client
                .complete_multipart_upload()
                .bucket(self.bucket())
                .key(object)
                .upload_id(upload_id)
                .multipart_upload(manifest.clone())
                .send()
                .await
                .map(drop)
                .map_err(Failure::from_sdk)
        })
        .await
    }

    /// Best effort, a few attempts only: the caller already has the real error, and
    /// a bucket lifecycle rule for incomplete uploads is the backstop.
    async fn abort(&self, key: &str, object: &str, upload_id: &str) {
        let result = self
            .client
            .abort_multipart_upload()
            .bucket(self.bucket())
            .key(object)
            .upload_id(upload_id)
            .customize()
            .config_override(
                aws_sdk_s3::config::Builder::default()
                    .retry_config(RetryConfig::standard().with_max_attempts(3)),
            )
            .send()
            .await;
        if let Err(e) = result {
            let f = Failure::from_sdk(e);
            tracing::warn!(location = %self.locate(key), upload_id, error = %f, "could not abort a failed multipart upload");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_layout() {
        assert_eq!(parts(PART_SIZE + 1), vec![(0, PART_SIZE), (PART_SIZE, 1)]);
        assert_eq!(parts(2 * PART_SIZE).len(), 2);
        let huge = 200 * 1024 * 1024 * 1024u64;
        let p = parts(huge);
        assert!(p.len() as u64 <= MAX_PARTS);
        assert_eq!(p.iter().map(|(_, l)| l).sum::<u64>(), huge);
        assert_eq!(p.last().map(|(o, l)| o + l), Some(huge));
    }
}
