//! `synod operator passkey list|approve|remove` and `synod cluster webauthn
//! set|show`: the admin's side of passkeys. People create passkeys in the
//! approver console; each waits until the admins approve it here, by the
//! fingerprint the console showed its owner.

use anyhow::{anyhow, bail};
use clap::Subcommand;
use serde_json::Value;
use synod_proto::webauthn::WebAuthnConfig;
use synod_proto::Command;

use crate::authz::submit;
use crate::client::ApiClient;
use crate::display::shown;
use crate::{ClientArgs, Output};

#[derive(Subcommand, Debug)]
pub enum PasskeyCmd {
    /// List passkeys: those approved, and those waiting for the admins.
    List {
        /// Only this operator's.
        #[arg(long)]
        operator: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Approve a passkey an operator registered in the console (an admin
    /// operation, under the admin quorum). Check the fingerprint with its owner
    /// first: anyone who reaches the console can register a passkey in a name.
    Approve {
        /// The operator it was registered for.
        operator: String,
        /// Its fingerprint as the console showed its owner (SHA256:…), checked with them.
        fingerprint: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Remove a passkey, approved or pending (an admin operation). The approvals it
    /// made leave the requests not yet signed, which wait for new ones.
    Remove {
        operator: String,
        /// Its fingerprint (SHA256:…) or credential id.
        passkey: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Subcommand, Debug)]
pub enum WebAuthnCmd {
    /// Set the relying party every node judges passkeys by (an admin operation):
    /// the RP ID, a domain such as `localhost` or `synod.example.com` (never an
    /// IP address), and the console's exact origins. Changing the RP ID removes
    /// every passkey made for the old one.
    Set {
        /// The RP ID: the console's domain or a parent domain of it.
        #[arg(long)]
        rp_id: String,
        /// An origin the console is served from, e.g. https://localhost:8443 (repeat).
        #[arg(long = "origin", required = true)]
        origins: Vec<String>,
        /// The name browsers show when a passkey is created.
        #[arg(long, default_value = "Synod")]
        rp_name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show the relying party passkeys are judged by.
    Show(ClientArgs),
}

pub async fn passkey(cmd: PasskeyCmd) -> anyhow::Result<()> {
    match cmd {
        PasskeyCmd::List { operator, client } => {
            let list = operators(&client).await?;
            let rows = rows(&list, operator.as_deref());
            match client.output.output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&Value::Array(rows))?),
                Output::Table => {
                    println!("{:<20} {:<9} {:<8} {:<46} LABEL", "OPERATOR", "STATE", "ALG", "FINGERPRINT");
                    for row in rows {
                        println!(
                            "{:<20} {:<9} {:<8} {:<46} {}",
                            shown(row["operator"].as_str().unwrap_or("-")),
                            shown(row["state"].as_str().unwrap_or("-")),
                            shown(row["algorithm"].as_str().unwrap_or("-")),
                            shown(row["fingerprint"].as_str().unwrap_or("-")),
                            shown(row["label"].as_str().unwrap_or("")),
                        );
                    }
                }
            }
        }
        PasskeyCmd::Approve { operator, fingerprint, client } => {
            if !fingerprint.starts_with("SHA256:") {
                bail!("approve a passkey by the fingerprint its owner read off the console (SHA256:…), not by its id");
            }
            let list = operators(&client).await?;
            let credential_id = find(&list, &operator, &fingerprint, Some("pending"))?;
            // The fingerprint is recomputed from the key the node answered with, and the
            // command names it: every node refuses the approval if another key waits there.
            let fingerprint = fingerprint.trim_end_matches('=').to_string();
            submit(&client, "/v1/commands", Command::ApprovePasskey { operator, credential_id, fingerprint }).await?;
        }
        PasskeyCmd::Remove { operator, passkey, client } => {
            let list = operators(&client).await?;
            let credential_id = find(&list, &operator, &passkey, None)?;
            submit(&client, "/v1/commands", Command::RemovePasskey { operator, credential_id }).await?;
        }
    }
    Ok(())
}

pub async fn webauthn(cmd: WebAuthnCmd) -> anyhow::Result<()> {
    match cmd {
        WebAuthnCmd::Set { rp_id, origins, rp_name, client } => {
            let config = WebAuthnConfig { rp_id, rp_name, origins };
            config.validate().map_err(|e| anyhow!("{e}"))?;
            submit(&client, "/v1/commands", Command::SetWebAuthn { config }).await?;
        }
        WebAuthnCmd::Show(client) => {
            let list = operators(&client).await?;
            match client.output.output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&list["webauthn"])?),
                Output::Table if list["webauthn"].is_null() => {
                    println!("passkeys are not set up; run `synod cluster webauthn set --rp-id DOMAIN --origin URL`")
                }
                Output::Table => {
                    let w = &list["webauthn"];
                    println!("RP ID:   {}", shown(w["rp_id"].as_str().unwrap_or("-")));
                    println!("RP name: {}", shown(w["rp_name"].as_str().unwrap_or("-")));
                    for origin in w["origins"].as_array().into_iter().flatten() {
                        println!("origin:  {}", shown(origin.as_str().unwrap_or("-")));
                    }
                }
            }
        }
    }
    Ok(())
}

