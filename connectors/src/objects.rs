//! Object storage: whole objects under one prefix of a bucket, listed, read, written and
//! deleted through a blocking API, on Apache Arrow's `object_store` crate.
//!
//! The engine keeps its checkpoints here when several replicas must share them, so that a
//! partition's state moves with it from one replica to another (DESIGN.md, "Scale-out"). URLs:
//! `s3://bucket/prefix` (Amazon S3 and S3-compatible stores such as MinIO or Ceph; credentials
//! and region from the usual `AWS_*` environment variables, as the AWS SDKs read them, then
//! from the options), `file:///path` and `memory://` (one process; for tests).
//!
//! The calls block the calling thread on a runtime of their own (one worker thread), so the
//! engine's loop and its checkpoint threads use it like a file system and no async code leaks
//! out of this module. An S3 `PUT` replaces an object whole or not at all, so a reader sees the
//! old object or the new one, never a torn one.

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::path::Path as ObjectPath;
use object_store::{ClientOptions, ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// How long one request may take before it fails (the client's own retries included); a
/// write gets a second more for every [`MIN_WRITE_RATE`] bytes it sends.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Bytes a second below which a large write is given up: 1 MiB/s.
pub const MIN_WRITE_RATE: u64 = 1 << 20;

/// How long reading one object may take: a checkpoint is read whole, hundreds of MB, in one
/// request (its size is not known before the answer).
pub const READ_TIMEOUT: Duration = Duration::from_secs(600);

/// The S3 client's own timeout of one request, unless the options set `timeout`:
/// object_store's default of 30 s is too short for a checkpoint's `GET` below about 8 MB/s.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(300);

/// Objects larger than this are written as a multipart upload in parts of this size, each
/// its own request with its own retries (S3 takes at most 5 GB in one `PUT`, and a single
/// request of a few hundred MB outlasts the client's 30 s request timeout on a slow link).
/// The object appears only when the upload completes, whole.
pub const PART_BYTES: usize = 16 << 20;

/// Parts of a multipart upload in flight at once.
const PARTS_IN_FLIGHT: usize = 4;

/// An object storage request failed, or its URL or options are wrong.
#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    /// The URL does not name a store this build supports.
    #[error("object store URL `{url}`: {detail}")]
    Url {
        /// The URL.
        url: String,
        /// What is wrong with it.
        detail: String,
    },
    /// An option is unknown to the store, or its value is wrong.
    #[error("object store option `{key}`: {detail}")]
    Option {
        /// The option's key.
        key: String,
        /// What is wrong with it.
        detail: String,
    },
    /// A request failed.
    #[error("object store {what} {location}: {source}")]
    Request {
        /// What was being done.
        what: &'static str,
        /// The object or prefix, as a URL.
        location: String,
        /// The error.
        #[source]
        source: object_store::Error,
    },
    /// The runtime the requests run on could not start.
    #[error("object store runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

/// Objects under one prefix of a store. Cheap to clone: clones share the client.
#[derive(Clone)]
pub struct ObjectStorage {
    store: Arc<dyn ObjectStore>,
    /// The prefix, without a trailing `/`.
    prefix: ObjectPath,
    /// The URL of the store's root, for messages (`s3://bucket`).
    root: String,
    runtime: Arc<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for ObjectStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectStorage")
            .field("url", &self.url(""))
            .finish_non_exhaustive()
    }
}

