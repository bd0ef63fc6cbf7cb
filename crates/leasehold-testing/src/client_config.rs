//! Kubeconfigs for the fields a client must honour when leasehold builds it itself, against a
//! real kube-apiserver:
//!
//! - `proxy-url`: the cluster's URL names [`PROXIED_NAME`], a host name that resolves only
//!   inside a real HTTP CONNECT proxy ([`Tinyproxy`]), so a client that ignored `proxy-url`
//!   could not even resolve it; the proxy logs every tunnel;
//! - `tls-server-name`: the API server presents a certificate naming only [`SNI_NAME`], signed
//!   by a CA of its own, when (and only when) the client asks for that name; the cluster's URL is
//!   `https://127.0.0.1:PORT`;
//! - an HTTP/1.1-only API server (`--disable-http2-serving`) on the same etcd, where a client
//!   that tries HTTP/2 first must fall back;
//! - an exec credential plugin (a shell script) that counts its runs;
//! - YAML anchors, aliases and merge keys.

use crate::harness::{ADMIN_TOKEN, ApiServer, KubeServer, ServerOptions, Tinyproxy};
use std::{
    fs,
    path::{Path, PathBuf},
};

/// The only name on the certificate the API server presents for it.
pub const SNI_NAME: &str = "only-name.leasehold.test";

/// A host name that resolves to the API server only inside the proxy.
pub const PROXIED_NAME: &str = "apiserver.leasehold.test";

/// The user and password the second proxy ([`Setup::auth_proxy`]) asks for.
pub const PROXY_USER: (&str, &str) = ("lease", "s3cret");

/// The servers and the proxy, started once per test binary ([`shared`]).
#[derive(Debug)]
pub struct Setup {
    /// etcd + kube-apiserver (HTTP/2 and HTTP/1.1), answering to [`SNI_NAME`] and
    /// [`PROXIED_NAME`] with certificates of their own.
    pub server: KubeServer,
    /// A second kube-apiserver on the same etcd that speaks HTTP/1.1 only.
    pub http1: ApiServer,
    /// tinyproxy, resolving [`PROXIED_NAME`] to 127.0.0.1, open to both API servers' ports.
    pub proxy: Tinyproxy,
    /// Another tinyproxy, the same but asking for [`PROXY_USER`] (Basic authentication).
    pub auth_proxy: Tinyproxy,
    dir: PathBuf,
}

/// The [`Setup`] of this test binary, started on first use.
pub async fn shared() -> &'static Setup {
    static SETUP: tokio::sync::OnceCell<Setup> = tokio::sync::OnceCell::const_new();
    SETUP.get_or_init(Setup::start).await
}

// === impl Setup ===

impl Setup {
    /// Starts the servers and the proxies.
    ///
    /// # Panics
    /// If one does not come up.
    pub async fn start() -> Self {
        let options = ServerOptions::default().sni_names(&[SNI_NAME, PROXIED_NAME]);
        let server = KubeServer::start_with(options).await;
        let http1 = server
            .start_another_apiserver(&["--disable-http2-serving"])
            .await;
        let dir = server.dir().join("client-config");
        fs::create_dir_all(&dir).expect("client-config dir");
        let ports = [server.port(), http1.port()];
        let proxy = Tinyproxy::start(&dir, &[PROXIED_NAME], &ports, None).await;
        let auth_proxy = Tinyproxy::start(&dir, &[PROXIED_NAME], &ports, Some(PROXY_USER)).await;
        Self {
            server,
            http1,
            proxy,
            auth_proxy,
            dir,
        }
    }

    /// Another proxy like [`proxy`](Self::proxy) (or, with `basic_auth`, like
    /// [`auth_proxy`](Self::auth_proxy)), for a test that counts its tunnels or stops it.
    pub async fn start_proxy(&self, basic_auth: Option<(&str, &str)>) -> Tinyproxy {
        let ports = [self.server.port(), self.http1.port()];
        Tinyproxy::start(&self.dir, &[PROXIED_NAME], &ports, basic_auth).await
    }

    /// A kubeconfig for `https://127.0.0.1:port` as the harness writes them: the default
    /// certificate's CA and the admin token.
    pub fn direct(&self, port: u16) -> Kubeconfig {
        Kubeconfig {
            server: format!("https://127.0.0.1:{port}"),
            certificate_authority: self.server.ca(),
            tls_server_name: None,
            proxy_url: None,
            user: User::Token(ADMIN_TOKEN.to_owned()),
        }
    }

