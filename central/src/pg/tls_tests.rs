//! TLS to PostgreSQL against a private server started with `ssl=on` on a
//! loopback port, its certificate issued by a CA made here (rcgen, through
//! `outpost_proto::pki`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use outpost_proto::pki::{CertAuthority, write_private_file};

use super::{TlsMode, split};
use crate::pg::PgCentralStore;

#[test]
fn sslmode_and_sslrootcert_are_taken_out_of_urls_and_key_value_strings() {
    let (rest, mode, root) =
        split("postgres://u@db.example/outpost?sslmode=verify-full&sslrootcert=/etc/ca.pem&connect_timeout=5")
            .unwrap();
    assert_eq!(rest, "postgres://u@db.example/outpost?connect_timeout=5");
    assert_eq!(
        (mode, root.as_deref()),
        (TlsMode::VerifyFull, Some("/etc/ca.pem"))
    );
    let (rest, mode, _) =
        split("postgres://u@db/outpost?sslmode=require&sslrootcert=ca.pem").unwrap();
    assert_eq!(
        (rest.as_str(), mode),
        ("postgres://u@db/outpost", TlsMode::VerifyCa)
    );
    let (rest, mode, root) =
        split("host=db user=u sslmode=verify-ca sslrootcert=/ca.pem dbname=outpost").unwrap();
    assert_eq!(rest, "host=db user=u dbname=outpost");
    assert_eq!(
        (mode, root.as_deref()),
        (TlsMode::VerifyCa, Some("/ca.pem"))
    );
    // No sslmode: plain, as before; the string is untouched.
    let (rest, mode, _) = split("postgresql:///t0?host=/tmp/x&port=5432").unwrap();
    assert_eq!(
        (rest.as_str(), mode),
        ("postgresql:///t0?host=/tmp/x&port=5432", TlsMode::Disable)
    );
    for (url, why) in [
        (
            "postgres://u@db/o?sslmode=prefer",
            "may fall back to plain text",
        ),
        (
            "postgres://u@db/o?sslmode=allow",
            "may fall back to plain text",
        ),
        ("postgres://u@db/o?sslmode=verify", "unknown sslmode"),
        (
            "postgres://u@db/o?sslmode=verify-full",
            "needs sslrootcert=FILE",
        ),
    ] {
        let e = split(url).unwrap_err().to_string();
        assert!(e.contains(why), "{url}: {e}");
    }
}

/// A PostgreSQL server with `ssl=on` on 127.0.0.1 (stopped on drop).
struct TlsServer {
    dir: PathBuf,
    port: u16,
    user: String,
    child: Child,
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

impl TlsServer {
    /// `None` (with a skip message) when PostgreSQL is not installed.
    fn start(test: &str, ca: &CertAuthority) -> Option<TlsServer> {
        let Some(bin) = crate::pg::cluster::find_bin_dir() else {
            eprintln!("SKIP {test}: PostgreSQL server binaries not found");
            return None;
        };
        let root = is_root();
        let dir = std::env::temp_dir().join(format!(
            "outpost-pg-tls-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let srv = ca.issue_server_cert(&["localhost"]).unwrap();
        std::fs::write(dir.join("server.crt"), &srv.cert_pem).unwrap();
        write_private_file(&dir.join("server.key"), srv.key_pem.as_bytes()).unwrap();
        std::fs::write(dir.join("ca.crt"), ca.cert_pem()).unwrap();
        let as_server = |program: &Path| -> Command {
            if root {
                let mut c = Command::new("setpriv");
                c.args([
                    "--reuid=postgres",
                    "--regid=postgres",
                    "--init-groups",
                    "--reset-env",
                    "--",
                ])
                .arg(program);
                c
            } else {
                Command::new(program)
            }
        };
        if root {
            assert!(
                Command::new("chown")
                    .args(["-R", "postgres:postgres"])
                    .arg(&dir)
                    .status()
                    .unwrap()
                    .success()
            );
        }
        let user = if root {
            "postgres".to_string()
        } else {
            std::env::var("USER").unwrap_or_else(|_| "postgres".into())
        };
        let data = dir.join("data");
        let out = as_server(&bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-A", "trust", "-U", &user, "-E", "UTF8", "--no-sync"])
            .stdout(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = as_server(&bin.join("postgres"))
            .arg("-D")
            .arg(&data)
            .arg("-k")
            .arg(&dir)
            .args(["-c", "listen_addresses=127.0.0.1", "-p", &port.to_string()])
            .args(["-c", "ssl=on", "-c", "fsync=off"])
            .arg("-c")
            .arg(format!(
                "ssl_cert_file={}",
                dir.join("server.crt").display()
            ))
            .arg("-c")
            .arg(format!("ssl_key_file={}", dir.join("server.key").display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let server = TlsServer {
            dir,
            port,
            user,
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !std::fs::read_to_string(data.join("postmaster.pid"))
            .is_ok_and(|p| p.lines().any(|l| l.trim() == "ready"))
        {
            assert!(Instant::now() < deadline, "the TLS server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(server)
    }

    fn url(&self, host: &str, mode: &str, ca: &Path) -> String {
        format!(
            "postgresql://{}@{host}:{}/postgres?sslmode={mode}&sslrootcert={}",
            self.user,
            self.port,
            ca.display()
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn central_connects_over_verified_tls_and_refuses_a_wrong_ca_or_host_name_clearly() {
    let ca = CertAuthority::generate("pg test CA").unwrap();
    let Some(srv) = tokio::task::block_in_place(|| TlsServer::start("pg_tls", &ca)) else {
        return;
    };
    let ca_file = srv.dir.join("ca.crt");
    let connect = |url: String| async move {
        PgCentralStore::connect(&url, Default::default())
            .await
            .map_err(|e| e.to_string())
    };

    // verify-full: the chain and the name; the session is encrypted.
    let st = connect(srv.url("localhost", "verify-full", &ca_file))
        .await
        .unwrap();
    let c = st.client().await.unwrap();
    let ssl: bool = c
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(ssl, "the store's connection is TLS");
    // verify-ca (and require): the chain, not the name.
    for mode in ["verify-ca", "require"] {
        connect(srv.url("127.0.0.1", mode, &ca_file)).await.unwrap();
    }
    // verify-full by an address the certificate does not name: refused.
    let e = connect(srv.url("127.0.0.1", "verify-full", &ca_file))
        .await
        .unwrap_err();
    assert!(e.contains("does not name the host"), "{e}");
    // A CA that did not sign the server's certificate: refused.
    let other = CertAuthority::generate("someone else").unwrap();
    let other_file = srv.dir.join("other-ca.crt");
    std::fs::write(&other_file, other.cert_pem()).unwrap();
    for mode in ["verify-full", "verify-ca"] {
        let e = connect(srv.url("localhost", mode, &other_file))
            .await
            .unwrap_err();
        assert!(
            e.contains("not signed by a CA in sslrootcert"),
            "{mode}: {e}"
        );
    }
    // A CA file that is missing or holds no certificate.
    let e = connect(srv.url("localhost", "verify-full", &srv.dir.join("nope.pem")))
        .await
        .unwrap_err();
    assert!(e.contains("sslrootcert"), "{e}");
}
