//! (Not built yet.)

use anyhow::bail;
use synod_proto::format::SignFormat;

use super::Candidates;
use crate::{SignArgs, VerifyArgs};

/// `synod sign --format …`.
pub async fn sign(args: &SignArgs) -> anyhow::Result<()> {
    let _ = args;
    bail!("this format is not built yet")
}

/// `synod verify --format …`.
pub fn verify(
    format: SignFormat,
    args: &VerifyArgs,
    candidates: &Candidates,
) -> anyhow::Result<(Option<u32>, [u8; 32])> {
    let _ = (format, args, candidates);
    bail!("this format is not built yet")
}

/// `synod seal`.
#[derive(clap::Args, Debug)]
pub struct SealArgs {
    /// The cluster key.
    pub key: String,
    #[command(flatten)]
    pub client: crate::ClientArgs,
}

/// `synod seal`.
pub async fn seal(args: SealArgs) -> anyhow::Result<()> {
    let _ = args;
    bail!("not built yet")
}

/// `synod key csr`.
#[derive(clap::Args, Debug)]
pub struct CsrArgs {
    /// The cluster key.
    pub name: String,
    #[command(flatten)]
    pub client: crate::ClientArgs,
}

/// `synod key csr`.
pub async fn csr(args: CsrArgs) -> anyhow::Result<()> {
    let _ = args;
    bail!("not built yet")
}

/// `synod key certificate`.
#[derive(clap::Args, Debug)]
pub struct CertificateArgs {
    /// The cluster key.
    pub name: String,
    #[command(flatten)]
    pub client: crate::ClientArgs,
}

/// `synod key certificate`.
pub async fn certificate(args: CertificateArgs) -> anyhow::Result<()> {
    let _ = args;
    bail!("not built yet")
}
