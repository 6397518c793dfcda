//! Authenticated peers and clients, end to end on loopback agents: a CA and certificates made by
//! `flotctl ca` (checked with `openssl`), a cluster over peer mutual TLS that refuses a member
//! from another CA, and an HTTPS client API with client certificates and tokens, driven by the
//! real `etcdctl`, `curl` and `flotctl`.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use flotilla_tests::agents::{Agent, Cluster, Security, flotctl, flotctl_ca_issue};
use flotilla_tests::testbed::wait_until;

const DEADLINE: Duration = Duration::from_secs(30);

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("the command runs")
}

pub(crate) fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A CA at `ca` with a client certificate for each of `clients`, and 3 agents with mutual TLS
/// on both ports (certificates from that CA).
pub(crate) fn mtls_cluster(ca: &Path, clients: &[&str]) -> Cluster {
    ca_init(ca);
    for client in clients {
        flotctl_ca_issue(ca, client, &[]).unwrap();
    }
    let security = Security {
        peer_ca: Some(ca.to_owned()),
        api_ca: Some(ca.to_owned()),
        ..Security::default()
    };
    Cluster::start_secure(3, "", security).expect("3 agents over mTLS start")
}

fn ca_init(dir: &Path) {
    let out = run(Command::new(flotctl().expect("flotctl builds"))
        .args(["ca", "init"])
        .arg(dir));
    assert!(out.status.success(), "{}", text(&out));
}

fn openssl_text(cert: &Path) -> String {
    let out = run(Command::new("openssl")
        .args(["x509", "-noout", "-text", "-in"])
        .arg(cert));
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `etcdctl` (v2) against `endpoints` with `tls` options.
fn etcdctl(endpoints: &str, tls: &[&str], args: &[&str]) -> Output {
    run(Command::new("etcdctl")
        .env("ETCDCTL_API", "2")
        .arg("--endpoints")
        .arg(endpoints)
        .args(tls)
        .args(args))
}

#[test]
fn flotctl_ca_makes_certificates_openssl_accepts() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pki");
    ca_init(&dir);
    flotctl_ca_issue(&dir, "n1", &["--ip", "127.0.0.1", "--dns", "n1.example"]).unwrap();

    let ca = openssl_text(&dir.join("ca.crt"));
    assert!(ca.contains("CA:TRUE"), "{ca}");
    assert!(ca.contains("Certificate Sign"), "{ca}");
    assert!(ca.contains("ecdsa-with-SHA256"), "{ca}");
    let leaf = openssl_text(&dir.join("n1.crt"));
    for want in [
        "Subject: O = flotilla, CN = n1",
        "TLS Web Server Authentication",
        "TLS Web Client Authentication",
        "IP Address:127.0.0.1",
        "DNS:n1.example",
        "CA:FALSE",
    ] {
        assert!(leaf.contains(want), "{want} missing in:\n{leaf}");
    }
    let verify = run(Command::new("openssl")
        .args(["verify", "-CAfile"])
        .arg(dir.join("ca.crt"))
        .arg(dir.join("n1.crt")));
    assert!(verify.status.success(), "{}", text(&verify));
    for key in ["ca.key", "n1.key"] {
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(dir.join(key)).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600, "{key}");
    }
    // No overwriting without --force.
    let again = run(Command::new(flotctl().unwrap())
        .args(["ca", "init"])
        .arg(&dir));
    assert!(!again.status.success(), "{}", text(&again));
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));
}

