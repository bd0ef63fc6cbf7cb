//! Finding and reading kubeconfig files the way kubectl does: `KUBECONFIG`'s files merged (the
//! first to set a value wins, missing files skipped), UTF-8 or UTF-16 with a byte-order mark,
//! relative paths taken from the file's directory, and an error that names the file. The YAML
//! itself is kube-rs's ([`Kubeconfig::from_yaml`]), or, with the opt-in feature `lean-client`,
//! leasehold's own reader (`yaml`, which says why), which reads what kubectl accepts into the
//! same types: anchors, aliases and merge keys included.

use std::path::{Path, PathBuf};

use kube::config::Kubeconfig;

/// Why a kubeconfig file could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KubeconfigError {
    /// The file could not be read.
    #[error("cannot read it")]
    Read(#[source] std::io::Error),
    /// The YAML is malformed, uses a feature kubeconfigs do not need (tags, complex keys), or
    /// does not fit the kubeconfig schema; the error names the line (feature `lean-client`).
    #[cfg(feature = "lean-client")]
    #[error("{0}")]
    Yaml(super::yaml::YamlError),
    /// The file is not UTF-8 (or UTF-16 with a byte-order mark).
    #[error("it is not {0} text")]
    Encoding(&'static str),
    /// No `current-context` is set (for example, the file is empty), so there is nothing to
    /// connect to; kube-rs would only say it "failed to determine current context".
    #[error("it sets no current-context{}", if *.0 { " (it is empty)" } else { "" })]
    NoCurrentContext(bool),
    /// The proxy URL (the cluster's `proxy-url`, else `HTTPS_PROXY`) is not a URL.
    #[error("{field} `{value}` is not a URL")]
    ProxyUrl {
        /// `proxy-url`, or the environment variable it came from.
        field: &'static str,
        /// The value.
        value: String,
        /// Why it is not a URL.
        source: http::uri::InvalidUri,
    },
    /// The cluster's `tls-server-name` cannot name a server.
    #[error("tls-server-name `{0}` is neither a host name nor an IP address")]
    TlsServerName(String),
    /// kube-rs refused the configuration (no current context, a missing cluster, mismatched
    /// documents, ...).
    #[error(transparent)]
    Kube(#[from] kube::config::KubeconfigError),
}

// === impl KubeconfigError ===

impl KubeconfigError {
    /// kube-rs's error for `config`, naming the field it comes from where kube-rs does not.
    pub(crate) fn from_kube(e: kube::config::KubeconfigError, config: &Kubeconfig) -> Self {
        match e {
            kube::config::KubeconfigError::ParseProxyUrl(source) => {
                // kube-rs takes `HTTPS_PROXY` (or `https_proxy`) when the cluster has none.
                let from_env = |name: &'static str| {
                    std::env::var(name)
                        .ok()
                        .filter(|v| !v.is_empty())
                        .map(|v| (name, v))
                };
                let (field, value) = proxy_url(config)
                    .map(|v| ("proxy-url", v.to_owned()))
                    .or_else(|| from_env("HTTPS_PROXY"))
                    .or_else(|| from_env("https_proxy"))
                    .unwrap_or(("proxy-url", String::new()));
                Self::ProxyUrl {
                    field,
                    value,
                    source,
                }
            }
            other => Self::Kube(other),
        }
    }
}

/// Checks what kube-rs takes from a kubeconfig without looking at it, so that the error names
/// the field rather than what failed later (a TLS library's "invalid dns name").
pub(crate) fn check(config: &kube::Config) -> Result<(), KubeconfigError> {
    match &config.tls_server_name {
        Some(name) if !is_server_name(name) => Err(KubeconfigError::TlsServerName(name.clone())),
        _ => Ok(()),
    }
}

/// Whether `name` can be a TLS server name: an IP address, or a DNS name (letters, digits, `-`
/// and `_` in dot-separated labels of 1 to 63, none starting or ending with `-`, 253 in all,
/// one trailing dot allowed). No stricter than rustls, which also refuses an all-numeric last
/// label.
fn is_server_name(name: &str) -> bool {
    if name.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    let labels = name.strip_suffix('.').unwrap_or(name);
    !labels.is_empty()
        && name.len() <= 253
        && labels.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// The `proxy-url` of the current context's cluster, if set.
fn proxy_url(config: &Kubeconfig) -> Option<&str> {
    let context = config.current_context.as_deref()?;
    let cluster = config
        .contexts
        .iter()
        .find(|c| c.name == context)?
        .context
        .as_ref()?
        .cluster
        .as_str();
    config
        .clusters
        .iter()
        .find(|c| c.name == cluster)?
        .cluster
        .as_ref()?
        .proxy_url
        .as_deref()
        .filter(|p| !p.is_empty())
}

/// Reads one kubeconfig file; several documents in it are merged, the first to set a value
/// wins. Relative file paths in it (certificates, keys, token files, an exec command with a
/// `/`) are made absolute against the file's directory, as kubectl does.
///
/// # Errors
/// A [`KubeconfigError`]; kube-rs's YAML errors say where in the file.
pub fn read_from(path: &Path) -> Result<Kubeconfig, KubeconfigError> {
    let bytes = std::fs::read(path).map_err(KubeconfigError::Read)?;
    let text = decode(bytes)?;
    let mut config = parse(&text)?;
    if let Some(dir) = path.parent() {
        absolute_paths(&mut config, dir);
    }
    Ok(config)
}

/// All documents of `text`, merged (the first to set a value wins).
fn parse(text: &str) -> Result<Kubeconfig, KubeconfigError> {
    #[cfg(feature = "lean-client")]
    {
        use super::yaml;
        let mut merged = Kubeconfig::default();
        for doc in &yaml::parse(text).map_err(KubeconfigError::Yaml)? {
            let config: Kubeconfig = yaml::from_node(doc).map_err(KubeconfigError::Yaml)?;
            merged = merged.merge(config)?;
        }
        Ok(merged)
    }
    #[cfg(not(feature = "lean-client"))]
    {
        Ok(Kubeconfig::from_yaml(text)?)
    }
}

/// The kubeconfig files to use when none is given: each path in `KUBECONFIG` that exists (as
/// kubectl, missing ones are skipped), else `~/.kube/config` if it exists.
pub(crate) fn default_paths() -> Vec<PathBuf> {
    if let Some(list) = std::env::var_os("KUBECONFIG") {
        let paths: Vec<PathBuf> = std::env::split_paths(&list)
            .filter(|p| !p.as_os_str().is_empty())
            .collect();
        if !paths.is_empty() {
            return paths.into_iter().filter(|p| p.exists()).collect();
        }
    }
    std::env::home_dir()
        .map(|home| home.join(".kube").join("config"))
        .filter(|p| p.exists())
        .into_iter()
        .collect()
}

/// Reads and merges `paths` (the first file to set a value wins).
///
/// # Errors
/// The path that failed and why.
pub(crate) fn read_merged(paths: &[PathBuf]) -> Result<Kubeconfig, (PathBuf, KubeconfigError)> {
    let mut merged = Kubeconfig::default();
    for path in paths {
        let next = read_from(path).map_err(|e| (path.clone(), e))?;
        merged = merged.merge(next).map_err(|e| (path.clone(), e.into()))?;
    }
    Ok(merged)
}

/// kubectl reads UTF-8, with or without a byte-order mark, and UTF-16 with one.
fn decode(bytes: Vec<u8>) -> Result<String, KubeconfigError> {
    let utf16 = |rest: &[u8], from: fn([u8; 2]) -> u16, name| {
        if !rest.len().is_multiple_of(2) {
            return Err(KubeconfigError::Encoding(name));
        }
        let units: Vec<u16> = rest.chunks_exact(2).map(|c| from([c[0], c[1]])).collect();
        String::from_utf16(&units).map_err(|_| KubeconfigError::Encoding(name))
    };
    match bytes.as_slice() {
        [0xFF, 0xFE, rest @ ..] => utf16(rest, u16::from_le_bytes, "UTF-16LE"),
        [0xFE, 0xFF, rest @ ..] => utf16(rest, u16::from_be_bytes, "UTF-16BE"),
        [0xEF, 0xBB, 0xBF, rest @ ..] => {
            String::from_utf8(rest.to_vec()).map_err(|_| KubeconfigError::Encoding("UTF-8"))
        }
        _ => String::from_utf8(bytes).map_err(|_| KubeconfigError::Encoding("UTF-8")),
    }
}

fn absolute_paths(config: &mut Kubeconfig, dir: &Path) {
    let absolute = |file: &mut Option<String>| {
        if let Some(f) = file.as_deref()
            && Path::new(f).is_relative()
            && let Some(abs) = dir.join(f).to_str()
        {
            *file = Some(abs.to_owned());
        }
    };
    for named in &mut config.clusters {
        if let Some(cluster) = &mut named.cluster {
            absolute(&mut cluster.certificate_authority);
        }
    }
    for named in &mut config.auth_infos {
        if let Some(auth) = &mut named.auth_info {
            absolute(&mut auth.client_certificate);
            absolute(&mut auth.client_key);
            absolute(&mut auth.token_file);
            // A bare command (`aws`) is looked up in PATH; only one with a separator is a path.
            if let Some(exec) = &mut auth.exec
                && exec
                    .command
                    .as_deref()
                    .is_some_and(|c| c.contains(std::path::MAIN_SEPARATOR))
            {
                absolute(&mut exec.command);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> Result<Kubeconfig, KubeconfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config");
        std::fs::write(&path, text).unwrap();
        read_from(&path)
    }

    #[test]
    fn anchors_aliases_and_merge_keys_are_read_as_kubectl_reads_them() {
        // Hand-kept kubeconfigs share settings this way; kubectl (Go's yaml.v3) accepts it.
        let text = "apiVersion: v1\nkind: Config\n\
                    x-cluster: &base\n  server: https://127.0.0.1:6443\n  insecure-skip-tls-verify: true\n\
                    clusters:\n- name: a\n  cluster:\n    <<: *base\n    tls-server-name: api.internal\n\
                    - name: b\n  cluster: *base\n\
                    users:\n- name: u\n  user:\n    token: abc\n\
                    contexts:\n- name: c\n  context:\n    cluster: a\n    user: u\n\
                    current-context: c\n";
        let config = read(text).unwrap();
        let a = config.clusters[0].cluster.as_ref().unwrap();
        assert_eq!(a.server.as_deref(), Some("https://127.0.0.1:6443"));
        assert_eq!(a.insecure_skip_tls_verify, Some(true));
        assert_eq!(a.tls_server_name.as_deref(), Some("api.internal"));
        let b = config.clusters[1].cluster.as_ref().unwrap();
        assert_eq!(b.server.as_deref(), Some("https://127.0.0.1:6443"));
    }

    #[test]
    fn malformed_yaml_is_an_error_not_a_panic() {
        for text in [
            "kind: \"Config\n",
            "users: [a, b\n",
            "clusters: yes\n",
            "clusters:\n- name: a\n  cluster:\n    insecure-skip-tls-verify: maybe\n",
        ] {
            let e = read(text).expect_err(text);
            assert!(!e.to_string().is_empty(), "{text:?}");
        }
        let deep = format!("a: {}{}\n", "[".repeat(10_000), "]".repeat(10_000));
        assert!(read(&deep).is_err());
    }

    /// leasehold's own reader (feature `lean-client`) against kube-rs's, on what people and
    /// tools write.
    #[cfg(feature = "lean-client")]
    mod lean {
        use super::*;
        use crate::backend::kubernetes::yaml;

        /// What kube-rs's own reader makes of `text`, as JSON, to compare with ours.
        fn theirs(text: &str) -> serde_json::Value {
            let config = Kubeconfig::from_yaml(text).expect("kube-rs reads it");
            serde_json::to_value(config).unwrap()
        }

        fn ours(text: &str) -> serde_json::Value {
            let docs = yaml::parse(text).unwrap_or_else(|e| panic!("{e}"));
            let mut merged = Kubeconfig::default();
            for doc in &docs {
                let config: Kubeconfig = yaml::from_node(doc).unwrap_or_else(|e| panic!("{e}"));
                merged = merged.merge(config).unwrap();
            }
            serde_json::to_value(merged).unwrap()
        }

        fn same(text: &str) {
            assert_eq!(ours(text), theirs(text), "for:\n{text}");
        }

        const KUBECTL: &str = r#"apiVersion: v1
clusters:
- cluster:
    certificate-authority-data: LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCk1JSUMvakNDQWVhZ0F3SUJBZ0lCQURBTkJna3Foa2lHOXcwQkFRc0ZBREFWTVJNd0VRWURWUVFERXdwcmRXSmwKY201bGRHVnpNQjRYRFRJeU1ERXdOVEV4TkRjd04xb1hEVE15TURFd016RXhORGN3TjFvd0ZURVRNQkVHQTFVRQpBeE1LYTNWaVpYSnVaWFJsY3pDQ0FTSXdEUVlKS29aSWh2Y05BUUVCQlFBRGdnRVBBRENDQVFvQ2dnRUJBTXBHCi0tLS0tRU5EIENFUlRJRklDQVRFLS0tLS0K
    server: https://127.0.0.1:6443
  name: kind-kind
- cluster:
    insecure-skip-tls-verify: true
    server: https://10.0.0.1
    proxy-url: http://proxy:3128
    tls-server-name: api.internal
  name: "123"
contexts:
- context:
    cluster: kind-kind
    user: kind-kind
    namespace: team-a
  name: kind-kind
current-context: kind-kind
kind: Config
preferences: {}
users:
- name: kind-kind
  user:
    client-certificate-data: Y2VydA==
    client-key-data: a2V5
- name: eks
  user:
    exec:
      apiVersion: client.authentication.k8s.io/v1beta1
      args:
      - --region
      - eu-west-1
      - eks
      - get-token
      - --cluster-name
      - prod
      command: aws
      env:
      - name: AWS_PROFILE
        value: prod
      interactiveMode: IfAvailable
      provideClusterInfo: false
- name: gke
  user:
    auth-provider:
      config:
        access-token: ya29.abc
        cmd-args: config config-helper --format=json
        cmd-path: /usr/lib/google-cloud-sdk/bin/gcloud
        expiry: "2026-11-21T10:00:00Z"
        expiry-key: '{.credential.token_expiry}'
        token-key: '{.credential.access_token}'
      name: gcp
- name: token
  user:
    token: abc.def.ghi
    username: admin
    password: s3cr3t
"#;

        #[test]
        fn reads_what_kubectl_and_cloud_clis_write_as_kube_rs_does() {
            same(KUBECTL);
        }

        /// The shapes minikube, GKE's and AKS's credential plugins, and `oc login` write.
        #[test]
        fn reads_what_minikube_gke_aks_and_openshift_write_as_kube_rs_does() {
            same(
                "apiVersion: v1\n\
             clusters:\n\
             - cluster:\n    \
                 certificate-authority: /home/me/.minikube/ca.crt\n    \
                 extensions:\n    \
                 - extension:\n        \
                     last-update: Sat, 21 Nov 2026 10:00:00 UTC\n        \
                     provider: minikube.sigs.k8s.io\n        \
                     version: v1.34.0\n      \
                   name: cluster_info\n    \
                 server: https://192.168.49.2:8443\n  \
               name: minikube\n\
             - cluster:\n    \
                 server: https://api.crc.testing:6443\n  \
               name: api-crc-testing:6443\n\
             contexts:\n\
             - context:\n    \
                 cluster: minikube\n    \
                 extensions:\n    \
                 - extension:\n        \
                     last-update: Sat, 21 Nov 2026 10:00:00 UTC\n        \
                     provider: minikube.sigs.k8s.io\n        \
                     version: v1.34.0\n      \
                   name: context_info\n    \
                 namespace: default\n    \
                 user: minikube\n  \
               name: minikube\n\
             - context:\n    \
                 cluster: api-crc-testing:6443\n    \
                 namespace: default\n    \
                 user: kubeadmin/api-crc-testing:6443\n  \
               name: default/api-crc-testing:6443/kubeadmin\n\
             current-context: minikube\n\
             kind: Config\n\
             preferences: {}\n\
             users:\n\
             - name: gke_proj_europe-west1_prod\n  \
               user:\n    \
                 exec:\n      \
                   apiVersion: client.authentication.k8s.io/v1beta1\n      \
                   command: gke-gcloud-auth-plugin\n      \
                   installHint: Install gke-gcloud-auth-plugin for use with kubectl by following\n        \
                     https://cloud.google.com/kubernetes-engine/docs/how-to/cluster-access-for-kubectl#install_plugin\n      \
                   provideClusterInfo: true\n\
             - name: clusterUser_rg_aks\n  \
               user:\n    \
                 exec:\n      \
                   apiVersion: client.authentication.k8s.io/v1beta1\n      \
                   args:\n      \
                   - get-token\n      \
                   - --environment\n      \
                   - AzurePublicCloud\n      \
                   - --server-id\n      \
                   - 6dae42f8-4368-4678-94ff-3960e28e3630\n      \
                   - --login\n      \
                   - devicecode\n      \
                   command: kubelogin\n      \
                   env: null\n      \
                   installHint: |2\n\n        \
                     kubelogin is not installed which is required to connect to AAD enabled cluster.\n\n        \
                     To learn more, please go to https://aka.ms/aks/kubelogin\n      \
                   interactiveMode: IfAvailable\n      \
                   provideClusterInfo: false\n\
             - name: kubeadmin/api-crc-testing:6443\n  \
               user:\n    \
                 token: sha256~AbCdEf0123456789\n",
            );
        }

        #[test]
        fn reads_the_other_styles_as_kube_rs_does() {
            // Sequences indented under their key, comments, quoting, flow collections, folded
            // and literal block scalars, multi-line plain and quoted values, several documents.
            same(
                "# leading comment\n\
             apiVersion: v1 # trailing comment\n\
             kind: 'Config'\n\
             clusters:\n  \
               - name: a\n    \
                 cluster: {server: \"https://a:6443\", insecure-skip-tls-verify: false}\n  \
               - name: b\n    \
                 cluster:\n      \
                   server: >-\n        \
                     https://b\n      \
                   certificate-authority: ca.crt\n\
             users:\n\
             - name: u\n  \
               user:\n    \
                 token: |-\n      \
                   line one\n    \
                 exec:\n      \
                   command: \"/usr/bin/get\\ttoken\"\n      \
                   args: [\"a b\", 'c''d', e]\n      \
                   apiVersion: client.authentication.k8s.io/v1\n\
             contexts:\n\
             - name: c\n  \
               context:\n    \
                 cluster: a\n    \
                 user: u\n    \
                 extensions:\n    \
                 - name: ext\n      \
                   extension: {a: 1, b: [true, null, 2.5, x], c: \"5\"}\n\
             current-context: c\n\
             ---\n\
             clusters: []\n\
             users: ~\n\
             preferences:\n  \
               colors: true\n",
            );
            same(
                "users:\n\
             - name: long\n  \
               user:\n    \
                 token: this is a long value that an emitter\n      \
                   folded onto the next line\n    \
                 username: \"a quoted value that was\n      \
                   folded too\"\n",
            );
        }

        #[test]
        fn refuses_what_kubeconfigs_do_not_need_and_names_the_line() {
            for (text, line, needle) in [
                ("a: *x\n", 1, "names no anchor"),
                ("users: !!seq []\n", 1, "tags"),
                ("? complex\n: key\n", 1, "complex keys"),
                (
                    "clusters:\n- name: a\n- name: a\n  name: b\n",
                    4,
                    "duplicate key `name`",
                ),
                ("clusters:\n\t- name: a\n", 2, "tab"),
                ("kind: Config\n  apiVersion: v1\n", 2, "`: `"),
                ("kind: \"Config\n", 1, "unterminated"),
                ("users: [a, b\n", 1, "unterminated"),
                ("kind: \"\\q\"\n", 1, "unknown escape"),
                ("kind: Config\n- a\n", 2, "unexpected content"),
                ("kind: 'a' b\n", 1, "unexpected text"),
                ("--- kind: Config\n", 1, "`---` line"),
            ] {
                let e = yaml::parse(text).expect_err(text);
                assert_eq!(e.line, line, "{text:?}: {e}");
                assert!(e.to_string().contains(needle), "{text:?}: {e}");
            }
        }

        #[test]
        fn schema_mismatches_name_the_line() {
            for (text, line, needle) in [
                (
                    "clusters:\n- name: a\n  cluster:\n    insecure-skip-tls-verify: maybe\n",
                    4,
                    "boolean",
                ),
                ("clusters: yes\n", 1, "sequence"),
                (
                    "kind: Config\nusers:\n- user: {}\n",
                    3,
                    "missing field `name`",
                ),
                ("just a string\n", 1, "struct Kubeconfig"),
            ] {
                let docs = yaml::parse(text).unwrap();
                let e = yaml::from_node::<Kubeconfig>(&docs[0]).expect_err(text);
                assert_eq!(e.line, line, "{text:?}: {e}");
                assert!(e.to_string().contains(needle), "{text:?}: {e}");
            }
        }

        #[test]
        fn deep_nesting_is_an_error_not_a_crash() {
            let deep = format!("a: {}{}\n", "[".repeat(10_000), "]".repeat(10_000));
            assert!(yaml::parse(&deep).unwrap_err().message.contains("nested"));
            let mut block = String::new();
            for depth in 0..200 {
                block.push_str(&" ".repeat(depth));
                block.push_str("a:\n");
            }
            assert!(yaml::parse(&block).unwrap_err().message.contains("nested"));
        }

        #[test]
        fn anchors_aliases_and_merge_keys_read_as_kube_rs_reads_them() {
            same(
                "x-base: &base\n  server: https://a\n  insecure-skip-tls-verify: true\n\
                 clusters:\n- name: a\n  cluster:\n    <<: *base\n    server: https://b\n\
                 - name: b\n  cluster: *base\n- &c\n  name: c\n  cluster: {server: https://c}\n\
                 users:\n- name: u\n  user: &u {token: t}\n- name: v\n  user:\n    <<: [*u, {username: x}]\n\
                 current-context: a\n",
            );
        }

        #[test]
        fn aliases_cannot_expand_without_bound() {
            let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
            for i in 1..10 {
                let prev = format!("*a{}", i - 1);
                text.push_str(&format!("a{i}: &a{i} [{}]\n", vec![prev; 10].join(", ")));
            }
            let e = yaml::parse(&text).unwrap_err();
            assert!(e.to_string().contains("expand"), "{e}");
        }
    }

    #[test]
    fn server_names_are_checked_no_stricter_than_rustls() {
        for good in [
            "only-name.leasehold.test",
            "api.internal.",
            "kubernetes",
            "under_score.example",
            "127.0.0.1",
            "::1",
        ] {
            assert!(is_server_name(good), "{good}");
        }
        let long = format!("{}.example", "a".repeat(64));
        for bad in [
            "",
            ".",
            "not a host name",
            "a..b",
            "-a.example",
            "a-.example",
            "[::1]",
            "host:443",
            &long,
        ] {
            assert!(!is_server_name(bad), "{bad}");
        }
    }

    #[tokio::test]
    async fn a_proxy_url_that_is_not_a_url_is_named() {
        let config = read(
            "clusters:\n- name: a\n  cluster:\n    server: https://127.0.0.1:6443\n    \
             proxy-url: \"http://exa mple:80\"\n\
             users:\n- name: u\n  user: {}\n\
             contexts:\n- name: c\n  context: {cluster: a, user: u}\ncurrent-context: c\n",
        )
        .unwrap();
        let options = kube::config::KubeConfigOptions::default();
        let e = kube::Config::from_custom_kubeconfig(config.clone(), &options)
            .await
            .unwrap_err();
        let e = KubeconfigError::from_kube(e, &config);
        assert_eq!(e.to_string(), "proxy-url `http://exa mple:80` is not a URL");
        assert!(std::error::Error::source(&e).is_some());
    }

    #[test]
    fn files_are_decoded_merged_and_their_paths_made_absolute() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config");
        let text = "clusters:\n- name: a\n  cluster:\n    server: https://a\n    certificate-authority: ca.crt\n\
                    users:\n- name: u\n  user:\n    client-key: /abs/key\n    tokenFile: t\n    exec:\n      command: ./bin/tok\n\
                    - name: v\n  user:\n    exec:\n      command: aws\n";
        let mut utf16 = vec![0xFF, 0xFE];
        utf16.extend(text.encode_utf16().flat_map(u16::to_le_bytes));
        std::fs::write(&path, utf16).unwrap();
        let config = read_from(&path).unwrap();
        let d = dir.path().to_str().unwrap();
        let cluster = config.clusters[0].cluster.as_ref().unwrap();
        assert_eq!(
            cluster.certificate_authority.as_deref(),
            Some(&*format!("{d}/ca.crt"))
        );
        let user = config.auth_infos[0].auth_info.as_ref().unwrap();
        assert_eq!(user.client_key.as_deref(), Some("/abs/key"));
        assert_eq!(user.token_file.as_deref(), Some(&*format!("{d}/t")));
        let exec = user.exec.as_ref().unwrap();
        assert_eq!(exec.command.as_deref(), Some(&*format!("{d}/./bin/tok")));
        let bare = config.auth_infos[1]
            .auth_info
            .as_ref()
            .unwrap()
            .exec
            .as_ref()
            .unwrap();
        assert_eq!(bare.command.as_deref(), Some("aws"));

        std::fs::write(&path, b"kind: Config\nclusters:\n- \xff\n").unwrap();
        assert!(matches!(
            read_from(&path),
            Err(KubeconfigError::Encoding("UTF-8"))
        ));
        let missing = dir.path().join("missing");
        assert!(matches!(read_from(&missing), Err(KubeconfigError::Read(_))));
    }
}
