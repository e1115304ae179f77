//! [`ObjectStore`] on S3: the bucket that holds users' requests and flightdeck's markers.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use aws_config::SdkConfig;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::interceptors::BeforeDeserializationInterceptorContextRef;
use aws_sdk_s3::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_s3::primitives::{ByteStream, DateTime, DateTimeFormat as Format};
use aws_smithy_runtime_api::box_error::BoxError;
use flightdeck_core::snapshot::ObjectMeta;

use super::error::{classify, local};
use crate::ports::{CallError, ErrorKind, Fetched, ObjectStore, Page, Read};

const SERVICE: &str = "s3";

/// Content type of the machine-readable status marker.
const JSON: &str = "application/json";
/// Content type of every other marker: text a person reads.
const TEXT: &str = "text/plain; charset=utf-8";

/// One bucket, through the S3 API.
#[derive(Debug, Clone)]
pub struct S3Store {
    client: Client,
    bucket: String,
    clock: ServerClock,
}

/// AWS's clock as the `Date` of S3's answers tells it: its offset from this host's, in
/// seconds, from the latest answer ([`UNKNOWN`] before the first).
#[derive(Debug, Clone)]
struct ServerClock(Arc<AtomicI64>);

/// No answer seen yet.
const UNKNOWN: i64 = i64::MIN;

impl Intercept for ServerClock {
    fn name(&self) -> &'static str {
        "ServerClock"
    }

    fn read_before_deserialization(
        &self,
        context: &BeforeDeserializationInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let server = context
            .response()
            .headers()
            .get("date")
            .and_then(|d| DateTime::from_str(d, Format::HttpDate).ok());
        if let Some(server) = server {
            let local = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
            self.0
                .store(server.secs().saturating_sub(local), Ordering::Relaxed);
        }
        Ok(())
    }
}

impl S3Store {
    /// A store on `bucket`. `path_style` addresses the bucket in the path rather than the
    /// host name; S3-compatible stores and the local emulator need it (see
    /// [`super::AwsSettings::s3_path_style`]).
    pub fn new(conf: &SdkConfig, bucket: impl Into<String>, path_style: bool) -> S3Store {
        let clock = ServerClock(Arc::new(AtomicI64::new(UNKNOWN)));
        let conf = aws_sdk_s3::config::Builder::from(conf)
            .force_path_style(path_style)
            .interceptor(clock.clone())
            .build();
        S3Store {
            client: Client::from_conf(conf),
            bucket: bucket.into(),
            clock,
        }
    }

    /// The bucket's name.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// A PutObject of `body` to `key`, with the content type its suffix calls for.
    fn put_object(
        &self,
        key: &str,
        body: &str,
    ) -> aws_sdk_s3::operation::put_object::builders::PutObjectFluentBuilder {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type(content_type(key))
            .body(ByteStream::from(body.as_bytes().to_vec()))
    }
}

/// A body that broke off while it was read: asking again may work.
fn unreadable(key: &str, e: &impl std::fmt::Display) -> CallError {
    local(
        SERVICE,
        "GetObject",
        ErrorKind::Transient,
        format!("reading the body of {key}: {e}"),
    )
}

fn epoch_seconds(time: Option<&DateTime>) -> i64 {
    time.map(DateTime::secs).unwrap_or_default()
}

fn content_type(key: &str) -> &'static str {
    if key.ends_with(".cf-status") {
        JSON
    } else {
        TEXT
    }
}

/// The ETag of an answer to writing `key`; S3 always gives one.
fn answered_etag(key: &str, etag: Option<&str>) -> Result<String, CallError> {
    etag.map(str::to_owned).ok_or_else(|| {
        local(
            SERVICE,
            "PutObject",
            ErrorKind::Other,
            format!("the answer to writing {key} has no ETag"),
        )
    })
}

impl ObjectStore for S3Store {
    async fn list_page(
        &self,
        prefix: &str,
        next: Option<&str>,
    ) -> Result<Page<ObjectMeta>, CallError> {
        let page = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(prefix)
            .set_continuation_token(next.map(str::to_owned))
            .send()
            .await
            .map_err(|e| classify(SERVICE, "ListObjectsV2", &e))?;
        let items = page
            .contents()
            .iter()
            .filter_map(|o| {
                Some(ObjectMeta {
                    key: o.key()?.to_owned(),
                    etag: o.e_tag().unwrap_or_default().to_owned(),
                    modified: epoch_seconds(o.last_modified()),
                    size: o.size().and_then(|s| u64::try_from(s).ok()).unwrap_or(0),
                })
            })
            .collect();
        let next = match page.next_continuation_token() {
            Some(token) if page.is_truncated() == Some(true) => Some(token.to_owned()),
            _ => None,
        };
        Ok(Page { items, next })
    }

    async fn any_under(&self, prefix: &str) -> Result<bool, CallError> {
        let page = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(prefix)
            .max_keys(1)
            .send()
            .await
            .map_err(|e| classify(SERVICE, "ListObjectsV2", &e))?;
        Ok(!page.contents().is_empty() || page.key_count().is_some_and(|n| n > 0))
    }

