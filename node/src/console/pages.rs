//! The console's HTML, rendered on the server with maud: every value from the state or the
//! request goes through maud's escaping (never `PreEscaped`), scripts and styles come from
//! `/console/static/` only (the pages carry no inline script, so the Content-Security-Policy
//! can forbid them), and the browser keeps nothing but the session cookie, which scripts
//! cannot read. The page builders take plain views, so they are tested without a node.
//!
//! The DOM ids are an interface: the console's script and the browser test rely on them.

use maud::{html, Markup, DOCTYPE};
use synod_proto::api::{RequestInfo, RequestStatus};

/// The hint beside the statement hash: how an approver checks, outside the browser, that
/// the node serving the page asks the passkey to sign the statement the cluster holds.
pub fn statement_check_hint(request_id: &str) -> String {
    format!("check it with `synod request statement {request_id} --out /dev/stdout | sha256sum`")
}

/// One page: the frame around `body`, with the logged-in operator (and the logout button)
/// when there is one.
fn layout(title: &str, operator: Option<&str>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Synod console" }
                link rel="stylesheet" href="/console/static/console.css";
                script src="/console/static/console.js" defer {}
            }
            body {
                header {
                    a.brand href="/console/requests" { "Synod" }
                    @if let Some(operator) = operator {
                        span.who { "Signed in as " strong { (operator) } }
                        button #logout type="button" { "Log out" }
                    }
                }
                main {
                    h1 { (title) }
                    p #message role="status" aria-live="polite" {}
                    (body)
                }
            }
        }
    }
}

/// `GET /console/login`.
pub fn login_page() -> Markup {
    layout(
        "Log in",
        None,
        html! {
            form #login-form data-page="login" {
                label for="operator" { "Operator name" }
                input #operator name="operator" type="text" autocomplete="username webauthn" required;
                button #login type="submit" { "Log in with a passkey" }
            }
            p.hint { "No passkey yet? " a href="/console/register" { "Register one" } "; an admin approves it." }
        },
    )
}

/// `GET /console/register`.
pub fn register_page() -> Markup {
    layout(
        "Register a passkey",
        None,
        html! {
            form #register-form data-page="register" {
                label for="operator" { "Operator name" }
                input #operator name="operator" type="text" autocomplete="username" required;
                label for="label" { "A name for this passkey" }
                input #label name="label" type="text" placeholder="laptop" maxlength="64" required;
                button #register type="submit" { "Create a passkey" }
            }
            p { "Fingerprint: " code #fingerprint {} }
            p.hint {
                "The passkey waits for the admins. Tell them its fingerprint through a channel they trust; "
                "they approve it with " code { "synod operator passkey approve" } "."
            }
            p.hint { a href="/console/login" { "Back to log in" } }
        },
    )
}

/// One request of the pending list, with what the page needs besides the API's view.
pub struct ListedRequest {
    pub info: RequestInfo,
    /// The requester's operator name (or its key, when no operator has it).
    pub requester: String,
}

/// `GET /console/requests`: the requests waiting for this operator's approval.
pub fn list_page(operator: &str, requests: &[ListedRequest], now_ms: u64) -> Markup {
    layout(
        "Waiting for you",
        Some(operator),
        html! {
            @if requests.is_empty() {
                p.empty { "Nothing waits for your approval." }
            }
            table #pending {
                thead { tr {
                    th { "Request" } th { "Key" } th { "Purpose" } th { "Environment" } th { "Declared" }
                    th { "Requester" } th { "Message" } th { "Format" } th { "Progress" } th { "Approved by" }
                    th { "Time left" }
                } }
                tbody {
                    @for listed in requests {
                        @let info = &listed.info;
                        tr data-request-id=(info.request_id) {
                            td { a.open href=(request_href(&info.request_id)) { (info.request_id) } }
                            td { (info.key_name) " v" (info.key_version) }
                            td { (info.purpose) }
                            td { (info.environment) }
                            td { (attributes(info, false)) }
                            td { (listed.requester) }
                            td { (info.message_bytes) " bytes" br; code.hash { (short_hash(&info.message_sha256)) } }
                            td { (format_cell(info)) }
                            td { (progress(info)) }
                            td { (approved_by(info)) }
                            td { (time_left(info.expires_at_ms, now_ms)) }
                        }
                    }
                }
            }
        },
    )
}

/// One line of a request's trail.
pub struct TrailLine {
    /// The log time of the entry (ms).
    pub at_ms: u64,
    /// The log index, to find the entry in `synod audit` (unknown for a request's finish).
    pub index: Option<u64>,
    /// What happened, in words.
    pub what: String,
}

/// What the request page shows.
pub struct RequestView {
    pub info: RequestInfo,
    pub requester: String,
    /// Hex SHA-256 of the approval statement's bytes, which the approval assertion signs.
    pub statement_sha256: String,
    pub trail: Vec<TrailLine>,
    /// Whether the request waits for this operator's approval (the buttons are shown).
    pub asked: bool,
}