    /// A kubeconfig for `https://127.0.0.1:port` trusting only the CA of [`SNI_NAME`]'s
    /// certificate, with `tls-server-name` set to `tls_server_name`.
    pub fn sni(&self, port: u16, tls_server_name: Option<&str>) -> Kubeconfig {
        Kubeconfig {
            certificate_authority: self.server.sni_ca(),
            tls_server_name: tls_server_name.map(str::to_owned),
            ..self.direct(port)
        }
    }

    /// A kubeconfig for `https://apiserver.leasehold.test:port` (which resolves only inside the
    /// proxies), trusting only the CA of its certificate, with `proxy-url` set to `proxy_url`.
    pub fn proxied(&self, port: u16, proxy_url: Option<String>) -> Kubeconfig {
        Kubeconfig {
            server: format!("https://{PROXIED_NAME}:{port}"),
            certificate_authority: self.server.sni_ca(),
            tls_server_name: None,
            proxy_url,
            user: User::Token(ADMIN_TOKEN.to_owned()),
        }
    }

    /// `http://USER:PASSWORD@127.0.0.1:PORT` of `proxy`.
    pub fn proxy_url_with(proxy: &Tinyproxy, user: &str, password: &str) -> String {
        format!("http://{user}:{password}@127.0.0.1:{}", proxy.port())
    }

    /// Writes `yaml` as the kubeconfig `name`; returns its path.
    pub fn write(&self, name: &str, yaml: &str) -> PathBuf {
        let path = self.dir.join(format!("kubeconfig-{name}"));
        fs::write(&path, yaml).expect("kubeconfig");
        path
    }

    /// An exec credential plugin behaving as `plugin`, with a counter of its own.
    pub fn exec_plugin(&self, name: &str, plugin: Plugin) -> (User, Counter) {
        let script = self.dir.join("exec-plugin.sh");
        if !script.exists() {
            write_plugin(&script);
        }
        let counter = Counter(self.dir.join(format!("exec-runs-{name}")));
        let _ = fs::remove_file(&counter.0);
        let mut args = vec![counter.0.display().to_string()];
        args.extend(match plugin {
            Plugin::Token => vec!["token".to_owned()],
            Plugin::Expiring(secs) => vec!["expiring".to_owned(), secs.to_string()],
            Plugin::Fails => vec!["fail".to_owned()],
            Plugin::Garbage => vec!["garbage".to_owned()],
        });
        (
            User::Exec {
                command: script,
                args,
            },
            counter,
        )
    }

    /// A kubeconfig for the server written with anchors, aliases and merge keys, as people
    /// keep them by hand. Without the merge keys read, the context would name a cluster with
    /// a closed port and no CA, and a user without a token.
    pub fn anchored(&self) -> String {
        format!(
            "apiVersion: v1\n\
             kind: Config\n\
             clusters:\n\
             - name: unused\n  \
               cluster: &base\n    \
                 server: https://127.0.0.1:{closed}\n    \
                 certificate-authority: {ca}\n\
             - name: merged\n  \
               cluster:\n    \
                 <<: *base\n    \
                 server: https://127.0.0.1:{port}\n\
             - name: aliased\n  \
               cluster: *base\n\
             users:\n\
             - name: first\n  \
               user: &admin\n    \
                 token: {token}\n\
             - name: second\n  \
               user: *admin\n\
             contexts:\n\
             - name: base\n  \
               context: &ctx\n    \
                 cluster: aliased\n    \
                 user: first\n\
             - name: in-default\n  \
               context: &ns\n    \
                 cluster: aliased\n    \
                 user: first\n    \
                 namespace: default\n\
             - name: test\n  \
               context:\n    \
                 <<: [*ctx, *ns]\n    \
                 cluster: merged\n    \
                 user: second\n\
             current-context: test\n",
            closed = crate::harness::free_port(),
            ca = self.server.ca().display(),
            port = self.server.port(),
            token = ADMIN_TOKEN,
        )
    }
}

/// How the exec credential plugin behaves.
#[derive(Clone, Copy, Debug)]
pub enum Plugin {
    /// Prints an `ExecCredential` with the admin token and no expiry.
    Token,
    /// The same with an `expirationTimestamp` this many seconds ahead (kube-rs refreshes a
    /// token 60 s before it expires).
    Expiring(u32),
    /// Complains on stderr and exits 3.
    Fails,
    /// Prints something that is not an `ExecCredential`.
    Garbage,
}

