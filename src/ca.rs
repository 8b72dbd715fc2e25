//! `starling ca init` and `starling ca issue`: a small certificate authority for the
//! mesh's identities. A certificate names its holder twice: as a SPIFFE id in a URI SAN
//! (`spiffe://<namespace>/<name>`, the identity authorization decides on) and as DNS
//! names (`<name>`, `localhost`, the loopback addresses), which TLS clients check the
//! server against. Keys are ECDSA P-256; files are PEM, keys written readable by the owner
//! only.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

use crate::cli::{CaCommand, CaInitArgs, CaIssueArgs};

pub fn run(cmd: CaCommand) -> anyhow::Result<()> {
    match cmd {
        CaCommand::Init(args) => {
            let (crt, key) = init(&args)?;
            println!("starling ca: wrote {} and {}", crt.display(), key.display());
        }
        CaCommand::Issue(args) => {
            let (crt, key) = issue(&args)?;
            println!(
                "starling ca: wrote {} and {} for spiffe://{}/{}",
                crt.display(),
                key.display(),
                args.namespace,
                args.name
            );
        }
    }
    Ok(())
}

fn validity(params: &mut CertificateParams, days: u32) -> anyhow::Result<()> {
    anyhow::ensure!(days >= 1, "--days must be at least 1");
    let now = time::OffsetDateTime::now_utc();
    // A little back-dating, so a freshly issued certificate is valid on a peer whose clock
    // is slightly behind.
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now + time::Duration::days(i64::from(days));
    Ok(())
}

/// Writes a new file; refuses to replace one (a CA's key is not overwritten by mistake).
fn write_new(path: &Path, contents: &str, private: bool) -> anyhow::Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(if private { 0o600 } else { 0o644 });
    }
    let mut f = options.open(path).with_context(|| {
        format!(
            "cannot create {} (it may exist already: remove it first to replace it)",
            path.display()
        )
    })?;
    f.write_all(contents.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Creates `DIR/ca.crt` and `DIR/ca.key`.
pub fn init(args: &CaInitArgs) -> anyhow::Result<(PathBuf, PathBuf)> {
    fs::create_dir_all(&args.dir)
        .with_context(|| format!("cannot create {}", args.dir.display()))?;
    let (crt, key) = (args.dir.join("ca.crt"), args.dir.join("ca.key"));
    if crt.exists() || key.exists() {
        bail!(
            "{} already holds a CA (ca.crt or ca.key): remove them first to make a new one",
            args.dir.display()
        );
    }
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "Starling CA");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    validity(&mut params, args.days)?;
    let signing = KeyPair::generate().context("cannot make a key")?;
    let cert = params.self_signed(&signing).context("cannot sign the CA")?;
    write_new(&key, &signing.serialize_pem(), true)?;
    write_new(&crt, &cert.pem(), false)?;
    Ok((crt, key))
}

/// A name is a path segment of the SPIFFE id and a file name.
fn check_name(name: &str) -> anyhow::Result<()> {
    let ok = (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        && !name.starts_with('-');
    anyhow::ensure!(
        ok,
        "NAME must be 1 to 63 of a-z, 0-9, _ and - (got {name:?}); it becomes spiffe://<namespace>/{name} and {name}.crt"
    );
    anyhow::ensure!(
        name != "ca",
        "NAME cannot be \"ca\": ca.crt and ca.key are the CA's own"
    );
    Ok(())
}

/// Creates `DIR/NAME.crt` and `DIR/NAME.key`, signed by `DIR/ca.{crt,key}`.
pub fn issue(args: &CaIssueArgs) -> anyhow::Result<(PathBuf, PathBuf)> {
    check_name(&args.name)?;
    anyhow::ensure!(
        !args.namespace.is_empty()
            && args
                .namespace
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b)),
        "--namespace must be a trust domain of letters, digits, '-', '.' and '_' (got {:?})",
        args.namespace
    );
    let read = |p: PathBuf| {
        fs::read_to_string(&p).with_context(|| {
            format!(
                "cannot read {} (run `starling ca init --dir {}` first)",
                p.display(),
                args.dir.display()
            )
        })
    };
    let ca_key = KeyPair::from_pem(&read(args.dir.join("ca.key"))?)
        .context("ca.key is not a PEM private key")?;
    let issuer = Issuer::from_ca_cert_pem(&read(args.dir.join("ca.crt"))?, ca_key)
        .context("ca.crt is not a PEM certificate")?;

    let mut dns = vec![args.name.clone(), "localhost".to_string()];
    dns.extend(args.dns.iter().cloned());
    let mut params = CertificateParams::new(dns).context("a --dns name is not a valid DNS name")?;
    params
        .subject_alt_names
        .push(SanType::IpAddress([127, 0, 0, 1].into()));
    params
        .subject_alt_names
        .push(SanType::IpAddress(std::net::Ipv6Addr::LOCALHOST.into()));
    let spiffe = format!("spiffe://{}/{}", args.namespace, args.name);
    params.subject_alt_names.push(SanType::URI(
        spiffe
            .clone()
            .try_into()
            .with_context(|| format!("{spiffe} is not a valid URI"))?,
    ));
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, args.name.clone());
    params.distinguished_name = dn;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    // One certificate serves both sides of mTLS: a service is called and calls others.
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, args.days)?;
    let signing = KeyPair::generate().context("cannot make a key")?;
    let cert = params
        .signed_by(&signing, &issuer)
        .context("cannot sign the certificate")?;
    let (crt, key) = (
        args.dir.join(format!("{}.crt", args.name)),
        args.dir.join(format!("{}.key", args.name)),
    );
    if crt.exists() || key.exists() {
        bail!(
            "{} or {} exists already: remove both first to issue a new certificate",
            crt.display(),
            key.display()
        );
    }
    write_new(&key, &signing.serialize_pem(), true)?;
    write_new(&crt, &cert.pem(), false)?;
    Ok((crt, key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_issues_certificates_and_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let init_args = CaInitArgs {
            dir: dir.path().to_path_buf(),
            days: 10,
        };
        init(&init_args).unwrap();
        let again = init(&init_args).unwrap_err().to_string();
        assert!(again.contains("already holds a CA"), "{again}");
        let issue_args = |name: &str| CaIssueArgs {
            name: name.into(),
            dir: dir.path().to_path_buf(),
            namespace: "starling".into(),
            days: 5,
            dns: vec!["tweet.internal".into()],
        };
        let (crt, key) = issue(&issue_args("tweet")).unwrap();
        let pem = fs::read_to_string(&crt).unwrap();
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");
        assert!(fs::read_to_string(&key).unwrap().contains("PRIVATE KEY"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = fs::metadata(&key).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "a key is readable by its owner only");
        }
        // The SPIFFE id is in the certificate (DER holds the URI as ASCII).
        let der = pem_der(&pem);
        let needle = b"spiffe://starling/tweet";
        assert!(der.windows(needle.len()).any(|w| w == needle));
        assert!(issue(&issue_args("tweet")).is_err(), "no overwrite");
        assert!(issue(&issue_args("Bad Name")).is_err());
        assert!(issue(&issue_args("ca")).is_err());
        let no_ca = CaIssueArgs {
            dir: dir.path().join("nowhere"),
            ..issue_args("gateway")
        };
        let e = issue(&no_ca).unwrap_err().to_string();
        assert!(e.contains("starling ca init"), "{e}");
    }

    fn pem_der(pem: &str) -> Vec<u8> {
        use base64::Engine as _;
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        base64::engine::general_purpose::STANDARD
            .decode(body)
            .unwrap()
    }
}
