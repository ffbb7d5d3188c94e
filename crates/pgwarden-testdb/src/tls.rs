//! Throwaway certificate authority and server certificate (rcgen).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};

use crate::error::IoContext;
use crate::sys::ServerUser;
use crate::HarnessError;

fn ca_params(name: &str) -> Result<CertificateParams, HarnessError> {
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(HarnessError::Tls)?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(params)
}

fn write(path: &Path, text: &str) -> Result<(), HarnessError> {
    fs::write(path, text).ctx(|| format!("writing {}", path.display()))
}

/// Generates a fresh CA (certificate only; the key is thrown away) as `ca.crt` in `dir`.
///
/// Use it for "wrong CA" tests: nothing a harness server presents chains to it.
///
/// # Errors
/// Certificate generation or writing the file.
pub fn generate_ca(dir: &Path) -> Result<PathBuf, HarnessError> {
    let key = KeyPair::generate().map_err(HarnessError::Tls)?;
    let ca = CertifiedIssuer::self_signed(ca_params("pgwarden unrelated test CA")?, key)
        .map_err(HarnessError::Tls)?;
    let path = dir.join("ca.crt");
    write(&path, &ca.pem())?;
    Ok(path)
}

/// Files of a server's TLS setup.
#[derive(Debug, Clone)]
pub(crate) struct TlsFiles {
    pub(crate) ca_cert: PathBuf,
    pub(crate) server_cert: PathBuf,
    pub(crate) server_key: PathBuf,
}

/// Writes `ca.crt`, `server.crt` and `server.key` (0600, owned by the server user) into
/// `dir`. The server certificate names only DNS `localhost`.
pub(crate) fn generate_server_tls(dir: &Path, user: &ServerUser) -> Result<TlsFiles, HarnessError> {
    let ca_key = KeyPair::generate().map_err(HarnessError::Tls)?;
    let ca = CertifiedIssuer::self_signed(ca_params("pgwarden throwaway test CA")?, ca_key)
        .map_err(HarnessError::Tls)?;
    let mut params =
        CertificateParams::new(vec!["localhost".to_string()]).map_err(HarnessError::Tls)?;
    params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    let key = KeyPair::generate().map_err(HarnessError::Tls)?;
    let cert = params.signed_by(&key, &ca).map_err(HarnessError::Tls)?;

    let files = TlsFiles {
        ca_cert: dir.join("ca.crt"),
        server_cert: dir.join("server.crt"),
        server_key: dir.join("server.key"),
    };
    write(&files.ca_cert, &ca.pem())?;
    write(&files.server_cert, &cert.pem())?;
    write(&files.server_key, &key.serialize_pem())?;
    install_key_files(&files, user)?;
    Ok(files)
}

/// Gives the files to the server user; the key must be 0600 or PostgreSQL refuses it.
pub(crate) fn install_key_files(files: &TlsFiles, user: &ServerUser) -> Result<(), HarnessError> {
    fs::set_permissions(&files.server_key, fs::Permissions::from_mode(0o600))
        .ctx(|| format!("chmod 0600 {}", files.server_key.display()))?;
    for path in [&files.ca_cert, &files.server_cert, &files.server_key] {
        user.chown(path)?;
    }
    Ok(())
}