    async fn get(&self, key: &str) -> Result<Option<Fetched>, CallError> {
        const OPERATION: &str = "GetObject";
        let object = match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(object) => object,
            Err(e) => {
                let err = classify(SERVICE, OPERATION, &e);
                // A missing key is an answer; a missing bucket is a misconfiguration.
                return if err.kind == ErrorKind::NotFound
                    && err.code.as_deref() != Some("NoSuchBucket")
                {
                    Ok(None)
                } else {
                    Err(err)
                };
            }
        };
        let etag = object.e_tag().unwrap_or_default().to_owned();
        let modified = epoch_seconds(object.last_modified());
        let body = object
            .body
            .collect()
            .await
            .map_err(|e| unreadable(key, &e))?;
        Ok(Some(Fetched {
            body: body.into_bytes().to_vec(),
            etag,
            modified,
        }))
    }

    async fn read(&self, key: &str, etag: &str, limit: usize) -> Result<Read, CallError> {
        const OPERATION: &str = "GetObject";
        let ranged = |range: bool| {
            let get = self
                .client
                .get_object()
                .bucket(&self.bucket)
                .key(key)
                .if_match(etag);
            // One byte past the limit tells "larger" from "exactly the limit".
            if range {
                get.range(format!("bytes=0-{limit}"))
            } else {
                get
            }
        };
        let mut answer = ranged(true).send().await;
        if let Err(e) = &answer
            && classify(SERVICE, OPERATION, e).code.as_deref() == Some("InvalidRange")
        {
            // S3 answers a range of an empty object with 416; the ETag still pins it.
            answer = ranged(false).send().await;
        }
        let mut object = match answer {
            Ok(object) => object,
            Err(e) => {
                let err = classify(SERVICE, OPERATION, &e);
                return match err.code.as_deref() {
                    Some("PreconditionFailed" | "412") => Ok(Read::Changed),
                    Some("NoSuchKey") => Ok(Read::Missing),
                    _ => Err(err),
                };
            }
        };
        let size = object
            .content_range()
            .and_then(|r| r.rsplit_once('/'))
            .and_then(|(_, total)| total.parse().ok())
            .or_else(|| object.content_length().and_then(|n| u64::try_from(n).ok()));
        if size.is_some_and(|n| n > limit as u64) {
            return Ok(Read::TooLarge { size });
        }
        let mut body = Vec::new();
        while let Some(chunk) = object.body.next().await {
            let chunk = chunk.map_err(|e| unreadable(key, &e))?;
            if body.len() + chunk.len() > limit {
                // A server that ignored the range: stop reading here.
                return Ok(Read::TooLarge { size });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Read::Body(Fetched {
            body,
            etag: object.e_tag().unwrap_or(etag).to_owned(),
            modified: epoch_seconds(object.last_modified()),
        }))
    }

    fn clock_offset(&self) -> Option<i64> {
        Some(self.clock.0.load(Ordering::Relaxed)).filter(|o| *o != UNKNOWN)
    }

    async fn delete_if(&self, key: &str, etag: &str) -> Result<bool, CallError> {
        match self
            .client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .if_match(etag)
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(e) => {
                let err = classify(SERVICE, "DeleteObject", &e);
                match err.code.as_deref() {
                    Some("PreconditionFailed" | "412" | "NoSuchKey") => Ok(false),
                    _ => Err(err),
                }
            }
        }
    }

    async fn put(&self, key: &str, body: &str) -> Result<String, CallError> {
        let put = self
            .put_object(key, body)
            .send()
            .await
            .map_err(|e| classify(SERVICE, "PutObject", &e))?;
        answered_etag(key, put.e_tag())
    }

    async fn put_new(&self, key: &str, body: &str) -> Result<(), CallError> {
        const OPERATION: &str = "PutObject";
        self.put_object(key, body)
            .if_none_match("*")
            .send()
            .await
            .map(|_| ())
            .map_err(|e| {
                let mut err = classify(SERVICE, OPERATION, &e);
                if err.code.as_deref() == Some("PreconditionFailed") {
                    err.kind = ErrorKind::AlreadyExists;
                }
                err
            })
    }

    async fn put_if(
        &self,
        key: &str,
        body: &str,
        etag: Option<&str>,
    ) -> Result<Option<String>, CallError> {
        let put = self.put_object(key, body);
        let put = match etag {
            Some(etag) => put.if_match(etag),
            None => put.if_none_match("*"),
        };
        match put.send().await {
            Ok(answer) => answered_etag(key, answer.e_tag()).map(Some),
            Err(e) => {
                let err = classify(SERVICE, "PutObject", &e);
                match err.code.as_deref() {
                    // 409 ConditionalRequestConflict: a concurrent conditional write won.
                    Some(
                        "PreconditionFailed" | "412" | "NoSuchKey" | "ConditionalRequestConflict",
                    ) => Ok(None),
                    _ => Err(err),
                }
            }
        }
    }

    async fn delete(&self, key: &str) -> Result<(), CallError> {
        match self
            .client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => {
                let err = classify(SERVICE, "DeleteObject", &e);
                if err.code.as_deref() == Some("NoSuchKey") {
                    Ok(())
                } else {
                    Err(err)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_marker_is_json_and_the_others_are_text() {
        assert_eq!(content_type("home/alice/x.cf-status"), "application/json");
        assert_eq!(
            content_type("home/alice/x.cf-created"),
            "text/plain; charset=utf-8"
        );
        assert_eq!(
            content_type("home/alice/x.cf-status.cf-failed"),
            "text/plain; charset=utf-8"
        );
    }
}
