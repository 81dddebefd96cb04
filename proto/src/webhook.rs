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

/// The URL as the sender parses and prints it, after checking it: at most
/// [`WEBHOOK_URL_BYTES_MAX`] bytes, `https://`, or `http://` to exactly
/// 127.0.0.1, [::1] or localhost; no user name or password (a URL like
/// `http://localhost:x@evil.example/` names the host after the `@`); no fragment
/// (it is never sent). Errors never show the URL's path, which for a chat is its token.
pub fn normalise_url(url: &str) -> Result<String, CommandError> {
    let malformed = |why: String| Err(CommandError::Malformed(why));
    if url.len() > WEBHOOK_URL_BYTES_MAX || url.chars().any(|c| c.is_control() || c == ' ') {
        return malformed(format!("webhook URL must be at most {WEBHOOK_URL_BYTES_MAX} characters without spaces"));
    }
    let parsed = match url::Url::parse(url) {
        Ok(parsed) => parsed,
        // The parser's errors name what is wrong, never the input.
        Err(e) => return malformed(format!("webhook URL does not parse: {e}")),
    };
    let shown = Webhook { name: String::new(), url: url.to_string(), operators: vec![], keys: vec![], events: vec![] }
        .redacted_url();
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return malformed(format!(
            "webhook URL {shown} must not carry a user name or password (put a token in the path or query)"
        ));
    }
    if parsed.fragment().is_some() {
        return malformed(format!("webhook URL {shown} must not have a #fragment (it is never sent)"));
    }
    let loopback = match parsed.host() {
        Some(url::Host::Ipv4(ip)) => ip == std::net::Ipv4Addr::LOCALHOST,
        Some(url::Host::Ipv6(ip)) => ip == std::net::Ipv6Addr::LOCALHOST,
        Some(url::Host::Domain(domain)) => domain == "localhost",
        None => false,
    };
    let allowed = match parsed.scheme() {
        "https" => parsed.host().is_some(),
        "http" => loopback,
        _ => false,
    };
    if !allowed {
        return malformed(format!(
            "webhook URL {shown} must be https:// (plain http only to 127.0.0.1, [::1] or localhost, for development)"
        ));
    }
    let normalised = String::from(parsed);
    if normalised.len() > WEBHOOK_URL_BYTES_MAX {
        return malformed(format!("webhook URL must be at most {WEBHOOK_URL_BYTES_MAX} characters once normalised"));
    }
    Ok(normalised)
}

impl Webhook {
    /// Checks the name, the URL and the filters. The URL must be stored as the
    /// sender parses it ([`normalise_url`]): what is stored is then what the
    /// sender signs as `@target-uri` and what a receiver rebuilds.
    pub fn validate(&self) -> Result<(), CommandError> {
        validate_name("webhook name", &self.name)?;
        let normalised = normalise_url(&self.url)?;
        if normalised != self.url {
            let shown = Webhook { url: normalised, ..self.clone() }.redacted_url();
            return Err(CommandError::Malformed(format!(
                "webhook URL {} is not in its normalised form (scheme and host in lowercase, no default \
                 port, path percent-encoded, `/` after a bare host), which starts {shown}; \
                 `synod webhook set` normalises it",
                self.redacted_url()
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

    #[test]
    fn urls_with_a_user_name_before_the_host_are_refused() {
        // `localhost:x` is a user name and password here; the host is evil.example.
        let error = hook("http://localhost:x@evil.example/hook").validate().unwrap_err().to_string();
        assert!(error.contains("user name or password") && !error.contains("/hook"), "{error}");
        assert!(hook("https://user@hooks.example.com/hook").validate().is_err());
        assert!(hook("https://:pw@hooks.example.com/hook").validate().is_err());
    }

    #[test]
    fn urls_in_plain_http_name_exactly_a_loopback_host() {
        for url in ["http://127.0.0.1:9000/hook", "http://[::1]:9000/hook", "http://localhost/hook"] {
            assert!(hook(url).validate().is_ok(), "{url}");
        }
        for url in [
            "http://127.0.0.1.evil.example/hook",
            "http://localhost.evil.example/hook",
            "http://127.0.0.2/hook",
            "http://10.0.0.1/hook",
            "ftp://127.0.0.1/hook",
        ] {
            assert!(hook(url).validate().is_err(), "{url}");
        }
    }

    #[test]
    fn urls_must_be_stored_in_the_form_the_sender_signs() {
        // What is stored is what is signed as @target-uri: the parser's form, no fragment.
        assert_eq!(
            normalise_url("HTTPS://Hooks.Example.com:443/a b".replace(' ', "%20").as_str()).unwrap(),
            "https://hooks.example.com/a%20b"
        );
        assert_eq!(normalise_url("https://hooks.example.com").unwrap(), "https://hooks.example.com/");
        for url in ["HTTPS://hooks.example.com/x", "https://hooks.example.com:443/x", "https://hooks.example.com"] {
            let error = hook(url).validate().unwrap_err().to_string();
            assert!(error.contains("normalised") && error.contains("https://hooks.example.com"), "{error}");
        }
        assert!(hook("https://hooks.example.com/x#frag").validate().is_err());
        assert!(hook(&normalise_url("https://hooks.example.com/x?a=1").unwrap()).validate().is_ok());
    }

    #[test]
    fn url_errors_never_show_the_path() {
        for url in [
            "http://example.com/services/T0/B0/secret",
            "https://u:p@hooks.example.com/services/T0/B0/secret",
            "HTTPS://hooks.example.com/services/T0/B0/secret",
            "https://hooks.example.com/services/T0/B0/secret#x",
        ] {
            let error = hook(url).validate().unwrap_err().to_string();
            assert!(!error.contains("secret"), "{error}");
        }
    }
}
