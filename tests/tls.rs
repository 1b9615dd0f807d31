//! TLS on the gRPC listener, with real handshakes: certificates made for the test by a
//! generated CA; client certificates required when a client CA is configured; the command
//! line over https.

mod common;

use artifactd::proto::WhoAmIRequest;
use artifactd::proto::access_service_client::AccessServiceClient;
use common::binary::{ADMIN_KEY, Authed, Bearer, ServerOptions, ServerProcess, command};
use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair};
use std::path::Path;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    /// A CA, a server certificate for 127.0.0.1 and localhost, and a client certificate
    /// signed by it; and a stranger's client certificate signed by another CA.
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: String| std::fs::write(dir.path().join(name), text).unwrap();
        let ca = |name: &str| {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.distinguished_name.push(rcgen::DnType::CommonName, name);
            let cert = params.self_signed(&key).unwrap();
            (Issuer::new(params, key), cert)
        };
        let (authority, authority_cert) = ca("artifactd test CA");
        let (stranger, _) = ca("someone else's CA");
        write("ca.pem", authority_cert.pem());
        let leaf = |names: Vec<String>,
                    usage: ExtendedKeyUsagePurpose,
                    issuer: &Issuer<'_, KeyPair>,
                    prefix: &str| {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(names).unwrap();
            params.extended_key_usages = vec![usage];
            let cert = params.signed_by(&key, issuer).unwrap();
            write(&format!("{prefix}.pem"), cert.pem());
            write(&format!("{prefix}-key.pem"), key.serialize_pem());
        };
        leaf(
            vec!["localhost".into(), "127.0.0.1".into()],
            ExtendedKeyUsagePurpose::ServerAuth,
            &authority,
            "server",
        );
        leaf(
            vec!["agent".into()],
            ExtendedKeyUsagePurpose::ClientAuth,
            &authority,
            "client",
        );
        leaf(
            vec!["intruder".into()],
            ExtendedKeyUsagePurpose::ClientAuth,
            &stranger,
            "intruder",
        );
        Self { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    fn read(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.dir.path().join(name)).unwrap()
    }
}

async fn connect(
    server: &ServerProcess,
    pki: &Pki,
    client: Option<&str>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(pki.read("ca.pem")))
        .domain_name("localhost");
    if let Some(name) = client {
        tls = tls.identity(Identity::from_pem(
            pki.read(&format!("{name}.pem")),
            pki.read(&format!("{name}-key.pem")),
        ));
    }
    Channel::from_shared(format!("https://{}", server.grpc))
        .unwrap()
        .tls_config(tls)?
        .connect()
        .await
}

async fn who(channel: Channel) -> Result<String, tonic::Status> {
    let mut access = AccessServiceClient::new(Authed::new(channel, Bearer::new(&ADMIN_KEY)));
    Ok(access.who_am_i(WhoAmIRequest {}).await?.into_inner().subject)
}

fn tls_server(pki: &Pki, client_ca: bool) -> ServerProcess {
    let mut options = ServerOptions::default()
        .env("ARTIFACTD_SERVER__TLS__CERT_FILE", pki.path("server.pem"))
        .env("ARTIFACTD_SERVER__TLS__KEY_FILE", pki.path("server-key.pem"));
    if client_ca {
        options = options.env("ARTIFACTD_SERVER__TLS__CLIENT_CA_FILE", pki.path("ca.pem"));
    }
    ServerProcess::start_with(options)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_listener_serves_over_a_real_handshake_and_refuses_plaintext() {
    let pki = Pki::new();
    let server = tls_server(&pki, false);
    let subject = who(connect(&server, &pki, None).await.unwrap()).await.unwrap();
    assert_eq!(subject, format!("key:{}", &ADMIN_KEY[4..20]));
    // Plaintext to a TLS port never gets an answer.
    let plain = match Channel::from_shared(server.endpoint()).unwrap().connect().await {
        Ok(channel) => who(channel).await.map_err(|status| status.code()),
        Err(_) => Err(tonic::Code::Unavailable),
    };
    assert!(plain.is_err(), "{plain:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_ca_admits_only_the_clients_it_signed() {
    let pki = Pki::new();
    let server = tls_server(&pki, true);
    let admitted = who(connect(&server, &pki, Some("client")).await.unwrap()).await;
    assert!(admitted.is_ok(), "{admitted:?}");
    for refused in [None, Some("intruder")] {
        let outcome = match connect(&server, &pki, refused).await {
            Ok(channel) => who(channel).await.map(|_| ()).map_err(|status| status.code()),
            Err(_) => Err(tonic::Code::Unavailable),
        };
        assert!(outcome.is_err(), "{refused:?} got in");
    }

    // The command line speaks TLS too, with the CA and its own certificate.
    let ls = |cert: bool| {
        let mut command = command();
        command
            .args(["ls", "--json"])
            .env(
                "ARTIFACTD_ADDR",
                format!("https://localhost:{}", server.grpc.port()),
            )
            .env("ARTIFACTD_TOKEN", ADMIN_KEY.as_str())
            .env("ARTIFACTD_CA_FILE", pki.path("ca.pem"));
        if cert {
            command
                .env("ARTIFACTD_CERT_FILE", pki.path("client.pem"))
                .env("ARTIFACTD_KEY_FILE", pki.path("client-key.pem"));
        }
        command.output().unwrap()
    };
    let listed = ls(true);
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    let refused = ls(false);
    assert!(!refused.status.success(), "no client certificate, no answer");
    assert!(Path::new(&pki.path("ca.pem")).exists());
}

#[test]
fn half_a_tls_configuration_is_refused_at_start() {
    let output = command()
        .arg("check-config")
        .env("ARTIFACTD_SERVER__TLS__CERT_FILE", "/nowhere/cert.pem")
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("server.tls.cert_file and server.tls.key_file"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