async fn operators(client: &ClientArgs) -> anyhow::Result<Value> {
    let (_, list): (u16, Value) = ApiClient::new(client)?.get("/v1/operators").await?;
    Ok(list)
}

/// Every passkey as a row: operator, state (approved or pending), algorithm,
/// fingerprint, label, credential id, counter.
fn rows(list: &Value, only: Option<&str>) -> Vec<Value> {
    let alg = |v: &Value| synod_node::state::algorithm_name(v.as_i64().unwrap_or_default());
    let mut out = Vec::new();
    for op in list["operators"].as_array().into_iter().flatten() {
        let name = op["name"].as_str().unwrap_or_default();
        for p in op["passkeys"].as_array().into_iter().flatten() {
            out.push(serde_json::json!({
                "operator": name, "state": "approved", "algorithm": alg(&p["algorithm"]),
                "fingerprint": p["fingerprint"], "label": p["label"], "credential_id": p["credential_id"],
                "public_key": p["public_key"], "counter": p["counter"],
            }));
        }
    }
    for p in list["pending_passkeys"].as_array().into_iter().flatten() {
        out.push(serde_json::json!({
            "operator": p["operator"], "state": "pending", "algorithm": alg(&p["algorithm"]),
            "fingerprint": p["fingerprint"], "label": p["label"], "credential_id": p["credential_id"],
            "public_key": p["public_key"], "registered_at_ms": p["registered_at_ms"], "node_id": p["node_id"],
        }));
    }
    out.retain(|row| only.is_none_or(|name| row["operator"].as_str() == Some(name)));
    out
}

/// The credential id of `operator`'s passkey named by fingerprint or id.
fn find(list: &Value, operator: &str, passkey: &str, state: Option<&str>) -> anyhow::Result<String> {
    let wanted = passkey.trim().trim_end_matches('=');
    let all = rows(list, Some(operator));
    let found = all.iter().find(|row| {
        state.is_none_or(|s| row["state"].as_str() == Some(s))
            && (row["fingerprint"].as_str().is_some_and(|f| f.trim_end_matches('=') == wanted)
                || row["credential_id"].as_str() == Some(wanted))
    });
    match found {
        Some(row) => {
            let key = row["public_key"].as_str().unwrap_or_default();
            let cose = synod_proto::webauthn::from_b64url(key).map_err(|e| anyhow!("passkey {passkey}: {e}"))?;
            let computed = {
                use base64::Engine;
                use sha2::Digest;
                format!(
                    "SHA256:{}",
                    base64::engine::general_purpose::STANDARD_NO_PAD.encode(sha2::Sha256::digest(&cose))
                )
            };
            if row["fingerprint"].as_str().is_some_and(|f| f != computed) {
                bail!(
                    "the node listed passkey {passkey} with a key whose fingerprint is {computed}; ask another node \
                     (--addr) and tell the other admins"
                );
            }
            Ok(row["credential_id"].as_str().unwrap_or_default().to_string())
        }
        None if all.is_empty() => bail!(
            "{operator} has no passkeys{}; they register one in the approver console first",
            if state.is_some() { " waiting for approval" } else { "" }
        ),
        None => bail!(
            "{operator} has no {}passkey {passkey}; `synod operator passkey list --operator {operator}` shows theirs",
            state.map(|s| format!("{s} ")).unwrap_or_default()
        ),
    }
}