#[test]
fn peers_over_mutual_tls_replicate_and_refuse_another_ca() {
    let tmp = tempfile::tempdir().unwrap();
    let (ca, other) = (tmp.path().join("ca"), tmp.path().join("other"));
    ca_init(&ca);
    ca_init(&other);
    let security = Security {
        peer_ca: Some(ca.clone()),
        ..Security::default()
    };
    let mut cluster = Cluster::start_secure(3, "", security).expect("3 agents over mTLS start");
    let a = cluster.agents();
    let set = etcdctl(&a[0].client_url(), &[], &["set", "/message", "over tls"]);
    assert!(set.status.success(), "{}", text(&set));
    let url = a[2].client_url();
    wait_until(DEADLINE, "the write replicated to n3", || {
        let get = etcdctl(&url, &[], &["get", "/message"]);
        String::from_utf8_lossy(&get.stdout).trim() == "over tls"
    })
    .expect("replicated over mutual TLS");

    // The peer port speaks only mutual TLS: neither plain HTTP nor TLS without a certificate.
    let peer = format!("{}:2380", a[0].ip());
    let plain = run(Command::new("curl")
        .args(["-sS", "-m", "5", "-X", "POST"])
        .arg(format!("http://{peer}/cluster/heartbeat")));
    assert!(!plain.status.success(), "{}", text(&plain));
    let anonymous = run(Command::new("curl")
        .args(["-sS", "-m", "5", "-X", "POST", "--cacert"])
        .arg(ca.join("ca.crt"))
        .arg(format!("https://{peer}/cluster/heartbeat")));
    assert!(!anonymous.status.success(), "{}", text(&anonymous));
    // A certificate from the cluster CA that is a client's, not a member's, gets no further
    // than the handshake; a member's gets an answer.
    flotctl_ca_issue(&ca, "reader", &[]).unwrap();
    let with_cert = |name: &str| {
        run(Command::new("curl")
            .args([
                "-sS",
                "-m",
                "5",
                "-o",
                "/dev/null",
                "-X",
                "POST",
                "--cacert",
            ])
            .arg(ca.join("ca.crt"))
            .arg("--cert")
            .arg(ca.join(format!("{name}.crt")))
            .arg("--key")
            .arg(ca.join(format!("{name}.key")))
            .arg(format!("https://{peer}/cluster/heartbeat")))
    };
    let client = with_cert("reader");
    assert!(!client.status.success(), "{}", text(&client));
    let member = with_cert(a[1].name());
    assert!(member.status.success(), "{}", text(&member));

    // A fourth agent that trusts the cluster CA but holds a certificate from another CA
    // (an impostor: the CA certificate is public), and a fifth from another CA altogether,
    // cannot join: the member refuses the first's certificate (alert UnknownCA), the second
    // refuses the member's (UnknownIssuer).
    let impostor = tmp.path().join("impostor");
    std::fs::create_dir(&impostor).unwrap();
    for f in ["ca.crt", "ca.key"] {
        std::fs::copy(other.join(f), impostor.join(f)).unwrap();
    }
    let o = cluster.agents()[0].ip().octets();
    let n4_ip = std::net::Ipv4Addr::new(o[0], o[1], o[2], o[3] + 3).to_string();
    flotctl_ca_issue(&impostor, "n4", &["--ip", &n4_ip]).unwrap();
    std::fs::copy(ca.join("ca.crt"), impostor.join("ca.crt")).unwrap();
    let n4 = cluster
        .spawn_joiner(&impostor)
        .expect("the fourth agent starts");
    let n5 = cluster
        .spawn_joiner(&other)
        .expect("the fifth agent starts");
    for (rogue, refusal) in [(n4, "UnknownCA"), (n5, "UnknownIssuer")] {
        wait_until(DEADLINE, "three refused join attempts", || {
            cluster.agents()[rogue]
                .log()
                .matches("cannot join through this peer")
                .count()
                >= 3
        })
        .unwrap_or_else(|_| panic!("the joiner's log:\n{}", cluster.agents()[rogue].log()));
        let log = cluster.agents()[rogue].log();
        assert!(log.contains(refusal), "{log}");
    }
    // The member it knocked at refused it, and said so once per address, not once per attempt
    // (the joiner and curl above both connect from 127.0.0.1).
    let n1 = cluster.agents()[0].log();
    let refusals: Vec<&str> = n1
        .lines()
        .filter(|l| l.contains("refused a TLS connection from"))
        .collect();
    assert_eq!(refusals.len(), 1, "{n1}");
    assert!(refusals[0].contains("127.0.0.1"), "{n1}");
    // The cluster is undisturbed: three members, and writes still commit.
    let (code, members) = cluster.get(0, "/v2/members").expect("/v2/members answers");
    assert_eq!(code, 200, "{members}");
    assert_eq!(members.matches("\"name\"").count(), 3, "{members}");
    let member_urls: Vec<String> = cluster.agents()[..3]
        .iter()
        .map(|a| a.client_url())
        .collect();
    let set = etcdctl(&member_urls.join(","), &[], &["set", "/after", "still"]);
    assert!(set.status.success(), "{}", text(&set));
    cluster.kill(n4);
    cluster.kill(n5);
}

