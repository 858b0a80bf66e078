//! Getting a module's bytes from its source: a file on the host, a key of a
//! ConfigMap's `binaryData` in Graft's namespace, or an https URL (size-capped,
//! with a timeout). Nothing here trusts the bytes: the caller verifies the
//! sha256 before it does anything else with them.

use std::io::Read;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use graft_crds::{ModuleSource, SourceRef};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::{Api, Client};

use crate::module_file::MAX_MODULE_BYTES;

/// How many redirects a download follows.
const MAX_REDIRECTS: usize = 5;

/// Limits on getting a module.
#[derive(Debug, Clone, Copy)]
pub struct FetchLimits {
    /// A download (connect, redirects and body) must finish within this.
    pub timeout: Duration,
    /// Larger modules are refused.
    pub max_bytes: u64,
}

impl Default for FetchLimits {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(60),
            max_bytes: MAX_MODULE_BYTES,
        }
    }
}

/// Reads modules from any of the three sources.
pub struct ModuleFetcher {
    configmaps: Api<ConfigMap>,
    namespace: String,
    host_root: PathBuf,
    https: HttpsFetcher,
    limits: FetchLimits,
}

impl ModuleFetcher {
    pub fn new(client: Client, namespace: &str, host_root: &Path, limits: FetchLimits) -> Self {
        Self {
            configmaps: Api::namespaced(client, namespace),
            namespace: namespace.to_string(),
            host_root: host_root.to_path_buf(),
            https: HttpsFetcher::new(limits),
            limits,
        }
    }

    /// A short description of a source, for messages.
    pub fn describe(&self, source: &ModuleSource) -> String {
        match source.get() {
            Some(SourceRef::HostPath(p)) => format!("hostPath {p}"),
            Some(SourceRef::Url(u)) => format!("url {u}"),
            Some(SourceRef::ConfigMap(cm)) => {
                format!("ConfigMap {}/{} key {}", self.namespace, cm.name, cm.key)
            }
            None => "an invalid source".to_string(),
        }
    }

    /// The module's bytes, or why they could not be had.
    pub async fn fetch(&self, source: &ModuleSource) -> Result<Vec<u8>, String> {
        match source.get() {
            Some(SourceRef::HostPath(path)) => {
                let full = host_path(&self.host_root, path)?;
                let max = self.limits.max_bytes;
                tokio::task::spawn_blocking(move || read_capped(&full, max))
                    .await
                    .map_err(|e| format!("reading the module file failed: {e}"))?
            }
            Some(SourceRef::ConfigMap(cm)) => {
                let map = self.configmaps.get(&cm.name).await.map_err(|e| match e {
                    kube::Error::Api(s) if s.code == 404 => format!(
                        "ConfigMap {}/{} does not exist; create it with `kubectl -n {} create configmap {} --from-file={}=<module.ko>`",
                        self.namespace, cm.name, self.namespace, cm.name, cm.key
                    ),
                    kube::Error::Api(s) if s.code == 403 => format!(
                        "not allowed to read ConfigMap {}/{} (the agent's RBAC needs get on configmaps in {})",
                        self.namespace, cm.name, self.namespace
                    ),
                    e => format!("reading ConfigMap {}/{} failed: {e}", self.namespace, cm.name),
                })?;
                if let Some(bytes) = map.binary_data.as_ref().and_then(|d| d.get(&cm.key)) {
                    return Ok(bytes.0.clone());
                }
                let in_data = map.data.as_ref().is_some_and(|d| d.contains_key(&cm.key));
                Err(if in_data {
                    format!(
                        "ConfigMap {}/{} has key {} under data, not binaryData: a module is binary; \
                         create the ConfigMap with --from-file so kubectl puts it in binaryData",
                        self.namespace, cm.name, cm.key
                    )
                } else {
                    format!(
                        "ConfigMap {}/{} has no key {} in binaryData",
                        self.namespace, cm.name, cm.key
                    )
                })
            }
            Some(SourceRef::Url(url)) => self.https.get(url).await,
            None => Err(
                "the module source must set exactly one of hostPath, url or configMap".to_string(),
            ),
        }
    }
}

/// Where a host path is seen from inside the agent's container.
pub fn host_path(host_root: &Path, path: &str) -> Result<PathBuf, String> {
    let p = Path::new(path);
    if !p.is_absolute() || p.components().any(|c| c == Component::ParentDir) {
        return Err(format!(
            "hostPath {path:?} must be an absolute path without '..' components"
        ));
    }
    Ok(host_root.join(p.strip_prefix("/").unwrap_or(p)))
}

