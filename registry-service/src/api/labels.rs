//! Labels of every versioned kind (the handlers `versioned_service!` gives
//! each kind call these), and `LabelPolicyService`: which labels only
//! admins may move. Every field is checked, one violation per bad field,
//! before any database work.

use proto::v1 as pb;
use proto::v1::label_policy_service_server::LabelPolicyService;
use tonic::{Request, Response, Status};

use super::retries::Intent;
use super::{Registry, Resource, messages, parts};
use crate::caller::Caller;
use crate::error::{Error, Violations};
use crate::page;
use crate::store::labels::{
    self, LabelChange, LabelRecord, MAX_PROTECTED, MAX_REASON_CHARS, check_name,
};
use crate::store::request_ids::Answer;

/// Moves in a history page when the request gives no page size.
pub const DEFAULT_HISTORY_PAGE: u64 = 50;

/// A SetLabel request's fields.
#[derive(Debug)]
pub struct SetLabel<'a> {
    /// Its request id and `validate_only`.
    pub intent: &'a Intent,
    /// The request field naming the resource, and its value.
    pub id: (&'a str, &'a str),
    pub label: &'a str,
    pub version_number: i64,
    pub expected_version: Option<i64>,
    pub reason: &'a str,
}

/// A DeleteLabel request's fields.
#[derive(Debug)]
pub struct DeleteLabel<'a> {
    /// Its request id and `validate_only`.
    pub intent: &'a Intent,
    /// The request field naming the resource, and its value.
    pub id: (&'a str, &'a str),
    pub label: &'a str,
    pub expected_version: Option<i64>,
    pub reason: &'a str,
}

/// A ListLabelHistory request's fields.
#[derive(Debug)]
pub struct HistoryQuery<'a> {
    /// The method, which scopes the page token.
    pub method: &'a str,
    /// The request field naming the resource, and its value.
    pub id: (&'a str, &'a str),
    /// Empty: every label's moves.
    pub label: &'a str,
    pub page_size: i32,
    pub page_token: &'a str,
}

impl Registry {
    /// SetLabel: points a label of resource `set.id` at a version.
    pub async fn set_label<K: Resource>(
        &self,
        caller: &Caller,
        admin: bool,
        set: SetLabel<'_>,
    ) -> Result<pb::Label, Error> {
        let mut v = Violations::default();
        check_id(&mut v, set.id);
        check_label(&mut v, "label", set.label);
        if set.version_number < 1 {
            v.add("version_number", "must be 1 or more");
        }
        if set.expected_version.is_some_and(|n| n < 0) {
            v.add(
                "expected_version",
                "must be 0 (the label must not exist) or a version number",
            );
        }
        check_reason(&mut v, set.reason);
        v.finish(())?;
        let change = LabelChange {
            caller,
            admin,
            resource_id: set.id.1,
            label: set.label,
            to: Some(set.version_number),
            expected: set.expected_version,
            reason: set.reason,
            how: set.intent.how(),
        };
        let set_label = || async {
            let moved = labels::move_label::<K>(&self.db, change).await?;
            moved
                .map(messages::label)
                .ok_or_else(|| Error::Internal("a label set to a version reads as deleted".into()))
        };
        let rebuild = |answer| async { Ok(messages::label(LabelRecord::of(set.label, answer))) };
        self.once(caller, set.intent, set_label, rebuild).await
    }

    /// DeleteLabel: deletes a label of resource `delete.id`.
    pub async fn delete_label<K: Resource>(
        &self,
        caller: &Caller,
        admin: bool,
        delete: DeleteLabel<'_>,
    ) -> Result<(), Error> {
        let mut v = Violations::default();
        check_id(&mut v, delete.id);
        check_label(&mut v, "label", delete.label);
        if delete.expected_version.is_some_and(|n| n < 1) {
            v.add(
                "expected_version",
                "must be the version the label points at (1 or more)",
            );
        }
        check_reason(&mut v, delete.reason);
        v.finish(())?;
        let change = LabelChange {
            caller,
            admin,
            resource_id: delete.id.1,
            label: delete.label,
            to: None,
            expected: delete.expected_version,
            reason: delete.reason,
            how: delete.intent.how(),
        };
        let delete_label = || async { labels::move_label::<K>(&self.db, change).await.map(|_| ()) };
        self.once(caller, delete.intent, delete_label, |_| async { Ok(()) })
            .await
    }

    /// ListLabels: every label of resource `id`, by name.
    pub async fn list_labels<K: Resource>(
        &self,
        caller: &Caller,
        id: (&str, &str),
    ) -> Result<pb::ListLabelsResponse, Error> {
        let mut v = Violations::default();
        check_id(&mut v, id);
        v.finish(())?;
        let labels = labels::list::<K>(&self.db, &caller.tenant, id.1).await?;
        Ok(pb::ListLabelsResponse {
            labels: labels.into_iter().map(messages::label).collect(),
        })
    }

