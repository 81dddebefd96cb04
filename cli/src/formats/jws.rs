//! (Not built yet.)

use anyhow::bail;
use synod_proto::format::SignFormat;

use super::Candidates;
use crate::{SignArgs, VerifyArgs};

/// `synod sign --format …`.
pub async fn sign(format: SignFormat, args: &SignArgs) -> anyhow::Result<()> {
    let _ = (format, args);
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