fn read_capped(path: &Path, max: u64) -> Result<Vec<u8>, String> {
    let unreadable = |e: std::io::Error| format!("cannot read {}: {e}", path.display());
    let file = std::fs::File::open(path).map_err(unreadable)?;
    let meta = file.metadata().map_err(unreadable)?;
    if !meta.is_file() {
        return Err(format!("{} is not a regular file", path.display()));
    }
    if meta.len() > max {
        return Err(format!(
            "{} is {} bytes, more than the {max} a livepatch module may be",
            path.display(),
            meta.len()
        ));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(unreadable)?;
    if bytes.len() as u64 > max {
        return Err(format!(
            "{} grew past {max} bytes while being read",
            path.display()
        ));
    }
    Ok(bytes)
}

/// Downloads over https (rustls, the system's CA certificates), following a
/// few redirects, with a size cap and an overall timeout.
pub struct HttpsFetcher {
    client: Result<HttpClient<HttpsConnector<HttpConnector>, Empty<Bytes>>, String>,
    limits: FetchLimits,
    allow_http: bool,
}

impl HttpsFetcher {
    pub fn new(limits: FetchLimits) -> Self {
        Self::build(limits, false)
    }

    /// Also allows plain http: for tests against a local server only.
    pub fn allowing_plain_http_for_tests(limits: FetchLimits) -> Self {
        Self::build(limits, true)
    }

    fn build(limits: FetchLimits, allow_http: bool) -> Self {
        let builder = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_native_roots(rustls::crypto::ring::default_provider())
            .map_err(|e| {
                format!("no CA certificates to verify https downloads with (install ca-certificates): {e}")
            });
        let client = builder.map(|b| {
            let b = if allow_http {
                b.https_or_http()
            } else {
                b.https_only()
            };
            HttpClient::builder(TokioExecutor::new()).build(b.enable_http1().build())
        });
        Self {
            client,
            limits,
            allow_http,
        }
    }

    pub async fn get(&self, url: &str) -> Result<Vec<u8>, String> {
        let client = self.client.as_ref().map_err(Clone::clone)?;
        let timeout = self.limits.timeout;
        tokio::time::timeout(timeout, self.get_following(client, url))
            .await
            .map_err(|_| {
                format!(
                    "downloading {url} did not finish within {}",
                    humantime::format_duration(timeout)
                )
            })?
    }

    async fn get_following(
        &self,
        client: &HttpClient<HttpsConnector<HttpConnector>, Empty<Bytes>>,
        url: &str,
    ) -> Result<Vec<u8>, String> {
        let mut current: http::Uri = url
            .parse()
            .map_err(|e| format!("{url:?} is not a URL: {e}"))?;
        for _ in 0..=MAX_REDIRECTS {
            let scheme_ok = match current.scheme_str() {
                Some("https") => true,
                Some("http") => self.allow_http,
                _ => false,
            };
            if !scheme_ok {
                return Err(format!(
                    "{current} is not an https URL; modules are only downloaded over https"
                ));
            }
            let request = http::Request::get(current.clone())
                .header(
                    http::header::USER_AGENT,
                    concat!("graft-agent/", env!("CARGO_PKG_VERSION")),
                )
                .body(Empty::<Bytes>::new())
                .map_err(|e| format!("bad request for {current}: {e}"))?;
            let response = client
                .request(request)
                .await
                .map_err(|e| format!("downloading {current} failed: {e}"))?;
            let status = response.status();
            if status.is_redirection() {
                let location = response
                    .headers()
                    .get(http::header::LOCATION)
                    .and_then(|l| l.to_str().ok())
                    .ok_or_else(|| format!("{current} answered {status} without a Location"))?;
                current = resolve(&current, location)?;
                continue;
            }
            if !status.is_success() {
                return Err(format!("{current} answered HTTP {status}"));
            }
            let max = self.limits.max_bytes;
            let declared = response
                .headers()
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            if declared.is_some_and(|n| n > max) {
                return Err(format!(
                    "{current} is {} bytes, more than the {max} a livepatch module may be",
                    declared.unwrap_or_default()
                ));
            }
            let body = Limited::new(response.into_body(), max as usize)
                .collect()
                .await
                .map_err(|e| {
                    if e.is::<http_body_util::LengthLimitError>() {
                        format!("{current} is more than the {max} bytes a livepatch module may be")
                    } else {
                        format!("downloading {current} failed: {e}")
                    }
                })?;
            return Ok(body.to_bytes().to_vec());
        }
        Err(format!("{url} redirected more than {MAX_REDIRECTS} times"))
    }
}

fn resolve(base: &http::Uri, location: &str) -> Result<http::Uri, String> {
    if location.starts_with('/') {
        let scheme = base.scheme_str().unwrap_or("https");
        let authority = base.authority().map(|a| a.as_str()).unwrap_or_default();
        format!("{scheme}://{authority}{location}")
    } else {
        location.to_string()
    }
    .parse()
    .map_err(|e| format!("bad redirect Location {location:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A one-shot local HTTP server answering every request with `response`.
    async fn serve(responses: Vec<Vec<u8>>) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            for response in responses {
                let (mut conn, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 4096];
                let _ = conn.read(&mut buf).await;
                let _ = conn.write_all(&response).await;
                let _ = conn.shutdown().await;
            }
        });
        addr
    }

    fn ok(body: &[u8]) -> Vec<u8> {
        let mut r = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        r.extend_from_slice(body);
        r
    }

    fn limits(max: u64, timeout_ms: u64) -> FetchLimits {
        FetchLimits {
            timeout: Duration::from_millis(timeout_ms),
            max_bytes: max,
        }
    }

    #[tokio::test]
    async fn downloads_and_follows_redirects() {
        let addr = serve(vec![
            b"HTTP/1.1 302 Found\r\nlocation: /real.ko\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                .to_vec(),
            ok(b"module bytes"),
        ])
        .await;
        let f = HttpsFetcher::allowing_plain_http_for_tests(limits(1024, 5000));
        let bytes = f.get(&format!("http://{addr}/patch.ko")).await.unwrap();
        assert_eq!(bytes, b"module bytes");
    }

    #[tokio::test]
    async fn refuses_modules_over_the_size_cap() {
        let addr = serve(vec![ok(&[7u8; 100])]).await;
        let f = HttpsFetcher::allowing_plain_http_for_tests(limits(10, 5000));
        let err = f.get(&format!("http://{addr}/big.ko")).await.unwrap_err();
        assert!(err.contains("more than the 10"), "{err}");

        // A server that does not say the length is cut off at the cap too.
        let mut chunked = b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n".to_vec();
        chunked.extend_from_slice(&[7u8; 100]);
        let addr = serve(vec![chunked]).await;
        let err = f.get(&format!("http://{addr}/big.ko")).await.unwrap_err();
        assert!(err.contains("more than the 10"), "{err}");
    }

    #[tokio::test]
    async fn gives_up_after_the_timeout() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _hold = tokio::spawn(async move {
            let (_conn, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(30)).await;
        });
        let f = HttpsFetcher::allowing_plain_http_for_tests(limits(1024, 200));
        let err = f.get(&format!("http://{addr}/slow.ko")).await.unwrap_err();
        assert!(err.contains("did not finish within"), "{err}");
    }

    #[tokio::test]
    async fn plain_http_and_other_schemes_are_refused() {
        let f = HttpsFetcher::new(limits(1024, 1000));
        for url in ["http://127.0.0.1:9/x.ko", "ftp://example.invalid/x.ko"] {
            let err = f.get(url).await.unwrap_err();
            assert!(
                err.contains("only downloaded over https") || err.contains("CA certificates"),
                "{url}: {err}"
            );
        }
    }

    #[test]
    fn host_paths_stay_under_the_host_root() {
        assert_eq!(
            host_path(Path::new("/host"), "/var/lib/graft/p.ko").unwrap(),
            PathBuf::from("/host/var/lib/graft/p.ko")
        );
        assert_eq!(
            host_path(Path::new("/"), "/var/lib/graft/p.ko").unwrap(),
            PathBuf::from("/var/lib/graft/p.ko")
        );
        assert!(host_path(Path::new("/host"), "/var/../etc/shadow").is_err());
        assert!(host_path(Path::new("/host"), "relative.ko").is_err());
    }

    #[test]
    fn host_files_are_size_capped() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.ko");
        std::fs::write(&p, [1u8; 32]).unwrap();
        assert_eq!(read_capped(&p, 32).unwrap().len(), 32);
        assert!(
            read_capped(&p, 31)
                .unwrap_err()
                .contains("more than the 31")
        );
        assert!(
            read_capped(dir.path(), 31)
                .unwrap_err()
                .contains("not a regular file")
        );
    }
}
