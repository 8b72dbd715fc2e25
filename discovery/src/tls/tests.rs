use super::*;

/// A CA and `names`' certificates, as PEM: (ca, [(cert, key)]).
fn pki(names: &[&str]) -> (String, Vec<(String, String)>) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(params, ca_key);
    let issued = names
        .iter()
        .map(|n| {
            let key = rcgen::KeyPair::generate().unwrap();
            let cert = rcgen::CertificateParams::new(vec![n.to_string()])
                .unwrap()
                .signed_by(&key, &issuer)
                .unwrap();
            (cert.pem(), key.serialize_pem())
        })
        .collect();
    (ca_cert.pem(), issued)
}

fn pem(ca: &str, cert: &str, key: &str) -> Pem {
    Pem {
        ca: ca.into(),
        cert: cert.into(),
        key: key.into(),
    }
}

#[test]
fn a_changed_pair_replaces_the_configuration_and_a_mismatched_one_does_not() {
    let (ca, certs) = pki(&["tweet", "tweet"]);
    let tls = MeshTls::from_pem(pem(&ca, &certs[0].0, &certs[0].1)).unwrap();
    let first = tls.server_config();
    assert!(
        !tls.update(pem(&ca, &certs[0].0, &certs[0].1)).unwrap(),
        "unchanged"
    );
    assert!(Arc::ptr_eq(&first, &tls.server_config()));

    // A rotation caught between its two files: the new key beside the old certificate.
    let half = tls.update(pem(&ca, &certs[0].0, &certs[1].1));
    assert!(
        half.is_err(),
        "a key that is not the certificate's is refused"
    );
    assert!(
        Arc::ptr_eq(&first, &tls.server_config()),
        "the old pair stays"
    );

    assert!(tls.update(pem(&ca, &certs[1].0, &certs[1].1)).unwrap());
    assert!(
        !Arc::ptr_eq(&first, &tls.server_config()),
        "the new pair is used"
    );
    let clone = tls.clone();
    assert!(
        Arc::ptr_eq(&clone.client_config(), &tls.client_config()),
        "clones share it"
    );
}

#[test]
fn bad_files_are_named_in_the_error() {
    let (ca, certs) = pki(&["tweet"]);
    let e = MeshTls::from_pem(pem("not a pem", &certs[0].0, &certs[0].1))
        .unwrap_err()
        .to_string();
    assert!(e.contains("ca.crt"), "{e}");
    let e = MeshTls::from_pem(pem(&ca, "", &certs[0].1))
        .unwrap_err()
        .to_string();
    assert!(e.contains("certificate"), "{e}");
    let e = MeshTls::from_pem(pem(&ca, &certs[0].0, "junk"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("key"), "{e}");
    let dir = std::env::temp_dir().join("starling-no-such-dir");
    let e = Files::new(&dir, "tweet").read().unwrap_err().to_string();
    assert!(e.contains("ca.crt") && e.contains("cannot read"), "{e}");
}

/// A peer that connects and says nothing holds up no one: the next caller's handshake
/// completes while the silent one waits for its timeout.
#[tokio::test]
async fn a_silent_peer_does_not_block_other_handshakes() {
    let (ca, certs) = pki(&["svc", "caller"]);
    let server = MeshTls::from_pem(pem(&ca, &certs[0].0, &certs[0].1)).unwrap();
    let caller = MeshTls::from_pem(pem(&ca, &certs[1].0, &certs[1].1)).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let tcp = futures::stream::unfold(listener, |l| async move {
        let r = l.accept().await.map(|(s, _)| s);
        Some((r, l))
    });
    let mut accepted = Box::pin(incoming(tcp, server));

    let _silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    let client = async {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("svc").unwrap();
        tokio_rustls::TlsConnector::from(caller.client_config())
            .connect(name, tcp)
            .await
    };
    let (client, first) = tokio::time::timeout(Duration::from_secs(5), async {
        tokio::join!(client, futures::StreamExt::next(&mut accepted))
    })
    .await
    .expect("the second peer's handshake is not stuck behind the silent one");
    client.expect("the caller's handshake");
    assert!(
        matches!(first, Some(Ok(_))),
        "the server hands over the TLS connection"
    );
}