/// `flotctl ca token NAME --role ROLE --output json`: (token, the `[[api.users]]` table).
fn token(name: &str, role: &str) -> (String, String) {
    let out = run(Command::new(flotctl().unwrap())
        .args(["ca", "token", name, "--role", role, "--output", "json"]));
    assert!(out.status.success(), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let token = v["token"].as_str().unwrap().to_string();
    let table = format!(
        "[[api.users]]\nname = \"{name}\"\nrole = \"{role}\"\ntoken_sha256 = \"{}\"\n",
        v["token_sha256"].as_str().unwrap()
    );
    (token, table)
}

#[test]
fn https_api_takes_certificates_and_tokens_with_roles() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = tmp.path().join("ca");
    ca_init(&ca);
    let (reader, reader_user) = token("reader", "read");
    let (writer, writer_user) = token("writer", "write");
    flotctl_ca_issue(&ca, "writer", &[]).unwrap();
    let security = Security {
        peer_ca: Some(ca.clone()),
        api_ca: Some(ca.clone()),
        api_extra: format!("{reader_user}{writer_user}"),
        token: Some(reader.clone()),
    };
    let cluster = Cluster::start_secure(3, "", security).expect("3 secured agents start");
    let endpoints = cluster.endpoints();
    assert!(endpoints.starts_with("https://"), "{endpoints}");
    let ca_file = ca.join("ca.crt").display().to_string();
    let cert = ca.join("writer.crt").display().to_string();
    let key = ca.join("writer.key").display().to_string();

    // etcdctl with a client certificate (CN writer, the write role).
    let with_cert = [
        "--ca-file",
        ca_file.as_str(),
        "--cert-file",
        cert.as_str(),
        "--key-file",
        key.as_str(),
    ];
    let set = etcdctl(&endpoints, &with_cert, &["set", "/secure", "yes"]);
    assert!(set.status.success(), "{}", text(&set));
    let get = etcdctl(&endpoints, &with_cert, &["get", "/secure"]);
    assert_eq!(
        String::from_utf8_lossy(&get.stdout).trim(),
        "yes",
        "{}",
        text(&get)
    );

    // etcdctl with the read token (Basic auth): reads, and is refused a write.
    let user = format!("reader:{reader}");
    let with_token = ["--ca-file", ca_file.as_str(), "--username", user.as_str()];
    let url = cluster.agents()[1].client_url();
    wait_until(DEADLINE, "the write replicated to n2", || {
        let get = etcdctl(&url, &with_token, &["get", "/secure"]);
        String::from_utf8_lossy(&get.stdout).trim() == "yes"
    })
    .expect("a read token reads");
    let refused = etcdctl(&endpoints, &with_token, &["set", "/secure", "no"]);
    assert!(!refused.status.success(), "{}", text(&refused));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("read role"),
        "{}",
        text(&refused)
    );

    // curl: no credentials 401, the read token's write 403, both in etcd's error shape.
    let curl = |extra: &[&str]| {
        let out = run(Command::new("curl")
            .args([
                "-sS",
                "-m",
                "5",
                "-o",
                "-",
                "-w",
                "\n%{http_code}",
                "--cacert",
            ])
            .arg(&ca_file)
            .args(extra)
            .arg(format!("{url}/v2/keys/secure")));
        let body = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = body.rsplit_once('\n').unwrap_or_default();
        let body = format!("{body}{}", String::from_utf8_lossy(&out.stderr));
        (code.trim().to_string(), body)
    };
    let (code, body) = curl(&[]);
    assert_eq!(code, "401", "{body}");
    assert!(body.contains("\"errorCode\":110"), "{body}");
    let bearer = format!("Authorization: Bearer {reader}");
    let (code, body) = curl(&["-H", &bearer, "-X", "PUT", "-d", "value=no"]);
    assert_eq!(code, "403", "{body}");
    assert!(body.contains("\"errorCode\":110"), "{body}");
    let (code, body) = curl(&["-H", &bearer]);
    assert_eq!(code, "200", "{body}");

    // flotctl with --endpoint https://... --ca-file --token.
    let flotctl_kv = |token: &str, args: &[&str]| {
        run(Command::new(flotctl().unwrap())
            .args([
                "--endpoint",
                &url,
                "--ca-file",
                &ca_file,
                "--token",
                token,
                "kv",
            ])
            .args(args))
    };
    let set = flotctl_kv(&writer, &["set", "/from-flotctl", "hello"]);
    assert!(set.status.success(), "{}", text(&set));
    let get = flotctl_kv(&reader, &["get", "/from-flotctl"]);
    assert!(get.status.success(), "{}", text(&get));
    assert!(
        String::from_utf8_lossy(&get.stdout).contains("hello"),
        "{}",
        text(&get)
    );
    let refused = flotctl_kv(&reader, &["set", "/from-flotctl", "nope"]);
    assert!(!refused.status.success(), "{}", text(&refused));

    // A unit's status is read on the machine that runs it: n1 asks n2 over the peer channel,
    // which needs none of the client API's credentials.
    let unit = tmp.path().join("everywhere.service");
    std::fs::write(
        &unit,
        "[Service]\nExecStart=/bin/sleep infinity\n\n[X-Fleet]\nGlobal=true\n",
    )
    .unwrap();
    let start = run(Command::new(flotctl().unwrap())
        .args([
            "--endpoint",
            &url,
            "--ca-file",
            &ca_file,
            "--token",
            &writer,
        ])
        .args(["start", "--no-block"])
        .arg(&unit));
    assert!(start.status.success(), "{}", text(&start));
    let n1 = cluster.agents()[0].client_url();
    let n2 = cluster.agents()[1].name().to_owned();
    let status_url = format!("{n1}/flotilla/v1/units/everywhere.service/status?machine={n2}");
    let mut last = String::new();
    wait_until(DEADLINE, "n1 answers n2's status of the unit", || {
        let out = run(Command::new("curl")
            .args(["-sS", "-m", "15", "--cacert", &ca_file, "-H", &bearer])
            .arg(&status_url));
        last = text(&out);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        v["machine"] == n2.as_str() && v.get("output").is_some()
    })
    .unwrap_or_else(|e| panic!("{e}: {last}"));
}

