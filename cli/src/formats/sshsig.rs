//! (Not built yet.)

use anyhow::bail;

use super::Candidates;
use crate::{SignArgs, VerifyArgs};

/// `synod sign --format …`.
pub async fn sign(args: &SignArgs) -> anyhow::Result<()> {
    let _ = args;
    bail!("this format is not built yet")
}

/// `synod verify --format …`.
pub fn verify(args: &VerifyArgs, candidates: &Candidates) -> anyhow::Result<(Option<u32>, [u8; 32])> {
    let _ = (args, candidates);
    bail!("this format is not built yet")
}
