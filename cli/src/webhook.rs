//! `synod webhook set|list|remove|status`: the cluster's webhooks (admin
//! commands under the admin policy) and the addressed node's deliveries to them.
//!
//! The leader sends every notification, signed with RFC 9421 by its node
//! certificate's key (docs/webhooks.md says how a receiver checks it);
//! `status` shows what the addressed node sent, so ask the leader.

use anyhow::anyhow;
use clap::Subcommand;
use serde_json::Value;
use synod_proto::webhook::{normalise_url, Webhook, WebhookEvent};
use synod_proto::Command;

use crate::authz::submit;
use crate::client::ApiClient;
use crate::display::{shown, time_ms_or_dash};
use crate::{ClientArgs, Output};

/// Where the node answers with its webhooks and deliveries.
const WEBHOOKS_PATH: &str = "/v1/sys/webhooks";

#[derive(Subcommand, Debug)]
pub enum WebhookCmd {
    /// Add or replace a webhook (an admin operation): where the leader POSTs a signed JSON
    /// notification when a request awaits approval, is approved, denied, signed, fails or expires.
    Set {
        /// The webhook's name (1 to 64 of A-Z a-z 0-9 . _ -).
        name: String,
        /// https://… (a chat's incoming-webhook URL takes the payload as it is), or http:// to
        /// 127.0.0.1, [::1] or localhost for development. A chat's URL is a secret and a command
        /// line lands in shell history and `ps`: give `--url -` to read it from stdin, or
        /// --url-file. It is stored normalised (lowercase scheme and host, no default port).
        #[arg(long, required_unless_present = "url_file", conflicts_with = "url_file")]
        url: Option<String>,
        /// Read the URL from the first line of this file (keep the file private).
        #[arg(long, value_name = "FILE")]
        url_file: Option<std::path::PathBuf>,
        /// Only requests that await (or concern) this operator; repeat. Default: every operator.
        #[arg(long = "operator", value_name = "NAME")]
        operators: Vec<String>,
        /// Only requests on this key; repeat. Default: every key.
        #[arg(long = "key", value_name = "NAME")]
        keys: Vec<String>,
        /// Only these events; repeat: awaiting_approval, approved, denied, signed, failed, expired.
        /// Default: all.
        #[arg(long = "event", value_name = "EVENT")]
        events: Vec<WebhookEvent>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List the cluster's webhooks (auditors and admins).
    List(ClientArgs),
    /// Remove a webhook (an admin operation).
    Remove {
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// The addressed node's deliveries per webhook: queued, delivered, last success and last
    /// error (the leader sends; auditors and admins).
    Status(ClientArgs),
}

/// Runs `synod webhook …`.
pub async fn webhook(cmd: WebhookCmd) -> anyhow::Result<()> {
    match cmd {
        WebhookCmd::Set { name, url, url_file, operators, keys, events, client } => {
            let url = normalise_url(&read_url(url, url_file)?).map_err(|e| anyhow!("{e}"))?;
            let webhook = Webhook { name, url, operators, keys, events };
            webhook.validate().map_err(|e| anyhow!("{e}"))?;
            submit(&client, "/v1/commands", Command::SetWebhook { webhook }).await?;
        }
        WebhookCmd::Remove { name, client } => {
            submit(&client, "/v1/commands", Command::RemoveWebhook { name }).await?;
        }
        WebhookCmd::List(client) => {
            let list = fetch(&client).await?;
            match client.output.output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&list)?),
                Output::Table => print_list(&list),
            }
        }
        WebhookCmd::Status(client) => {
            let list = fetch(&client).await?;
            match client.output.output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&list)?),
                Output::Table => print_status(&list),
            }
        }
    }
    Ok(())
}

/// The URL from `--url` (`-`: the first line of stdin) or the first line of `--url-file`.
/// Errors never show it: a chat's URL is a secret.
fn read_url(url: Option<String>, url_file: Option<std::path::PathBuf>) -> anyhow::Result<String> {
    let text = match (url, url_file) {
        (Some(url), _) if url != "-" => return Ok(url),
        (Some(_), _) => {
            let mut line = String::new();
            std::io::stdin()
                .read_line(&mut line)
                .map_err(|e| anyhow!("cannot read the webhook URL from stdin: {e}"))?;
            line
        }
        (None, Some(path)) => std::fs::read_to_string(&path)
            .map_err(|e| anyhow!("cannot read the webhook URL from {}: {e}", path.display()))?,
        (None, None) => return Err(anyhow!("give the webhook URL with --url URL, --url - (stdin) or --url-file FILE")),
    };
    let url = text.lines().next().unwrap_or_default().trim();
    if url.is_empty() {
        return Err(anyhow!("no webhook URL: the first line read is empty"));
    }
    Ok(url.to_string())
}

async fn fetch(client: &ClientArgs) -> anyhow::Result<Value> {
    let (_, list): (u16, Value) = ApiClient::new(client)?.get(WEBHOOKS_PATH).await?;
    Ok(list)
}

fn hooks(list: &Value) -> impl Iterator<Item = &Value> {
    list["webhooks"].as_array().into_iter().flatten()
}

/// The words of a JSON list, comma-separated, or `all` when it is empty.
fn words(value: &Value) -> String {
    let items: Vec<String> =
        value.as_array().into_iter().flatten().filter_map(|v| v.as_str()).map(|s| shown(s).to_string()).collect();
    if items.is_empty() {
        "all".into()
    } else {
        items.join(",")
    }
}

fn print_list(list: &Value) {
    println!("{:<20} {:<40} {:<20} {:<20} EVENTS", "NAME", "URL", "OPERATORS", "KEYS");
    for hook in hooks(list).filter(|h| h["configured"] == true) {
        println!(
            "{:<20} {:<40} {:<20} {:<20} {}",
            shown(hook["name"].as_str().unwrap_or("-")),
            shown(hook["url"].as_str().unwrap_or("-")),
            words(&hook["operators"]),
            words(&hook["keys"]),
            words(&hook["events"]),
        );
    }
}

fn print_status(list: &Value) {
    let sending = if list["sending"] == true { "sends (leader)" } else { "does not send (not the leader)" };
    println!("node {} {sending}; audit cursor {}", list["node_id"], list["cursor"]);
    println!(
        "{:<20} {:>6} {:>9} {:>7} {:>7} {:<24} LAST ERROR",
        "NAME", "QUEUED", "DELIVERED", "FAILED", "DROPPED", "LAST SUCCESS"
    );
    for hook in hooks(list) {
        let d = &hook["delivery"];
        let error = match (d["last_failure_ms"].as_u64(), d["last_error"].as_str()) {
            (Some(at), Some(error)) => format!("{} {}", time_ms_or_dash(Some(at)), shown(error)),
            _ => "-".into(),
        };
        let name = hook["name"].as_str().unwrap_or("-");
        let name =
            if hook["configured"] == true { shown(name).to_string() } else { format!("{} (removed)", shown(name)) };
        println!(
            "{name:<20} {:>6} {:>9} {:>7} {:>7} {:<24} {error}",
            hook["queued"],
            d["delivered"],
            d["failed_attempts"],
            d["dropped"],
            time_ms_or_dash(d["last_success_ms"].as_u64()),
        );
    }
}