/// Sends SIGHUP to `agent` (what `systemctl reload flotillad` does).
fn sighup(agent: &Agent) {
    let pid = agent.pid().expect("the agent runs").to_string();
    let out = run(Command::new("kill").args(["-HUP", &pid]));
    assert!(out.status.success(), "{}", text(&out));
}

/// Waits until `agent`'s log holds `want` at least `count` times.
fn wait_log(agent: &Agent, want: &str, count: usize) {
    wait_until(DEADLINE, want, || {
        agent.log().matches(want).count() >= count
    })
    .unwrap_or_else(|_| panic!("{want:?} x{count} not in the log:\n{}", agent.log()));
}

/// The certificate (PEM, whitespace removed) `addr` presents in a fresh handshake, read by
/// `openssl s_client` trusting `dir`'s CA and presenting `dir/client.crt` when given.
fn served_certificate(addr: &str, dir: &Path, client: Option<&str>) -> String {
    let mut cmd = Command::new("openssl");
    cmd.args(["s_client", "-connect", addr, "-CAfile"])
        .arg(dir.join("ca.crt"))
        .stdin(std::process::Stdio::null());
    if let Some(name) = client {
        cmd.arg("-cert")
            .arg(dir.join(format!("{name}.crt")))
            .arg("-key")
            .arg(dir.join(format!("{name}.key")));
    }
    let out = run(&mut cmd);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let begin = "-----BEGIN CERTIFICATE-----";
    let end = "-----END CERTIFICATE-----";
    match (stdout.find(begin), stdout.find(end)) {
        (Some(b), Some(e)) if b < e => pem_body(&stdout[b..e + end.len()]),
        _ => String::new(),
    }
}

fn pem_body(pem: &str) -> String {
    pem.split_whitespace().collect()
}

fn file_pem(path: &Path) -> String {
    pem_body(&std::fs::read_to_string(path).unwrap())
}

