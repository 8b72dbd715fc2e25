//! `starling ca init`, `ca issue` and `ca mesh`: a small certificate authority for the
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

use crate::cli::{CaCommand, CaInitArgs, CaIssueArgs, CaMeshArgs};

/// Every identity a Starling mesh uses: its five services, the gateway, and `admin` for
/// operators' tools.
pub const MESH_IDENTITIES: [&str; 7] = [
    "tweet",
    "follower",
    "timeline",
    "tagger",
    "recommendation",
    "gateway",
    "admin",
];

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
        CaCommand::Mesh(args) => {
            for line in mesh(&args)? {
                println!("starling ca: {line}");
            }
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

/// Writes `path` whole or not at all: a new file beside it, then renamed over it.
fn replace(path: &Path, contents: &str, private: bool) -> anyhow::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".new");
    let tmp = PathBuf::from(tmp);
    let _ = fs::remove_file(&tmp);
    write_new(&tmp, contents, private)?;
    fs::rename(&tmp, path)
        .with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))
}

/// Writes `ca`'s certificate as `dir/ca.crt` and a certificate and key for each of `names`
/// (`dir/<name>.crt`, `.key`, valid for `days`): a whole mesh's files at once, for tools
/// that start one.
pub fn write_identities<'a>(
    dir: &Path,
    ca: &Authority,
    namespace: &str,
    days: u32,
    names: impl IntoIterator<Item = &'a str>,
) -> anyhow::Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    write_new(&dir.join("ca.crt"), ca.cert_pem(), false)?;
    for name in names {
        let (cert, key) = ca.issue(name, namespace, days, &[])?;
        write_new(&dir.join(format!("{name}.key")), &key, true)?;
        write_new(&dir.join(format!("{name}.crt")), &cert, false)?;
    }
    Ok(())
}

/// `starling ca mesh`: creates what is missing in `args.dir`; says what it did per file.
pub fn mesh(args: &CaMeshArgs) -> anyhow::Result<Vec<String>> {
    let mut said = Vec::new();
    let (crt, key) = (args.dir.join("ca.crt"), args.dir.join("ca.key"));
    if !crt.exists() && !key.exists() {
        init(&CaInitArgs {
            dir: args.dir.clone(),
            days: args.days.saturating_mul(10),
        })?;
        said.push(format!("wrote {} and {}", crt.display(), key.display()));
    } else {
        said.push(format!("kept the CA in {}", args.dir.display()));
    }
    for name in MESH_IDENTITIES {
        let issue_args = CaIssueArgs {
            name: name.to_string(),
            dir: args.dir.clone(),
            namespace: args.namespace.clone(),
            days: args.days,
            dns: Vec::new(),
            renew: false,
        };
        let file = args.dir.join(format!("{name}.crt"));
        let key = args.dir.join(format!("{name}.key"));
        if file.exists() != key.exists() {
            bail!(
                "{} is there without {} (or the other way round): remove it, then run again",
                if file.exists() {
                    file.display()
                } else {
                    key.display()
                },
                if file.exists() {
                    key.display()
                } else {
                    file.display()
                },
            );
        }
        if file.exists() {
            said.push(format!("kept {}", file.display()));
        } else {
            let (crt, _) = issue(&issue_args)?;
            said.push(format!(
                "wrote {} for spiffe://{}/{name}",
                crt.display(),
                args.namespace
            ));
        }
    }
    Ok(said)
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
    let ca = Authority::new(args.days)?;
    write_new(&key, &ca.key_pem, true)?;
    write_new(&crt, &ca.cert_pem, false)?;
    Ok((crt, key))
}

/// A CA held in memory: `ca init` writes a new one's files, `ca issue` reads them back,
/// and `starling up` makes one at start that is never written anywhere.
pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    key_pem: String,
}