    /// ListLabelHistory: one page of the moves of resource `id`'s labels.
    pub async fn label_history<K: Resource>(
        &self,
        caller: &Caller,
        query: HistoryQuery<'_>,
    ) -> Result<pb::ListLabelHistoryResponse, Error> {
        let mut v = Violations::default();
        check_id(&mut v, query.id);
        if !query.label.is_empty() {
            check_label(&mut v, "label", query.label);
        }
        let limit = match page::size_or(query.page_size, DEFAULT_HISTORY_PAGE) {
            Ok(limit) => limit,
            Err(_) => {
                v.add("page_size", "must not be negative");
                0
            }
        };
        let id = query.id.1;
        let scope = page::Scope::new(&[&caller.tenant, query.method, id, query.label]);
        // The token resumes after a move's id (a number).
        let after = match scope.resume_after(query.page_token) {
            Ok(None) => None,
            Ok(Some(key)) => key.parse::<i64>().ok().or_else(|| {
                v.add("page_token", "is not a page token of this request");
                None
            }),
            Err(_) => {
                v.add("page_token", "is not a page token of this request");
                None
            }
        };
        v.finish(())?;
        let label = Some(query.label).filter(|l| !l.is_empty());
        let (moves, next) =
            labels::history::<K>(&self.db, &caller.tenant, id, label, after, limit).await?;
        Ok(pb::ListLabelHistoryResponse {
            moves: moves.into_iter().map(messages::label_move).collect(),
            next_page_token: next
                .map(|n| scope.token_after(&n.to_string()))
                .unwrap_or_default(),
        })
    }
}

#[tonic::async_trait]
impl LabelPolicyService for Registry {
    #[tracing::instrument(skip_all)]
    async fn get_label_policy(
        &self,
        request: Request<pb::GetLabelPolicyRequest>,
    ) -> Result<Response<pb::LabelPolicy>, Status> {
        let (caller, _) = parts(request)?;
        let policy = labels::policy(&self.db, &caller.tenant).await?;
        Ok(Response::new(messages::label_policy(policy)))
    }

    #[tracing::instrument(skip_all)]
    async fn update_label_policy(
        &self,
        request: Request<pb::UpdateLabelPolicyRequest>,
    ) -> Result<Response<pb::LabelPolicy>, Status> {
        let (caller, request) = parts(request)?;
        let intent = Intent::of(&request)?;
        let wanted = request.protected_labels;
        if wanted.len() > MAX_PROTECTED {
            return Err(Error::bad_field(
                "protected_labels",
                format!(
                    "must hold at most {MAX_PROTECTED} labels (got {})",
                    wanted.len()
                ),
            )
            .into());
        }
        let mut v = Violations::default();
        for (i, label) in wanted.iter().enumerate() {
            check_label(&mut v, &format!("protected_labels[{i}]"), label);
        }
        let mut protected = v.finish(wanted)?;
        protected.sort_unstable();
        protected.dedup();
        // A retry's request is this one: its answer is these labels, as
        // set when and by whom the first call set them.
        let remembered = protected.clone();
        let set = || labels::set_policy(&self.db, &caller, protected, intent.how());
        let rebuild = |answer: Answer| async move {
            Ok(labels::Policy {
                protected_labels: remembered,
                updated: Some((answer.answer_time, answer.answered_by)),
            })
        };
        let policy = self.once(&caller, &intent, set, rebuild).await?;
        Ok(Response::new(messages::label_policy(policy)))
    }
}

/// Records a violation when the request's resource id is missing or not a
/// UUID.
fn check_id(v: &mut Violations, (field, id): (&str, &str)) {
    if id.trim().is_empty() {
        v.add(field, "is required");
    } else if uuid::Uuid::try_parse(id).is_err() {
        v.add(field, "is not a valid id (a UUID)");
    }
}

/// Records a violation when `label` is not a label name one may set.
fn check_label(v: &mut Violations, field: &str, label: &str) {
    if let Err(problem) = check_name(label) {
        v.add(field, problem);
    }
}

/// Records a violation when a move's reason is too long or holds a NUL.
fn check_reason(v: &mut Violations, reason: &str) {
    if reason.chars().count() > MAX_REASON_CHARS {
        v.add(
            "reason",
            format!("must be at most {MAX_REASON_CHARS} characters"),
        );
    } else if reason.contains('\0') {
        v.add("reason", "must not contain NUL characters");
    }
}