/// Adds `tls_crl = CRL` after every `tls_key` line of agent `name`'s config.
fn add_crl(cluster: &Cluster, name: &str, crl: &Path) {
    let config = cluster.dir().join(format!("{name}.toml"));
    let text = std::fs::read_to_string(&config).unwrap();
    let key_line_end = format!("{name}.key\"\n");
    assert!(text.contains(&key_line_end), "{text}");
    let with_crl = text.replace(
        &key_line_end,
        &format!("{key_line_end}tls_crl = \"{}\"\n", crl.display()),
    );
    std::fs::write(&config, with_crl).unwrap();
}

/// `curl` to `url` with `dir`'s CA and client certificate `name`: (status, stdout+stderr).
fn curl_as(dir: &Path, name: &str, extra: &[&str], url: &str) -> (bool, String) {
    let out = run(Command::new("curl")
        .args([
            "-sS",
            "-m",
            "10",
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
            "--cacert",
        ])
        .arg(dir.join("ca.crt"))
        .arg("--cert")
        .arg(dir.join(format!("{name}.crt")))
        .arg("--key")
        .arg(dir.join(format!("{name}.key")))
        .args(extra)
        .arg(url));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let code = stdout.trim_end().rsplit('\n').next().unwrap_or_default();
    let ok = out.status.success() && (code == "200" || code == "201");
    (ok, text(&out))
}

#[test]
fn a_renewed_certificate_is_used_after_reload_and_bad_files_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = tmp.path().join("ca");
    let cluster = mtls_cluster(&ca, &["writer"]);
    let a = cluster.agents();
    let n2 = &a[1];
    let (api, peer) = (format!("{}:2379", n2.ip()), format!("{}:2380", n2.ip()));
    let old = file_pem(&ca.join("n2.crt"));
    assert_eq!(served_certificate(&api, &ca, None), old);

    // (a) A renewed certificate and key (both sections name the same files), then SIGHUP: a
    // fresh connection gets the new certificate on the API and on the peer port.
    flotctl_ca_issue(
        &ca,
        "n2",
        &["--member", "--ip", &n2.ip().to_string(), "--force"],
    )
    .unwrap();
    let new = file_pem(&ca.join("n2.crt"));
    assert_ne!(new, old);
    sighup(n2);
    wait_log(n2, "reload: [cluster] TLS: new connections use", 1);
    wait_log(n2, "reload: [api] TLS: new connections use", 1);
    assert_eq!(served_certificate(&api, &ca, None), new);
    assert_eq!(served_certificate(&peer, &ca, Some("n1")), new);
    // The cluster still commits: a write through n2 (its peer client now presents the new
    // certificate to the leader) is read back on n3.
    let write = |value: &str| {
        curl_as(
            &ca,
            "writer",
            &["-X", "PUT", "-d", &format!("value={value}")],
            &format!("https://{api}/v2/keys/rotated"),
        )
    };
    let n3 = format!("https://{}:2379/v2/keys/rotated", a[2].ip());
    let (ok, out) = write("after-rotation");
    assert!(ok, "{out}");
    wait_until(DEADLINE, "n3 reads the write", || {
        curl_as(&ca, "writer", &[], &n3)
            .1
            .contains("after-rotation")
    })
    .expect("the write through n2 commits after the rotation");

    // (b) Bad files: a key that does not belong to the certificate. The agent keeps serving
    // with the running certificate and says which file and why, once per section.
    std::fs::copy(ca.join("n1.key"), ca.join("n2.key")).unwrap();
    sighup(n2);
    wait_log(n2, "reload: [cluster] TLS: ", 2);
    wait_log(n2, "reload: [api] TLS: ", 2);
    let log = n2.log();
    let errors: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("keeping the running certificates"))
        .collect();
    assert_eq!(errors.len(), 2, "{log}");
    for e in &errors {
        assert!(e.contains("n2.crt") && e.contains("n2.key"), "{e}");
        assert!(
            e.contains("do not make a usable certificate and key"),
            "{e}"
        );
    }
    assert_eq!(served_certificate(&api, &ca, None), new);
    assert_eq!(served_certificate(&peer, &ca, Some("n1")), new);
    let (ok, out) = write("after-bad-files");
    assert!(ok, "{out}");
    wait_until(DEADLINE, "n3 reads the second write", || {
        curl_as(&ca, "writer", &[], &n3)
            .1
            .contains("after-bad-files")
    })
    .expect("the write through n2 commits after a refused reload");
    assert!(n2.pid().is_some());
}