impl ObjectStorage {
    /// Opens the store at `url` with `options` (for S3, the keys of `object_store`'s
    /// `AmazonS3ConfigKey`: `aws_endpoint`, `aws_region`, `aws_allow_http`, ...; they override
    /// the environment). Makes no request.
    pub fn open(url: &str, options: &BTreeMap<String, String>) -> Result<Self, ObjectError> {
        let bad_url = |detail: String| ObjectError::Url {
            url: url.to_owned(),
            detail,
        };
        let parsed = url::Url::parse(url).map_err(|e| bad_url(e.to_string()))?;
        let (store, prefix): (Arc<dyn ObjectStore>, ObjectPath) = match parsed.scheme() {
            "s3" => {
                let mut builder = AmazonS3Builder::from_env()
                    .with_url(url)
                    .with_client_options(ClientOptions::new().with_timeout(CLIENT_TIMEOUT));
                for (key, value) in options {
                    let k: AmazonS3ConfigKey = key.parse().map_err(|e| ObjectError::Option {
                        key: key.clone(),
                        detail: format!("{e}"),
                    })?;
                    builder = builder.with_config(k, value);
                }
                let store = builder.build().map_err(|e| bad_url(e.to_string()))?;
                let prefix =
                    ObjectPath::from_url_path(parsed.path()).map_err(|e| bad_url(e.to_string()))?;
                (Arc::new(store), prefix)
            }
            "memory" | "file" => {
                if let Some(key) = options.keys().next() {
                    return Err(ObjectError::Option {
                        key: key.clone(),
                        detail: format!("`{}://` takes no options", parsed.scheme()),
                    });
                }
                let (store, prefix) =
                    object_store::parse_url(&parsed).map_err(|e| bad_url(e.to_string()))?;
                (Arc::from(store), prefix)
            }
            other => {
                return Err(bad_url(format!(
                    "`{other}://` is not supported (s3://, file:// and memory:// are)"
                )));
            }
        };
        let root = match parsed.host_str() {
            Some(host) => format!("{}://{host}", parsed.scheme()),
            None => format!("{}://", parsed.scheme()),
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("cordon-objects")
            .enable_all()
            .build()
            .map_err(ObjectError::Runtime)?;
        Ok(Self {
            store,
            prefix,
            root,
            runtime: Arc::new(runtime),
        })
    }

    /// The objects under `segment` below this prefix.
    pub fn child(&self, segment: &str) -> Self {
        Self {
            prefix: self.prefix.clone().join(segment),
            ..self.clone()
        }
    }

    /// The URL of `name` under this prefix (the prefix itself for `""`), for messages.
    pub fn url(&self, name: &str) -> String {
        let path = self.path(name);
        format!("{}/{path}", self.root)
    }

    fn path(&self, name: &str) -> ObjectPath {
        if name.is_empty() {
            self.prefix.clone()
        } else {
            self.prefix.clone().join(name)
        }
    }

    fn request<T>(
        &self,
        what: &'static str,
        name: &str,
        fut: impl Future<Output = Result<T, object_store::Error>>,
    ) -> Result<T, ObjectError> {
        self.request_within(REQUEST_TIMEOUT, what, name, fut)
    }

    fn request_within<T>(
        &self,
        timeout: Duration,
        what: &'static str,
        name: &str,
        fut: impl Future<Output = Result<T, object_store::Error>>,
    ) -> Result<T, ObjectError> {
        let timed = async {
            match tokio::time::timeout(timeout, fut).await {
                Ok(r) => r,
                Err(_) => Err(object_store::Error::Generic {
                    store: "cordon",
                    source: format!("no answer within {timeout:?}").into(),
                }),
            }
        };
        self.runtime
            .block_on(timed)
            .map_err(|source| ObjectError::Request {
                what,
                location: self.url(name),
                source,
            })
    }

    /// One level of the prefix: the objects and the prefixes directly under it.
    fn listing(&self) -> Result<object_store::ListResult, ObjectError> {
        let prefix = self.prefix.clone();
        self.request("listing", "", async {
            self.store.list_with_delimiter(Some(&prefix)).await
        })
    }

    /// The names of the objects directly under this prefix (not in deeper levels).
    pub fn list(&self) -> Result<Vec<String>, ObjectError> {
        let listing = self.listing()?;
        let names = listing.objects.iter().map(|o| o.location.filename());
        Ok(names.flatten().map(str::to_owned).collect())
    }

    /// The names of the prefixes directly under this prefix (`p0`, `p1`, ...).
    pub fn list_dirs(&self) -> Result<Vec<String>, ObjectError> {
        let listing = self.listing()?;
        let names = listing.common_prefixes.iter().map(|p| p.filename());
        Ok(names.flatten().map(str::to_owned).collect())
    }

    /// The object `name`, or `None` when there is none.
    pub fn get(&self, name: &str) -> Result<Option<Vec<u8>>, ObjectError> {
        let path = self.path(name);
        let got = self.request_within(READ_TIMEOUT, "reading", name, async {
            match self.store.get(&path).await {
                Ok(r) => r.bytes().await.map(Some),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        })?;
        // `Vec::from` keeps the downloaded buffer when nothing else holds it, and copies otherwise.
        Ok(got.map(Vec::from))
    }

    /// Writes `chunks`, one after another, as the object `name`, replacing any: with one
    /// `PUT` up to [`PART_BYTES`], as a multipart upload beyond. The chunks are sent as they
    /// are, not copied into one buffer: a checkpoint's parts are hundreds of MB.
    pub fn put(
        &self,
        name: &str,
        chunks: impl IntoIterator<Item = Vec<u8>>,
    ) -> Result<(), ObjectError> {
        let path = self.path(name);
        let chunks: Vec<bytes::Bytes> = chunks.into_iter().map(bytes::Bytes::from).collect();
        let size: usize = chunks.iter().map(bytes::Bytes::len).sum();
        let timeout = REQUEST_TIMEOUT + Duration::from_secs(size as u64 / MIN_WRITE_RATE);
        self.request_within(timeout, "writing", name, async {
            if size <= PART_BYTES {
                let payload: PutPayload = chunks.into_iter().collect();
                return self.store.put(&path, payload).await.map(|_| ());
            }
            let upload = self.store.put_multipart(&path).await?;
            let mut parts = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
            for chunk in chunks {
                if let Err(e) = parts.wait_for_capacity(PARTS_IN_FLIGHT).await {
                    let _ = parts.abort().await;
                    return Err(e);
                }
                parts.put(chunk);
            }
            parts.finish().await.map(|_| ())
        })
    }

    /// Deletes the object `name` (no error when there is none).
    pub fn delete(&self, name: &str) -> Result<(), ObjectError> {
        let path = self.path(name);
        self.request("deleting", name, async {
            match self.store.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(e),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_are_written_listed_read_and_deleted() {
        let root = ObjectStorage::open("memory://", &BTreeMap::new()).expect("open");
        let store = root.child("requests").child("p3");
        assert_eq!(store.list().expect("list"), Vec::<String>::new());
        assert_eq!(store.get("a.bin").expect("get"), None);
        store
            .put("a.bin", [b"he".to_vec(), b"llo".to_vec()])
            .expect("put");
        store.put("b.bin", [b"x".to_vec()]).expect("put");
        root.child("requests")
            .child("p3")
            .child("deeper")
            .put("c.bin", [b"y".to_vec()])
            .expect("put");
        let mut names = store.list().expect("list");
        names.sort();
        assert_eq!(names, ["a.bin", "b.bin"], "only this level");
        assert_eq!(
            store.get("a.bin").expect("get").as_deref(),
            Some(&b"hello"[..])
        );
        assert_eq!(root.child("requests").list_dirs().expect("dirs"), ["p3"]);
        store.delete("a.bin").expect("delete");
        store.delete("a.bin").expect("deleting nothing is no error");
        assert_eq!(store.list().expect("list"), ["b.bin"]);
        assert_eq!(store.url("b.bin"), "memory:///requests/p3/b.bin");
    }

    #[test]
    fn a_large_object_goes_up_in_parts_and_reads_back_whole() {
        let store = ObjectStorage::open("memory://", &BTreeMap::new()).expect("open");
        // Chunks of uneven sizes across part boundaries, 2.5 parts in all.
        let whole: Vec<u8> = (0..PART_BYTES * 5 / 2).map(|i| (i % 251) as u8).collect();
        let cuts = [0, 7, PART_BYTES - 3, PART_BYTES + 11, whole.len()];
        let chunks: Vec<Vec<u8>> = cuts
            .windows(2)
            .map(|w| whole[w[0]..w[1]].to_vec())
            .collect();
        store.put("big.bin", chunks).expect("put");
        let back = store.get("big.bin").expect("get").expect("there");
        assert!(
            back == whole,
            "{} bytes back of {}",
            back.len(),
            whole.len()
        );
    }

    #[test]
    fn bad_urls_and_options_are_named() {
        let none = BTreeMap::new();
        let err = ObjectStorage::open("gs://bucket/x", &none).expect_err("scheme");
        assert!(
            err.to_string().contains("`gs://` is not supported"),
            "{err}"
        );
        let err = ObjectStorage::open("not a url", &none).expect_err("url");
        assert!(err.to_string().contains("`not a url`"), "{err}");
        let options = BTreeMap::from([("aws_endpointt".to_owned(), "x".to_owned())]);
        let err = ObjectStorage::open("s3://bucket/x", &options).expect_err("option");
        assert!(err.to_string().contains("`aws_endpointt`"), "{err}");
        let options = BTreeMap::from([("anything".to_owned(), "x".to_owned())]);
        let err = ObjectStorage::open("memory://", &options).expect_err("option");
        assert!(err.to_string().contains("takes no options"), "{err}");
    }
}