/// `GET /console/requests/{id}`: one request, its statement hash, its trail, and the buttons.
pub fn request_page(operator: &str, view: &RequestView, now_ms: u64) -> Markup {
    let info = &view.info;
    layout(
        "Request",
        Some(operator),
        html! {
            section #request data-request-id=(info.request_id) {
                dl {
                    dt { "Request" } dd #request-id { (info.request_id) }
                    dt { "Status" } dd #status { (info.status) }
                    dt { "Key" } dd { (info.key_name) " version " (info.key_version) }
                    dt { "Purpose" } dd { (info.purpose) }
                    dt { "Environment" } dd { (info.environment) }
                    dt { "Declared" } dd { (attributes(info, true)) }
                    dt { "Requester" } dd { (view.requester) }
                    dt { "Message" } dd { (info.message_bytes) " bytes, SHA-256 " code { (info.message_sha256) } }
                    dt { "Format" } dd { (format_cell(info)) }
                    dt { "Progress" } dd #progress { (progress(info)) }
                    dt { "Approved by" } dd { (approved_by(info)) }
                    @if !info.denials.is_empty() {
                        dt { "Denied by" } dd { (info.denials.join("; ")) }
                    }
                    dt { "Time left" } dd { (time_left(info.expires_at_ms, now_ms)) " (until " (utc(info.expires_at_ms)) ")" }
                    dt { "Statement SHA-256" }
                    dd {
                        code #statement-sha256 { (view.statement_sha256) }
                        br;
                        span.hint { (statement_check_hint(&info.request_id)) }
                    }
                }
            }
            @if view.asked {
                section.verdict {
                    p.hint {
                        "Your passkey signs this request's statement. Before you approve, compare the statement "
                        "hash above with what the CLI prints: the node serving this page could show one request and "
                        "ask your passkey to sign another."
                    }
                    button #approve type="button" { "Approve with passkey" }
                    label for="reason" { "Reason to deny" }
                    input #reason name="reason" type="text" maxlength="1024";
                    button #deny type="button" { "Deny with passkey" }
                }
            } @else if info.status == RequestStatus::AwaitingApproval {
                p.hint { "This request does not wait for your approval." }
            }
            h2 { "Trail" }
            table #trail {
                thead { tr { th { "When (UTC)" } th { "Log index" } th { "What" } } }
                tbody {
                    @for line in &view.trail {
                        tr {
                            td { (utc(line.at_ms)) }
                            td { @if let Some(index) = line.index { (index) } @else { "–" } }
                            td { (line.what) }
                        }
                    }
                }
            }
            p.hint { "The whole audit log: " code { "synod audit export" } "." }
            p { a href="/console/requests" { "Back to the list" } }
        },
    )
}

fn request_href(request_id: &str) -> String {
    // Request ids are names (letters, digits, `.`, `_`, `-`), so they need no escaping in a path;
    // maud escapes the attribute anyway.
    format!("/console/requests/{request_id}")
}

/// The declared attributes, `amount` shown as an amount (with the id `amount` on the request page).
fn attributes(info: &RequestInfo, with_ids: bool) -> Markup {
    html! {
        @if info.attributes.is_empty() { "none" }
        ul.attributes {
            @for (name, value) in &info.attributes {
                li {
                    (name) ": "
                    @if name == "amount" {
                        @if with_ids {
                            strong #amount .amount data-value=(value) { (amount(value)) }
                        } @else {
                            strong.amount data-value=(value) { (amount(value)) }
                        }
                    } @else {
                        (value)
                    }
                }
            }
        }
    }
}