#[test]
fn revoked_member_and_client_certificates_are_refused_after_reload() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = tmp.path().join("ca");
    let cluster = mtls_cluster(&ca, &["writer", "mallory"]);
    let a = cluster.agents();
    let keys = |i: usize| format!("https://{}:2379/v2/keys/revocation", a[i].ip());
    let (ok, out) = curl_as(
        &ca,
        "mallory",
        &[],
        &format!("https://{}:2379/v2/keys", a[0].ip()),
    );
    assert!(ok, "mallory is not revoked yet: {out}");

    // Revoke n3 (a member) and mallory (a client); n1 and n2 load the list.
    for name in ["n3", "mallory"] {
        let out = run(Command::new(flotctl().unwrap())
            .args(["ca", "revoke"])
            .arg(&ca)
            .arg(name));
        assert!(out.status.success(), "{}", text(&out));
    }
    let crl = ca.join("ca.crl");
    // openssl agrees: the CA signed the list, and it names n3's serial.
    let checked = run(Command::new("openssl")
        .args(["crl", "-noout", "-text", "-in"])
        .arg(&crl)
        .arg("-CAfile")
        .arg(ca.join("ca.crt")));
    assert!(checked.status.success(), "{}", text(&checked));
    let serial = run(Command::new("openssl")
        .args(["x509", "-noout", "-serial", "-in"])
        .arg(ca.join("n3.crt")));
    let serial = String::from_utf8_lossy(&serial.stdout);
    let serial = serial.trim().trim_start_matches("serial=");
    let listing = text(&checked);
    assert!(
        !serial.is_empty() && listing.contains(serial),
        "{serial}: {listing}"
    );
    assert!(listing.contains("verify OK"), "{listing}");
    for agent in &a[..2] {
        add_crl(&cluster, agent.name(), &crl);
        sighup(agent);
        wait_log(agent, "TLS: new connections use", 2);
        assert!(
            !agent.log().contains("keeping the running certificates"),
            "{}",
            agent.log()
        );
    }

    // The client API refuses mallory's certificate and still takes writer's.
    let (ok, out) = curl_as(
        &ca,
        "mallory",
        &[],
        &format!("https://{}:2379/v2/keys", a[0].ip()),
    );
    assert!(!ok, "a revoked client certificate was accepted: {out}");
    let (ok, out) = curl_as(
        &ca,
        "writer",
        &[],
        &format!("https://{}:2379/v2/keys", a[0].ip()),
    );
    assert!(ok, "{out}");

    // n3 can no longer replicate: a write through it does not commit, while n1 and n2 (a
    // quorum) still commit theirs.
    let mut last = String::new();
    wait_until(Duration::from_secs(60), "a write through n3 fails", || {
        let (ok, out) = curl_as(
            &ca,
            "writer",
            &["-X", "PUT", "-d", "value=from-n3"],
            &keys(2),
        );
        last = out;
        !ok
    })
    .unwrap_or_else(|e| panic!("{e}: {last}\nn3's log:\n{}", a[2].log()));
    wait_until(DEADLINE, "a write through n1 commits on n2", || {
        curl_as(
            &ca,
            "writer",
            &["-X", "PUT", "-d", "value=from-n1"],
            &keys(0),
        )
        .0 && curl_as(&ca, "writer", &[], &keys(1)).1.contains("from-n1")
    })
    .unwrap_or_else(|e| panic!("{e}\nn1's log:\n{}", a[0].log()));
    // The members said why: their peer servers closed n3's connections or refused its
    // handshakes as revoked.
    let said = a[..2].iter().any(|m| {
        m.log().lines().any(|l| {
            l.contains(
                "peer server: closed the connection of n3: its client certificate was revoked",
            ) || (l.contains("peer server: refused a TLS connection") && l.contains("Revoked"))
        })
    });
    assert!(said, "n1:\n{}\nn2:\n{}", a[0].log(), a[1].log());
}