/// Counts the runs of an exec credential plugin.
#[derive(Clone, Debug)]
pub struct Counter(PathBuf);

// === impl Counter ===

impl Counter {
    /// How many times the plugin has run.
    pub fn runs(&self) -> usize {
        fs::read_to_string(&self.0).map_or(0, |s| s.lines().count())
    }
}

/// The kubeconfig user.
#[derive(Clone, Debug)]
pub enum User {
    /// A bearer token.
    Token(String),
    /// An exec credential plugin.
    Exec {
        /// The program.
        command: PathBuf,
        /// Its arguments.
        args: Vec<String>,
    },
}

/// A kubeconfig of one cluster, user and context.
#[derive(Clone, Debug)]
pub struct Kubeconfig {
    /// `server`.
    pub server: String,
    /// `certificate-authority`.
    pub certificate_authority: PathBuf,
    /// `tls-server-name`.
    pub tls_server_name: Option<String>,
    /// `proxy-url`.
    pub proxy_url: Option<String>,
    /// The user.
    pub user: User,
}

// === impl Kubeconfig ===

impl Kubeconfig {
    /// With `user`.
    #[must_use]
    pub fn user(self, user: User) -> Self {
        Self { user, ..self }
    }

    /// With `tls-server-name: name`.
    #[must_use]
    pub fn tls_server_name(self, name: &str) -> Self {
        Self {
            tls_server_name: Some(name.to_owned()),
            ..self
        }
    }

    /// With `proxy-url: url`.
    #[must_use]
    pub fn proxy_url(self, url: &str) -> Self {
        Self {
            proxy_url: Some(url.to_owned()),
            ..self
        }
    }

    /// The YAML, as kubectl writes it.
    pub fn yaml(&self) -> String {
        let mut cluster = format!(
            "    server: {}\n    certificate-authority: {}\n",
            self.server,
            self.certificate_authority.display()
        );
        if let Some(name) = &self.tls_server_name {
            cluster.push_str(&format!("    tls-server-name: {}\n", quote(name)));
        }
        if let Some(url) = &self.proxy_url {
            cluster.push_str(&format!("    proxy-url: {}\n", quote(url)));
        }
        let user = match &self.user {
            User::Token(token) => format!("    token: {token}\n"),
            User::Exec { command, args } => {
                let mut s = format!(
                    "    exec:\n      apiVersion: client.authentication.k8s.io/v1\n      \
                     command: {}\n      interactiveMode: Never\n      args:\n",
                    command.display()
                );
                for a in args {
                    s.push_str(&format!("      - {}\n", quote(a)));
                }
                s
            }
        };
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n{cluster}\
             users:\n- name: test\n  user:\n{user}\
             contexts:\n- name: test\n  context:\n    cluster: test\n    user: test\n    \
             namespace: default\ncurrent-context: test\n"
        )
    }
}

/// A YAML double-quoted scalar.
fn quote(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

fn write_plugin(path: &Path) {
    let credential = |status: &str| {
        format!(
            "'{{\"apiVersion\":\"client.authentication.k8s.io/v1\",\"kind\":\"ExecCredential\",\"status\":{status}}}\\n'"
        )
    };
    let script = format!(
        "#!/bin/sh\n\
         # An exec credential plugin: counts its runs in $1, behaves as $2 says.\n\
         echo run >> \"$1\"\n\
         case \"$2\" in\n\
         token) printf {token} ;;\n\
         expiring) printf {expiring} \"$(date -u -d \"+$3 seconds\" +%Y-%m-%dT%H:%M:%SZ)\" ;;\n\
         fail) echo 'the plugin cannot reach its identity provider' >&2; exit 3 ;;\n\
         *) echo 'this is not an ExecCredential: {{' ;;\n\
         esac\n",
        token = credential(&format!("{{\"token\":\"{ADMIN_TOKEN}\"}}")),
        expiring = credential(&format!(
            "{{\"token\":\"{ADMIN_TOKEN}\",\"expirationTimestamp\":\"%s\"}}"
        )),
    );
    fs::write(path, script).expect("exec plugin");
    let mut perms = fs::metadata(path).expect("exec plugin").permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    fs::set_permissions(path, perms).expect("exec plugin mode");
}
