//! Certificates for tests and TLS load runs, made on the spot with rcgen: a CA, server
//! certificates for `localhost` and 127.0.0.1, and client certificates named by their CN (and a
//! DNS SAN of the same name), written as PEM files into a directory.

use std::path::{Path, PathBuf};

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// A CA that issues certificates into `dir`.
pub struct Pki {
    dir: PathBuf,
    issuer: Issuer<'static, KeyPair>,
}

/// The files of one issued certificate.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The certificate (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM, PKCS#8).
    pub key: PathBuf,
}

/// How long an issued certificate is valid: from a day ago to `days` from now (negative: already
/// expired).
#[derive(Debug, Clone, Copy)]
pub struct Validity {
    /// Days from now to its end.
    pub days: i64,
}

impl Default for Validity {
    fn default() -> Self {
        Validity { days: 365 }
    }
}

impl Pki {
    /// A new CA named `name`, its certificate written to `dir/ca.pem`.
    pub fn new(dir: &Path, name: &str) -> anyhow::Result<Pki> {
        std::fs::create_dir_all(dir)?;
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key)?;
        std::fs::write(dir.join("ca.pem"), cert.pem())?;
        Ok(Pki {
            dir: dir.to_path_buf(),
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA certificate's file.
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// A server certificate for `localhost` and 127.0.0.1, written as `NAME.pem` and `NAME.key`.
    pub fn server(&self, name: &str, validity: Validity) -> anyhow::Result<Issued> {
        self.issue(
            name,
            "localhost",
            &["localhost", "127.0.0.1"],
            ExtendedKeyUsagePurpose::ServerAuth,
            validity,
        )
    }

    /// A client certificate with CN `cn` (and DNS SAN `cn`), written as `NAME.pem` and `NAME.key`.
    pub fn client(&self, name: &str, cn: &str) -> anyhow::Result<Issued> {
        self.issue(
            name,
            cn,
            &[cn],
            ExtendedKeyUsagePurpose::ClientAuth,
            Validity::default(),
        )
    }

    fn issue(
        &self,
        name: &str,
        cn: &str,
        sans: &[&str],
        usage: ExtendedKeyUsagePurpose,
        validity: Validity,
    ) -> anyhow::Result<Issued> {
        let key = KeyPair::generate()?;
        let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(sans).context("certificate names")?;
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![usage];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        let now = std::time::SystemTime::now();
        let day = std::time::Duration::from_secs(86_400);
        let days = u32::try_from(validity.days.unsigned_abs()).unwrap_or(u32::MAX);
        let not_after = if validity.days >= 0 {
            now + day * days
        } else {
            now - day * days
        };
        params.not_before = (now.min(not_after) - day).into();
        params.not_after = not_after.into();
        let cert = params.signed_by(&key, &self.issuer)?;
        let issued = Issued {
            cert: self.dir.join(format!("{name}.pem")),
            key: self.dir.join(format!("{name}.key")),
        };
        std::fs::write(&issued.cert, cert.pem())?;
        std::fs::write(&issued.key, key.serialize_pem())?;
        Ok(issued)
    }
}
