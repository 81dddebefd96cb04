//! `GET /v1/requests`: a page of the signing requests one operator may read,
//! newest first, answered from the applied state alone.
//!
//! What an operator sees in the list is what it may read one by one
//! (`GET /v1/requests/{id}`, [`crate::caller`]): the scope is judged per
//! request by the same rule, and a request shown without its signature there
//! is listed without it here. The filters (status, key, `approver=me`,
//! `requester=me`, `before_index`) only narrow that set.
//!
//! Bounds. The state keeps every request it ever made (finished ones without
//! their message bytes; there is no retention yet, see ARCHITECTURE.md,
//! *Deliberately absent*), so a call walks the whole request map once, in
//! time linear in it, without allocating per request it passes over: it
//! keeps the newest `limit + 1` matches in a heap and builds the API view of
//! those only. The costlier checks (policy progress for the status of an open
//! request, `Policy::requirements` for `approver=me`) run only on open
//! requests, of which there are at most `PENDING_REQUESTS_MAX` (and one
//! minisign global request per signed minisign request).
//!
//! Paging. Request ids carry no order, so pages go by the log index that
//! created each request (`created_index`), newest first and request id
//! second. One log entry can create several requests (a signing-outcomes
//! entry makes a minisign global request per signed minisign request in it),
//! so a page ends only where one index ends: `next` is the `created_index` of
//! the page's oldest request, and the next page holds those created below it.
//! A page may therefore hold fewer than `limit` requests; if one entry's
//! requests alone are more than `limit`, the page holds all of them.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use synod_proto::api::{RequestFilter, RequestInfo, RequestList, RequestStatus, REQUEST_LIST_LIMIT_MAX};
use synod_proto::NodeError;

use crate::caller::{Access, VerifiedOperator};
use crate::state::{self, ClusterState, RequestRecord};

/// Checks the filter a client sent: `limit` is cut to [`REQUEST_LIST_LIMIT_MAX`]; 0 is refused.
pub fn checked(mut filter: RequestFilter) -> Result<RequestFilter, NodeError> {
    if filter.limit == 0 {
        return Err(NodeError::invalid(format!(
            "limit=0 asks for no requests; give a limit from 1 to {REQUEST_LIST_LIMIT_MAX}, or none for the default"
        )));
    }
    filter.limit = filter.limit.min(REQUEST_LIST_LIMIT_MAX);
    Ok(filter)
}

/// The page of requests `operator` may read that pass `filter` (its limit
/// already [`checked`]): see the module documentation for order and paging.
pub fn list(state: &ClusterState, operator: &VerifiedOperator, filter: &RequestFilter) -> RequestList {
    // `checked` already bounds it; the heap's size must not rest on every caller remembering to.
    let limit = filter.limit.clamp(1, REQUEST_LIST_LIMIT_MAX);
    // A min-heap of the newest `limit + 1` matches: the one past the page says
    // whether there is a next page, and whether the page would split an index.
    let mut newest: BinaryHeap<Reverse<(u64, &str)>> = BinaryHeap::with_capacity(limit + 1);
    for request in state.requests.values() {
        if shown_to(state, operator, filter, request).is_none() {
            continue;
        }
        newest.push(Reverse((request.created_index, request.request_id.as_str())));
        if newest.len() > limit + 1 {
            newest.pop();
        }
    }
    let mut ranked: Vec<(u64, &str)> = newest.into_iter().map(|Reverse(entry)| entry).collect();
    ranked.sort_unstable_by(|a, b| b.cmp(a));
    let (page, next) = match ranked.get(limit).map(|past| past.0) {
        None => (ranked, None),
        Some(boundary) => {
            // Everything above the first request past the page is on it whole;
            // the boundary index's requests go to the next page.
            ranked.retain(|(index, _)| *index > boundary);
            if ranked.is_empty() {
                one_index(state, operator, filter, boundary)
            } else {
                let next = ranked.last().map(|(index, _)| *index);
                (ranked, next)
            }
        }
    };
    let requests = page.into_iter().filter_map(|(_, id)| view(state, operator, id)).collect();
    RequestList { requests, next }
}

