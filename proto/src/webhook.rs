//! Webhooks: where the cluster tells people that a request awaits them, was
//! approved, denied, signed, failed or expired. Set under the admin quorum
//! (`Command::SetWebhook`), kept in the replicated state, sent by the leader
//! (see the node's `webhooks` room).

use serde::{Deserialize, Serialize};

use crate::command::{validate_name, CommandError};

/// Webhooks one cluster may have.
pub const WEBHOOKS_MAX: usize = 32;
/// The longest webhook URL.
pub const WEBHOOK_URL_BYTES_MAX: usize = 512;

/// What happened to a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WebhookEvent {
    /// A request waits for approvals (sent to the approvers it waits for).
    AwaitingApproval,
    /// An approval counted.
    Approved,
    /// An approver denied it.
    Denied,
    /// The cluster signed it.
    Signed,
    /// It failed (denied, cancelled, refused by the signers, or its key stopped signing).
    Failed,
    /// Nobody approved it in time.
    Expired,
}

impl WebhookEvent {
    pub const ALL: [WebhookEvent; 6] = [
        WebhookEvent::AwaitingApproval,
        WebhookEvent::Approved,
        WebhookEvent::Denied,
        WebhookEvent::Signed,
        WebhookEvent::Failed,
        WebhookEvent::Expired,
    ];

    pub fn name(self) -> &'static str {
        match self {
            WebhookEvent::AwaitingApproval => "awaiting_approval",
            WebhookEvent::Approved => "approved",
            WebhookEvent::Denied => "denied",
            WebhookEvent::Signed => "signed",
            WebhookEvent::Failed => "failed",
            WebhookEvent::Expired => "expired",
        }
    }
}

impl std::str::FromStr for WebhookEvent {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        WebhookEvent::ALL.into_iter().find(|e| e.name() == s.trim()).ok_or_else(|| {
            format!("unknown event {s:?}; events are {}", WebhookEvent::ALL.map(WebhookEvent::name).join(", "))
        })
    }
}

/// One webhook: a URL and what it is told about.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Webhook {
    pub name: String,
    /// `https://…`, or `http://` to a loopback address (development and tests).
    pub url: String,
    /// Told about requests that await (or were approved or denied by) one of
    /// these operators; empty: not narrowed by operator.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub operators: Vec<String>,
    /// Told about requests on these keys (a key's policy); empty: every key.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<String>,
    /// The events it wants; empty: all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<WebhookEvent>,
}

impl Webhook {
    pub fn validate(&self) -> Result<(), CommandError> {
        validate_name("webhook name", &self.name)?;
        if self.url.len() > WEBHOOK_URL_BYTES_MAX || self.url.chars().any(|c| c.is_control() || c == ' ') {
            return Err(CommandError::Malformed(format!(
                "webhook URL must be at most {WEBHOOK_URL_BYTES_MAX} characters without spaces"
            )));
        }
        let loopback =
            ["http://127.0.0.1:", "http://127.0.0.1/", "http://[::1]:", "http://localhost:", "http://localhost/"];
        if !self.url.starts_with("https://") && !loopback.iter().any(|p| self.url.starts_with(p)) {
            return Err(CommandError::Malformed(format!(
                "webhook URL {} must be https:// (plain http only to a loopback address, for development)",
                self.url
            )));
        }
        if self.operators.len() > crate::authz::POLICY_LIST_MAX || self.keys.len() > crate::authz::POLICY_LIST_MAX {
            return Err(CommandError::Malformed(format!(
                "a webhook names at most {} operators and keys",
                crate::authz::POLICY_LIST_MAX
            )));
        }
        for name in self.operators.iter().chain(&self.keys) {
            validate_name("name", name)?;
        }
        Ok(())
    }

    /// The URL's scheme, host and port only: chat webhook URLs carry their
    /// token in the path, so logs, audit details and listings show this.
    pub fn redacted_url(&self) -> String {
        let (scheme, rest) = self.url.split_once("://").unwrap_or(("", &self.url));
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        let authority = authority.rsplit('@').next().unwrap_or_default();
        if rest.len() > authority.len() {
            format!("{scheme}://{authority}/…")
        } else {
            format!("{scheme}://{authority}")
        }
    }

    /// Whether this webhook wants `event`.
    pub fn wants(&self, event: WebhookEvent) -> bool {
        self.events.is_empty() || self.events.contains(&event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(url: &str) -> Webhook {
        Webhook { name: "chat".into(), url: url.into(), operators: vec![], keys: vec![], events: vec![] }
    }

    #[test]
    fn urls_are_https_or_loopback_and_shown_without_their_path() {
        assert!(hook("https://hooks.example.com/services/T0/B0/secret").validate().is_ok());
        assert!(hook("http://127.0.0.1:9000/hook").validate().is_ok());
        assert!(hook("http://example.com/hook").validate().is_err());
        assert!(hook("ftp://example.com").validate().is_err());
        assert_eq!(
            hook("https://user:pw@hooks.example.com/services/T0/B0/secret").redacted_url(),
            "https://hooks.example.com/…"
        );
        assert_eq!(hook("https://hooks.example.com").redacted_url(), "https://hooks.example.com");
    }
}
