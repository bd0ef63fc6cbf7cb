//! Finding and reading kubeconfig files the way kubectl does: `KUBECONFIG`'s files merged (the
//! first to set a value wins, missing files skipped), UTF-8 or UTF-16 with a byte-order mark,
//! relative paths taken from the file's directory, and an error that names the file. The YAML
//! itself is kube-rs's ([`Kubeconfig::from_yaml`]): what kubectl accepts, anchors, aliases and
//! merge keys included, is read the same way.

use std::path::{Path, PathBuf};

use kube::config::Kubeconfig;

/// Why a kubeconfig file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KubeconfigError {
    /// The file could not be read.
    #[error("cannot read it")]
    Read(#[source] std::io::Error),
    /// The file is not UTF-8 (or UTF-16 with a byte-order mark).
    #[error("it is not {0} text")]
    Encoding(&'static str),
    /// No `current-context` is set (for example, the file is empty), so there is nothing to
    /// connect to; kube-rs would only say it "failed to determine current context".
    #[error("it sets no current-context{}", if *.0 { " (it is empty)" } else { "" })]
    NoCurrentContext(bool),
    /// kube-rs refused the configuration (no current context, a missing cluster, mismatched
    /// documents, ...).
    #[error(transparent)]
    Kube(#[from] kube::config::KubeconfigError),
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
    let mut config = Kubeconfig::from_yaml(&text)?;
    if let Some(dir) = path.parent() {
        absolute_paths(&mut config, dir);
    }
    Ok(config)
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