/// The page when more than `limit` matches share the newest index left: all
/// of that index's matches (as many as one log entry creates), and `next` when
/// older ones exist.
fn one_index<'s>(
    state: &'s ClusterState,
    operator: &VerifiedOperator,
    filter: &RequestFilter,
    index: u64,
) -> (Vec<(u64, &'s str)>, Option<u64>) {
    let mut page = Vec::new();
    let mut older = false;
    for request in state.requests.values() {
        if request.created_index > index || shown_to(state, operator, filter, request).is_none() {
            continue;
        }
        if request.created_index == index {
            page.push((index, request.request_id.as_str()));
        } else {
            older = true;
        }
    }
    page.sort_unstable_by(|a, b| b.cmp(a));
    (page, older.then_some(index))
}

/// The request as the caller may see it: without its signature for an
/// approver who is not its requester, as `GET /v1/requests/{id}` shows it.
fn view(state: &ClusterState, operator: &VerifiedOperator, request_id: &str) -> Option<RequestInfo> {
    let access = operator.request_access(state, state.requests.get(request_id)?)?;
    let mut info = state.request_info(request_id)?;
    if access == Access::WithoutSignature {
        info.signature = None;
    }
    Some(info)
}

/// How much of `request` the list shows `operator`, or `None` when it is not
/// listed: outside the operator's scope, or failing a filter. Cheap checks
/// first; the costly ones run only on open requests.
pub fn shown_to(
    state: &ClusterState,
    operator: &VerifiedOperator,
    filter: &RequestFilter,
    request: &RequestRecord,
) -> Option<Access> {
    if filter.before_index.is_some_and(|before| request.created_index >= before) {
        return None;
    }
    if filter.mine && request.requester != operator.key {
        return None;
    }
    if let Some(key) = &filter.key {
        let on_key = state.keys.get(&request.key_id).is_some_and(|k| k.name == *key || k.id == *key);
        if !on_key {
            return None;
        }
    }
    let access = operator.request_access(state, request)?;
    if filter.status.is_none() && !filter.awaiting_my_approval {
        return Some(access);
    }
    let status = status_of(state, request);
    if filter.status.is_some_and(|wanted| wanted != status) {
        return None;
    }
    if filter.awaiting_my_approval
        && !(status == RequestStatus::AwaitingApproval && operator.is_asked_to_approve(state, request))
    {
        return None;
    }
    Some(access)
}

/// The request's status as the API names it (`ClusterState::request_info`'s
/// reading): an open request whose policy is not met yet awaits approval.
fn status_of(state: &ClusterState, request: &RequestRecord) -> RequestStatus {
    match &request.status {
        state::RequestStatus::Signed { .. } => RequestStatus::Signed,
        state::RequestStatus::Failed { .. } => RequestStatus::Failed,
        state::RequestStatus::Pending => match state.policy_progress(request, false) {
            Ok(progress) if !progress.met => RequestStatus::AwaitingApproval,
            _ => RequestStatus::Pending,
        },
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use synod_proto::authz::{ApprovalSignature, Policy, Role, Tier};
    use synod_proto::OperatorKey;

    use super::*;
    use crate::state::{ApprovalRecord, KeyRecord, Operator};

    fn operator(name: &str, byte: u8, roles: &[Role]) -> VerifiedOperator {
        VerifiedOperator { name: name.into(), key: OperatorKey([byte; 32]), roles: roles.iter().copied().collect() }
    }

    fn alice() -> VerifiedOperator {
        operator("alice", 1, &[Role::Approver])
    }
    fn bob() -> VerifiedOperator {
        operator("bob", 2, &[Role::Approver])
    }
    fn carol() -> VerifiedOperator {
        operator("carol", 3, &[Role::Approver])
    }
    fn dave() -> VerifiedOperator {
        operator("dave", 4, &[Role::Requester])
    }
    fn erin() -> VerifiedOperator {
        operator("erin", 5, &[Role::Requester])
    }
    fn auditor() -> VerifiedOperator {
        operator("olga", 6, &[Role::Auditor])
    }

    /// An active key `name` (id `id-<name>`) under `policy`.
    fn key(name: &str, policy: Policy) -> KeyRecord {
        let mut key: KeyRecord = serde_json::from_value(serde_json::json!({
            "id": format!("id-{name}"), "name": name, "version": 1, "threshold": 2, "participants": [1, 2, 3],
            "origin": "dkg", "status": {"status": "active"}, "round1": {}, "public_key_package": null,
            "group_key": "ab".repeat(32), "confirmed": [1, 2, 3], "created_index": 1, "created_at_ms": 0,
            "activated_at_ms": 0,
        }))
        .unwrap();
        key.policy = policy;
        key
    }

    /// A state with operators alice, bob, carol (approvers), dave and erin
    /// (requesters) and olga (auditor); key `vault` needs 2 of alice and bob,
    /// and carol too above amount 1000; key `ops` needs nothing.
    fn world() -> ClusterState {
        let mut state = ClusterState::default();
        for op in [alice(), bob(), carol(), dave(), erin(), auditor()] {
            let record = Operator {
                name: op.name.clone(),
                key: Some(op.key),
                ssh_key: None,
                roles: op.roles,
                pending_max: None,
                passkeys: Vec::new(),
            };
            state.operators.insert(op.name.clone(), record);
        }
        let vault = Policy {
            approvers: vec!["alice".into(), "bob".into()],
            approvals_required: 2,
            tiers: vec![Tier {
                attribute: "amount".into(),
                above: 1000,
                approvers: vec!["carol".into()],
                approvals_required: 1,
            }],
            ..Policy::default()
        };
        for key in [key("vault", vault), key("ops", Policy::default())] {
            state.key_names.insert(key.name.clone(), key.id.clone());
            state.keys.insert(key.id.clone(), key);
        }
        state
    }

    /// Adds request `id` on key `key_name` by `requester`, created at `index`.
    fn add(state: &mut ClusterState, id: &str, key_name: &str, requester: &VerifiedOperator, index: u64) {
        let record = RequestRecord {
            request_id: id.into(),
            key_id: format!("id-{key_name}"),
            message: Some("00".into()),
            message_sha256: "00".repeat(32),
            message_bytes: 1,
            purpose: String::new(),
            environment: String::new(),
            attributes: Default::default(),
            requester: requester.key,
            policy_version: 0,
            approvals: Vec::new(),
            denials: Vec::new(),
            expires_at_ms: u64::MAX,
            status: state::RequestStatus::Pending,
            attempt: 0,
            signers: Vec::new(),
            culprits: Vec::new(),
            sessions: 0,
            created_index: index,
            created_at_ms: index,
            finished_at_ms: None,
            format: None,
        };
        state.requests.insert(id.into(), record);
    }

    fn approve(state: &mut ClusterState, id: &str, approver: &str) {
        let signature = ApprovalSignature::Ed25519 { signature: "00".repeat(64) };
        let approval = ApprovalRecord { approver: approver.into(), signature, index: 0, at_ms: 0 };
        state.requests.get_mut(id).unwrap().approvals.push(approval);
    }

    fn sign(state: &mut ClusterState, id: &str) {
        state.requests.get_mut(id).unwrap().status = state::RequestStatus::Signed { signature: "cd".repeat(64) };
    }

    fn filter() -> RequestFilter {
        RequestFilter { limit: 50, ..RequestFilter::default() }
    }

    fn ids(list: &RequestList) -> Vec<&str> {
        list.requests.iter().map(|r| r.request_id.as_str()).collect()
    }

    #[test]
    fn request_list_shows_each_operator_only_what_it_may_read() {
        // Proves the list's scope is the read scope: requesters their own, approvers those of keys
        // whose policy names them (without signatures), auditors everything (with them).
        let mut state = world();
        add(&mut state, "v-dave", "vault", &dave(), 10);
        add(&mut state, "o-dave", "ops", &dave(), 11);
        add(&mut state, "o-erin", "ops", &erin(), 12);
        sign(&mut state, "o-dave");
        sign(&mut state, "o-erin");
        assert_eq!(ids(&list(&state, &dave(), &filter())), ["o-dave", "v-dave"]);
        assert_eq!(ids(&list(&state, &erin(), &filter())), ["o-erin"]);
        assert_eq!(ids(&list(&state, &alice(), &filter())), ["v-dave"]);
        // carol is named by a tier only; a tier still names her, as a read does.
        assert_eq!(ids(&list(&state, &carol(), &filter())), ["v-dave"]);
        let all = list(&state, &auditor(), &filter());
        assert_eq!(ids(&all), ["o-erin", "o-dave", "v-dave"]);
        assert!(all.requests[0].signature.is_some(), "an auditor sees signatures");
        assert!(list(&state, &dave(), &filter()).requests[0].signature.is_some(), "a requester sees its own");
        // An approver sees a signed request of its key without the signature.
        sign(&mut state, "v-dave");
        let seen = list(&state, &alice(), &filter());
        assert_eq!(seen.requests[0].status, RequestStatus::Signed);
        assert!(seen.requests[0].signature.is_none(), "an approver does not get the signature");
        // Someone with no role that reads requests sees an empty list, not an error.
        assert!(list(&state, &operator("mallory", 9, &[]), &filter()).requests.is_empty());
    }

    #[test]
    fn request_list_approver_me_keeps_what_awaits_this_approver() {
        // Proves `approver=me` keeps requests awaiting approval whose policy requirements name the
        // caller and that it has not approved, tiers included, and nothing else.
        let mut state = world();
        add(&mut state, "small", "vault", &dave(), 10);
        add(&mut state, "large", "vault", &dave(), 11);
        // An undeclared amount counts as above the tier's limit, so both declare one.
        state.requests.get_mut("small").unwrap().attributes.insert("amount".into(), "100".into());
        state.requests.get_mut("large").unwrap().attributes.insert("amount".into(), "5000".into());
        add(&mut state, "no-approvals", "ops", &dave(), 12);
        add(&mut state, "done", "vault", &dave(), 13);
        sign(&mut state, "done");
        let mine = RequestFilter { awaiting_my_approval: true, ..filter() };
        assert_eq!(ids(&list(&state, &alice(), &mine)), ["large", "small"]);
        // carol is asked only above the tier's limit.
        assert_eq!(ids(&list(&state, &carol(), &mine)), ["large"]);
        approve(&mut state, "small", "alice");
        assert_eq!(ids(&list(&state, &alice(), &mine)), ["large"], "approved ones leave her list");
        assert_eq!(ids(&list(&state, &bob(), &mine)), ["large", "small"], "and stay on bob's");
        // Once the policy is met the request is no longer awaiting approval.
        approve(&mut state, "small", "bob");
        assert_eq!(ids(&list(&state, &bob(), &mine)), ["large"]);
        // Requesters and auditors are asked for nothing.
        assert!(list(&state, &dave(), &mine).requests.is_empty());
        assert!(list(&state, &auditor(), &mine).requests.is_empty());
        // An approver who lost the role is asked for nothing either.
        let demoted = operator("alice", 1, &[Role::Requester]);
        assert!(list(&state, &demoted, &mine).requests.is_empty());
    }

    #[test]
    fn request_list_filters_by_status_key_and_requester() {
        // Proves status, key (name or id) and `requester=me` narrow the list and combine.
        let mut state = world();
        add(&mut state, "a", "vault", &dave(), 10);
        add(&mut state, "b", "ops", &dave(), 11);
        add(&mut state, "c", "ops", &erin(), 12);
        add(&mut state, "d", "ops", &erin(), 13);
        sign(&mut state, "b");
        state.requests.get_mut("d").unwrap().status = state::RequestStatus::Failed { reason: "expired".into() };
        let with =
            |f: RequestFilter| ids(&list(&state, &auditor(), &f)).into_iter().map(String::from).collect::<Vec<_>>();
        assert_eq!(with(RequestFilter { status: Some(RequestStatus::Signed), ..filter() }), ["b"]);
        assert_eq!(with(RequestFilter { status: Some(RequestStatus::Failed), ..filter() }), ["d"]);
        assert_eq!(with(RequestFilter { status: Some(RequestStatus::Pending), ..filter() }), ["c"]);
        assert_eq!(with(RequestFilter { status: Some(RequestStatus::AwaitingApproval), ..filter() }), ["a"]);
        assert_eq!(with(RequestFilter { key: Some("ops".into()), ..filter() }), ["d", "c", "b"]);
        assert_eq!(with(RequestFilter { key: Some("id-vault".into()), ..filter() }), ["a"]);
        assert!(with(RequestFilter { key: Some("nope".into()), ..filter() }).is_empty());
        let erins = RequestFilter { mine: true, key: Some("ops".into()), ..filter() };
        assert_eq!(ids(&list(&state, &erin(), &erins)), ["d", "c"]);
        assert!(list(&state, &auditor(), &RequestFilter { mine: true, ..filter() }).requests.is_empty());
    }

    #[test]
    fn request_list_pages_by_created_index_without_splitting_an_entry() {
        // Proves paging by `before_index` visits every request once, newest first, even where one
        // log entry created several requests (as a signing-outcomes entry does), and that the
        // heap keeps no more than the page needs.
        let mut state = world();
        // Indexes 10..=19, with three requests at index 15 and two at 12.
        let mut expected = Vec::new();
        for index in (10..=19u64).rev() {
            let count = match index {
                15 => 3,
                12 => 2,
                _ => 1,
            };
            for n in (0..count).rev() {
                let id = format!("r{index}-{n}");
                add(&mut state, &id, "ops", &dave(), index);
                expected.push(id);
            }
        }
        for limit in 1..=14 {
            let mut seen = Vec::new();
            let mut before = None;
            for _ in 0..20 {
                let page = list(&state, &dave(), &RequestFilter { limit, before_index: before, ..filter() });
                assert!(!page.requests.is_empty() || page.next.is_none(), "limit {limit}: an empty page ends");
                let indexes: BTreeSet<u64> = page.requests.iter().map(|r| r.created_index).collect();
                assert!(
                    page.requests.len() <= limit || indexes.len() == 1,
                    "limit {limit}: an oversized page is one entry's"
                );
                seen.extend(page.requests.iter().map(|r| r.request_id.clone()));
                match page.next {
                    Some(next) => {
                        assert_eq!(Some(next), page.requests.last().map(|r| r.created_index));
                        before = Some(next);
                    }
                    None => break,
                }
            }
            assert_eq!(seen, expected, "limit {limit}");
        }
        let whole = list(&state, &dave(), &filter());
        assert_eq!(whole.requests.len(), 13);
        assert_eq!(whole.next, None);
    }

    #[test]
    fn request_list_limit_is_checked() {
        // Proves a zero limit is refused saying what to give, and a huge one is cut to the maximum.
        let error = checked(RequestFilter { limit: 0, ..filter() }).unwrap_err();
        assert!(error.to_string().contains("from 1 to 500"), "{error}");
        assert_eq!(checked(RequestFilter { limit: 1_000_000, ..filter() }).unwrap().limit, REQUEST_LIST_LIMIT_MAX);
        assert_eq!(checked(filter()).unwrap().limit, 50);
    }
}