impl Authority {
    /// A new CA valid for `days`.
    pub fn new(days: u32) -> anyhow::Result<Self> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "Starling CA");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        validity(&mut params, days)?;
        let signing = KeyPair::generate().context("cannot make a key")?;
        let cert = params.self_signed(&signing).context("cannot sign the CA")?;
        let key_pem = signing.serialize_pem();
        Ok(Self {
            issuer: Issuer::new(params, signing),
            cert_pem: cert.pem(),
            key_pem,
        })
    }

    /// The CA in `ca_pem` whose key is `key_pem`.
    pub fn from_pem(ca_pem: &str, key_pem: &str) -> anyhow::Result<Self> {
        let key = KeyPair::from_pem(key_pem).context("ca.key is not a PEM private key")?;
        let issuer =
            Issuer::from_ca_cert_pem(ca_pem, key).context("ca.crt is not a PEM certificate")?;
        Ok(Self {
            issuer,
            cert_pem: ca_pem.to_string(),
            key_pem: key_pem.to_string(),
        })
    }

    /// The CA's certificate (what peers trust).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A certificate and key for `name` in `namespace`: SPIFFE id
    /// `spiffe://<namespace>/<name>`, DNS names `name`, `localhost` and `dns`, and the
    /// loopback addresses. Returns (certificate PEM, key PEM).
    pub fn issue(
        &self,
        name: &str,
        namespace: &str,
        days: u32,
        dns: &[String],
    ) -> anyhow::Result<(String, String)> {
        check_name(name)?;
        anyhow::ensure!(
            !namespace.is_empty()
                && namespace
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b)),
            "--namespace must be a trust domain of letters, digits, '-', '.' and '_' (got {namespace:?})"
        );
        let mut names = vec![name.to_string(), "localhost".to_string()];
        names.extend(dns.iter().cloned());
        let mut params =
            CertificateParams::new(names).context("a --dns name is not a valid DNS name")?;
        params
            .subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        params
            .subject_alt_names
            .push(SanType::IpAddress(std::net::Ipv6Addr::LOCALHOST.into()));
        let spiffe = format!("spiffe://{namespace}/{name}");
        params.subject_alt_names.push(SanType::URI(
            spiffe
                .clone()
                .try_into()
                .with_context(|| format!("{spiffe} is not a valid URI"))?,
        ));
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        // One certificate serves both sides of mTLS: a service is called and calls others.
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        validity(&mut params, days)?;
        let signing = KeyPair::generate().context("cannot make a key")?;
        let cert = params
            .signed_by(&signing, &self.issuer)
            .context("cannot sign the certificate")?;
        Ok((cert.pem(), signing.serialize_pem()))
    }
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
    let read = |p: PathBuf| {
        fs::read_to_string(&p).with_context(|| {
            format!(
                "cannot read {} (run `starling ca init --dir {}` first)",
                p.display(),
                args.dir.display()
            )
        })
    };
    let ca = Authority::from_pem(
        &read(args.dir.join("ca.crt"))?,
        &read(args.dir.join("ca.key"))?,
    )?;
    let (cert_pem, key_pem) = ca.issue(&args.name, &args.namespace, args.days, &args.dns)?;
    let (crt, key) = (
        args.dir.join(format!("{}.crt", args.name)),
        args.dir.join(format!("{}.key", args.name)),
    );
    if args.renew {
        // Each file appears whole (rename); a reader that sees the new key beside the old
        // certificate finds they do not match and reads again later.
        replace(&key, &key_pem, true)?;
        replace(&crt, &cert_pem, false)?;
        return Ok((crt, key));
    }
    if crt.exists() || key.exists() {
        bail!(
            "{} or {} exists already: pass --renew to replace them, or remove both first",
            crt.display(),
            key.display()
        );
    }
    write_new(&key, &key_pem, true)?;
    write_new(&crt, &cert_pem, false)?;
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
            renew: false,
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
        let renewed = CaIssueArgs {
            renew: true,
            ..issue_args("tweet")
        };
        issue(&renewed).expect("--renew replaces");
        let pem2 = fs::read_to_string(&crt).unwrap();
        assert_ne!(pem, pem2, "--renew wrote a new certificate");
        assert!(!dir.path().join("tweet.crt.new").exists());
        assert!(issue(&issue_args("Bad Name")).is_err());
        assert!(issue(&issue_args("ca")).is_err());
        let no_ca = CaIssueArgs {
            dir: dir.path().join("nowhere"),
            ..issue_args("gateway")
        };
        let e = issue(&no_ca).unwrap_err().to_string();
        assert!(e.contains("starling ca init"), "{e}");
    }

    #[test]
    fn ca_mesh_writes_what_is_missing_and_keeps_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let args = CaMeshArgs {
            dir: dir.path().join("pki"),
            namespace: "prod".into(),
            days: 30,
        };
        let said = mesh(&args).unwrap();
        assert_eq!(
            said.iter().filter(|l| l.starts_with("wrote")).count(),
            8,
            "{said:?}"
        );
        for name in MESH_IDENTITIES {
            let pem = fs::read_to_string(args.dir.join(format!("{name}.crt"))).unwrap();
            let needle = format!("spiffe://prod/{name}");
            let der = pem_der(&pem);
            assert!(der.windows(needle.len()).any(|w| w == needle.as_bytes()));
        }
        let before = fs::read(args.dir.join("tweet.crt")).unwrap();
        fs::remove_file(args.dir.join("tagger.crt")).unwrap();
        let e = mesh(&args).unwrap_err().to_string();
        assert!(e.contains("tagger.key"), "a lone key is named: {e}");
        fs::remove_file(args.dir.join("tagger.key")).unwrap();
        fs::remove_file(args.dir.join("admin.crt")).unwrap();
        fs::remove_file(args.dir.join("admin.key")).unwrap();
        let said = mesh(&args).unwrap();
        assert_eq!(
            said.iter().filter(|l| l.starts_with("wrote")).count(),
            2,
            "{said:?}"
        );
        assert_eq!(
            before,
            fs::read(args.dir.join("tweet.crt")).unwrap(),
            "kept"
        );
        assert!(args.dir.join("admin.crt").exists());
    }

    fn pem_der(pem: &str) -> Vec<u8> {
        use base64::Engine as _;
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        base64::engine::general_purpose::STANDARD
            .decode(body)
            .unwrap()
    }
}