/// An amount as people read one: the whole part's digits grouped by thousands
/// (`1250000.5 EUR` is `1,250,000.5 EUR`); anything that is not a number is shown as given.
pub fn amount(value: &str) -> String {
    let value = value.trim();
    let (number, unit) = match value.split_once(' ') {
        Some((number, unit)) => (number, Some(unit.trim())),
        None => (value, None),
    };
    let (sign, digits) = match number.strip_prefix('-') {
        Some(rest) => ("-", rest),
        None => ("", number),
    };
    let (whole, fraction) = match digits.split_once('.') {
        Some((whole, fraction)) => (whole, Some(fraction)),
        None => (digits, None),
    };
    let numeric = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !numeric(whole) || fraction.is_some_and(|f| !numeric(f)) {
        return value.to_string();
    }
    let mut grouped = String::new();
    for (i, digit) in whole.chars().enumerate() {
        if i > 0 && (whole.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    let mut out = format!("{sign}{grouped}");
    if let Some(fraction) = fraction {
        out.push('.');
        out.push_str(fraction);
    }
    if let Some(unit) = unit {
        out.push(' ');
        out.push_str(unit);
    }
    out
}

fn format_cell(info: &RequestInfo) -> Markup {
    html! {
        @match &info.format {
            None => "plain message",
            Some(format) => {
                (format.format.name())
                @if let Some(hash) = &format.inspection.artifact_hash { br; "artifact " code.hash { (hash) } }
                @if format.inspection.opaque { br; em { "opaque digest: trust the requester for what it is" } }
                @if !format.inspection.summary.is_empty() { br; (format.inspection.summary) }
            }
        }
    }
}

fn progress(info: &RequestInfo) -> Markup {
    html! {
        @if info.approval_progress.is_empty() { "no approvals needed" }
        @for line in &info.approval_progress { span.progress { (line) } br; }
    }
}

fn approved_by(info: &RequestInfo) -> String {
    if info.approvals.is_empty() {
        "nobody yet".to_string()
    } else {
        info.approvals.join(", ")
    }
}

fn short_hash(hex: &str) -> String {
    if hex.len() > 16 {
        format!("{}…", &hex[..16])
    } else {
        hex.to_string()
    }
}

/// Time left until `deadline_ms`, by the node's clock, in words.
pub fn time_left(deadline_ms: u64, now_ms: u64) -> String {
    if deadline_ms <= now_ms {
        return "expired".to_string();
    }
    let minutes = (deadline_ms - now_ms).div_ceil(60_000);
    match (minutes / (60 * 24), minutes / 60 % 24, minutes % 60) {
        (0, 0, m) => format!("{m} min"),
        (0, h, m) => format!("{h} h {m} min"),
        (d, h, _) => format!("{d} d {h} h"),
    }
}

/// `ms` since the epoch as `YYYY-MM-DD HH:MM:SS` (UTC).
pub fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Days to a civil date (Howard Hinnant's algorithm, for the proleptic Gregorian calendar).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}", rest / 3600, rest / 60 % 60, rest % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(id: &str) -> RequestInfo {
        serde_json::from_value(serde_json::json!({
            "request_id": id, "key_id": "k1", "key_name": "treasury", "public_key": "00",
            "message_sha256": "ab".repeat(32), "message_bytes": 12, "purpose": "pay <b>x</b>",
            "requester": "11".repeat(32), "status": "awaiting_approval", "signature": null,
            "signers": [], "culprits": [], "sessions": 0, "error": null, "created_index": 7,
            "created_at_ms": 0, "finished_at_ms": null, "environment": "prod",
            "attributes": { "amount": "1250000.50 EUR", "note": "<script>alert(1)</script>" },
            "approvals": ["alice"], "approval_progress": ["1/2 from [alice, bob]"], "policy_version": 1,
            "key_version": 1, "expires_at_ms": 3_600_000
        }))
        .expect("a request info")
    }

    #[test]
    fn console_pages_escape_every_value() {
        // Text from requesters (purpose, attributes) and operator names reach the page escaped,
        // never as markup; the amount is shown grouped with the id the browser test reads.
        let mut info = request("r1");
        info.environment = "\"><img src=x onerror=alert(1)>".into();
        let view = RequestView {
            info,
            requester: "<carol>".into(),
            statement_sha256: "cd".repeat(32),
            trail: vec![TrailLine { at_ms: 0, index: Some(7), what: "created by <carol>".into() }],
            asked: true,
        };
        let page = request_page("<alice>", &view, 0).into_string();
        for raw in ["<script>alert(1)", "<b>x</b>", "<img src=x", "<carol>", "<alice>"] {
            assert!(!page.contains(raw), "{raw} reached the page unescaped");
        }
        assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(page.contains("&lt;alice&gt;"));
        assert!(page.contains(r#"id="amount""#) && page.contains("1,250,000.50 EUR"));
        assert!(page.contains(r#"id="statement-sha256""#) && page.contains(&"cd".repeat(32)));
        assert!(page.contains(&statement_check_hint("r1")));
        assert!(page.contains(r#"id="approve""#) && page.contains(r#"id="deny""#) && page.contains(r#"id="reason""#));
        assert_eq!(page.matches("<script").count(), 1, "only the external script, never an inline one");

        let listed = [ListedRequest { info: request("r<2>"), requester: "<carol>".into() }];
        let page = list_page("alice", &listed, 0).into_string();
        assert!(page.contains(r#"data-request-id="r&lt;2&gt;""#), "{page}");
        assert!(!page.contains("<carol>") && !page.contains("r<2>"));
        assert!(page.contains(r#"class="open""#));
    }

    #[test]
    fn console_amounts_times_and_dates_read_as_people_write_them() {
        // Amounts are grouped by thousands (non-numbers shown as given), time left is in words
        // by the node's clock, and dates are UTC.
        assert_eq!(amount("1250000"), "1,250,000");
        assert_eq!(amount("-1234.5 EUR"), "-1,234.5 EUR");
        assert_eq!(amount("999"), "999");
        assert_eq!(amount("12abc"), "12abc");
        assert_eq!(time_left(1_000, 2_000), "expired");
        assert_eq!(time_left(90 * 60_000, 0), "1 h 30 min");
        assert_eq!(time_left(3 * 86_400_000, 0), "3 d 0 h");
        assert_eq!(utc(0), "1970-01-01 00:00:00");
        assert_eq!(utc(1_796_351_045_000), "2026-12-04 02:24:05");
    }
}
