//! gRPC handlers. Each one is thin: read the caller, turn the request into
//! validated domain values, call the store, turn the result back.

pub mod agents;
pub mod audit;
pub mod keys;
pub mod labels;
pub mod messages;
pub mod providers;
pub mod retries;
pub mod runtime;
pub mod watch;

use std::collections::BTreeMap;

use prost_types::{FieldMask, Timestamp};
use proto::v1 as pb;
use sea_orm::ConnectionTrait;
use tonic::Request;

use crate::caller::Caller;
use crate::crypto::Crypto;
use crate::destinations::Destinations;
use crate::error::{Error, Violations};
use crate::model::Snapshot;
use crate::model::version::Action;
use crate::page;
use crate::store::labels as label_store;
use crate::store::request_ids::Answer;
use crate::store::search::Search;
use crate::store::versioned::{self, Kind, Record, Shown, Write};
use crate::store::{Store, VersionRecord};

/// What every handler shares.
#[derive(Debug, Clone)]
pub struct Registry {
    /// The database pool (and SQLite's write committer).
    pub db: Store,
    /// The crypto-service client.
    pub crypto: Crypto,
    /// Where provider keys may be sent.
    pub destinations: std::sync::Arc<Destinations>,
    /// The change feed WatchChanges streams from.
    pub feed: crate::watch::Feed,
    /// The resolutions ResolveAgent answered last, for `not_modified`.
    pub resolutions: std::sync::Arc<runtime::Resolutions>,
    /// How long a deleted resource is kept before the retention task
    /// purges it (its `purge_time` is its `delete_time` plus this).
    pub purge_after: chrono::TimeDelta,
    /// Request ids (AIP-155): how long they are remembered, the calls in
    /// progress.
    pub retries: std::sync::Arc<retries::Retries>,
}

/// The most paths an update mask may hold: every field of the largest kind
/// (with each model parameter named on its own) fits several times over.
pub const MAX_MASK_PATHS: usize = 64;

/// The longest mask path quoted back in an error message.
const QUOTED_PATH_CHARS: usize = 64;

/// Fields every resource kind sets itself: mask paths naming them (or a
/// field inside them) are ignored, as common.proto promises for OUTPUT_ONLY
/// and IDENTIFIER fields.
pub const OUTPUT_ONLY_PATHS: [&str; 10] = [
    "id",
    "version",
    "etag",
    "create_time",
    "update_time",
    "created_by",
    "updated_by",
    "labels",
    "delete_time",
    "purge_time",
];

/// The update-mask paths to apply: `None` for a full replace (`*`), else
/// the listed paths once each in the order given, or `fields_set` when no
/// mask was sent. Paths naming a field in [`OUTPUT_ONLY_PATHS`] or
/// `output_only` are dropped. More than [`MAX_MASK_PATHS`] paths, or unknown
/// paths, are INVALID_ARGUMENT with one violation per bad path, named
/// `update_mask.paths[i]`; the count is checked before any path is looked
/// at.
pub fn mask_paths(
    mask: Option<&FieldMask>,
    fields_set: impl FnOnce() -> Vec<String>,
    is_known: impl Fn(&str) -> bool,
    output_only: &[&str],
) -> Result<Option<Vec<String>>, Error> {
    let Some(mask) = mask.filter(|m| !m.paths.is_empty()) else {
        return Ok(Some(fields_set()));
    };
    if mask.paths.len() > MAX_MASK_PATHS {
        return Err(Error::bad_field(
            "update_mask.paths",
            format!(
                "must hold at most {MAX_MASK_PATHS} paths (got {})",
                mask.paths.len()
            ),
        ));
    }
    if mask.paths.iter().any(|p| p == "*") {
        if mask.paths.len() > 1 {
            let mut violations = Violations::default();
            for (i, path) in mask.paths.iter().enumerate() {
                if path == "*" {
                    violations.add(
                        format!("update_mask.paths[{i}]"),
                        "`*` must be the only path",
                    );
                }
            }
            return violations.finish(None);
        }
        return Ok(None);
    }
    let is_output_only = |path: &str| {
        let field = path.split('.').next().unwrap_or(path);
        OUTPUT_ONLY_PATHS.contains(&field) || output_only.contains(&field)
    };
    let mut violations = Violations::default();
    for (i, path) in mask.paths.iter().enumerate() {
        if !is_output_only(path) && !is_known(path) {
            violations.add(
                format!("update_mask.paths[{i}]"),
                format!("unknown path {}", quoted(path)),
            );
        }
    }
    let mut seen = std::collections::HashSet::with_capacity(mask.paths.len());
    violations.finish(Some(
        mask.paths
            .iter()
            .filter(|p| !is_output_only(p) && seen.insert(p.as_str()))
            .cloned()
            .collect(),
    ))
}

/// A path as an error message shows it: at most [`QUOTED_PATH_CHARS`]
/// characters.
fn quoted(path: &str) -> String {
    match path.char_indices().nth(QUOTED_PATH_CHARS) {
        Some((end, _)) => format!("{}…", &path[..end]),
        None => path.to_owned(),
    }
}

/// Checks that a required id field holds an id: every resource id is a
/// UUID, so anything else is malformed (INVALID_ARGUMENT, as common.proto
/// says) and a well-formed unknown id is NOT_FOUND.
pub fn require_id(field: &str, id: &str) -> Result<(), Error> {
    if id.trim().is_empty() {
        return Err(Error::bad_field(field, "is required"));
    }
    if uuid::Uuid::try_parse(id).is_err() {
        return Err(Error::bad_field(field, "is not a valid id (a UUID)"));
    }
    Ok(())
}

/// Checks a version number field.
pub fn require_version(field: &str, number: i64) -> Result<(), Error> {
    if number < 1 {
        return Err(Error::bad_field(field, "must be 1 or more"));
    }
    Ok(())
}

/// Checks both version numbers of a diff, one violation per bad field.
pub fn require_versions(from: i64, to: i64) -> Result<(), Error> {
    let mut violations = crate::error::Violations::default();
    for (field, number) in [("from_version", from), ("to_version", to)] {
        if number < 1 {
            violations.add(field, "must be 1 or more");
        }
    }
    violations.finish(())
}

/// The `version_number` to resume before, from a page token.
pub fn version_cursor(after: Option<String>) -> Result<Option<i64>, Error> {
    after
        .map(|key| {
            key.parse()
                .map_err(|_| Error::bad_field("page_token", "is not a page token of this request"))
        })
        .transpose()
}

/// A versioned kind as the API serves it: its messages.
pub trait Resource: Kind {
    /// The resource message (`pb::Agent`).
    type Message: prost::Message;
    /// The version message (`pb::AgentVersion`).
    type Version: prost::Message;
    /// The message of `spec` with the resource metadata `meta`.
    fn message(spec: &Self::Spec, meta: Meta) -> Self::Message;
    /// The version message of `version`.
    fn version(version: VersionParts<Self::Message>) -> Self::Version;
    /// Sets the message's `validated_diff` (a dry run's answer).
    fn set_validated_diff(message: &mut Self::Message, diff: Vec<pb::FieldChange>);
    /// The request field that holds the resource (`"agent"`).
    const FIELD: &'static str;
    /// The kind's output-only fields besides [`OUTPUT_ONLY_PATHS`].
    const OUTPUT_ONLY: &'static [&'static str] = &[];
    /// The message's id and etag.
    fn id_and_etag(input: &Self::Message) -> (&str, &str);
    /// Refuses a message whose repeated fields hold more items than a valid
    /// resource can, before anything iterates over them.
    fn check_counts(input: &Self::Message) -> Result<(), Error>;
    /// The fields a request without an update mask sets.
    fn fields_set(input: &Self::Message) -> Vec<String>;
    /// Whether `path` names a field an update mask may carry.
    fn is_mask_path(path: &str) -> bool;
    /// Whether version `number` of `id` may be restored by a rollback (a
    /// deployment rule the store does not know); yes unless a kind says.
    fn restorable(
        _registry: &Registry,
        _tenant: &str,
        _id: &str,
        _number: i64,
    ) -> impl std::future::Future<Output = Result<(), Error>> + Send {
        std::future::ready(Ok(()))
    }
}

/// The metadata every resource message carries.
#[derive(Debug)]
pub struct Meta {
    pub id: String,
    pub version: i64,
    pub etag: String,
    pub create_time: Option<Timestamp>,
    pub update_time: Option<Timestamp>,
    pub created_by: String,
    pub updated_by: String,
    /// The resource's labels (label → version); empty where not read.
    pub labels: BTreeMap<String, i64>,
    /// When it was deleted; `None` while live.
    pub delete_time: Option<Timestamp>,
    /// When the retention task will purge it (deleted resources only;
    /// `None` where not known).
    pub purge_time: Option<Timestamp>,
}

impl Meta {
    /// The metadata of a stored record.
    pub fn of<S>(record: &Record<S>) -> Self {
        Self {
            id: record.id.clone(),
            version: record.version,
            etag: etag(record.version),
            create_time: Some(timestamp(record.create_time)),
            update_time: Some(timestamp(record.update_time)),
            created_by: record.created_by.clone(),
            updated_by: record.updated_by.clone(),
            labels: BTreeMap::new(),
            delete_time: record.delete_time.map(timestamp),
            purge_time: None,
        }
    }

    /// The metadata of a stored record with its labels, and when it will
    /// be purged if it is deleted (`purge_after` its deletion).
    pub fn labelled<S>(
        record: &Record<S>,
        labels: BTreeMap<String, i64>,
        purge_after: chrono::TimeDelta,
    ) -> Self {
        let purge_time = record
            .delete_time
            .and_then(|deleted| deleted.checked_add_signed(purge_after))
            .map(timestamp);
        Self {
            labels,
            purge_time,
            ..Self::of(record)
        }
    }
}

/// The fields every version message has.
#[derive(Debug)]
pub struct VersionParts<M> {
    pub version_number: i64,
    pub action: i32,
    pub configuration: M,
    pub diff: Vec<pb::FieldChange>,
    pub change_description: String,
    pub changed_by: String,
    pub create_time: Option<Timestamp>,
    /// The labels naming this version now.
    pub labels: Vec<String>,
}

/// The [`Resource`] messages of a kind whose messages have the common
/// shape: the resource message is the spec's message with [`Meta`]'s
/// fields (and `id` and `etag` in requests), the version message holds
/// [`VersionParts`].
///
/// Its request side: `$field` names the resource in requests, `$counts`
/// checks a message's repeated fields, `$mask` knows the kind's mask paths,
/// and `$output_only` lists the kind's own output-only fields.
macro_rules! resource_messages {
    (
        $message:path, $version:path, field $field:literal,
        counts $counts:path, mask paths $mask:path
        $(, output only $output_only:expr)?
    ) => {
        type Message = $message;
        type Version = $version;
        const FIELD: &'static str = $field;
        $(const OUTPUT_ONLY: &'static [&'static str] = $output_only;)?

        fn id_and_etag(input: &$message) -> (&str, &str) {
            (&input.id, &input.etag)
        }

        fn set_validated_diff(message: &mut $message, diff: Vec<pb::FieldChange>) {
            message.validated_diff = diff;
        }

        fn check_counts(input: &$message) -> Result<(), $crate::error::Error> {
            $counts(input)
        }

        fn fields_set(input: &$message) -> Vec<String> {
            <Self as $crate::store::versioned::Kind>::Spec::fields_set(input)
        }

        fn is_mask_path(path: &str) -> bool {
            $mask(path)
        }

        fn message(spec: &Self::Spec, meta: $crate::api::Meta) -> $message {
            let $crate::api::Meta {
                id,
                version,
                etag,
                create_time,
                update_time,
                created_by,
                updated_by,
                labels,
                delete_time,
                purge_time,
            } = meta;
            $message {
                id,
                version,
                etag,
                create_time,
                update_time,
                created_by,
                updated_by,
                labels: labels.into_iter().collect(),
                delete_time,
                purge_time,
                validated_diff: Vec::new(),
                ..spec.to_proto()
            }
        }

        fn version(parts: $crate::api::VersionParts<$message>) -> $version {
            let $crate::api::VersionParts {
                version_number,
                action,
                configuration,
                diff,
                change_description,
                changed_by,
                create_time,
                labels,
            } = parts;
            $version {
                version_number,
                action,
                configuration: Some(configuration),
                diff,
                change_description,
                changed_by,
                create_time,
                labels,
            }
        }
    };
}
pub(crate) use resource_messages;

/// The message of a stored record.
pub fn message<K: Resource>(record: &Record<K::Spec>) -> K::Message {
    K::message(&record.spec, Meta::of(record))
}

/// The version message of version `version` of resource `id` (created as
/// `resource` says): its configuration carries the metadata the resource
/// had at that version.
fn version_of<K: Resource>(
    id: &str,
    version: &VersionRecord,
    labels: Vec<String>,
) -> Result<K::Version, Error> {
    let spec = K::Spec::from_json(&version.configuration)?;
    let meta = Meta {
        id: id.to_owned(),
        version: version.version_number,
        etag: etag(version.version_number),
        create_time: Some(timestamp(version.resource_create_time)),
        update_time: Some(timestamp(version.create_time)),
        created_by: version.resource_created_by.clone(),
        updated_by: version.changed_by.clone(),
        labels: BTreeMap::new(),
        // As GetAgent (with `show_deleted`) showed it right after this
        // version: a DELETE version's resource was deleted then.
        delete_time: (version.action == Action::Delete).then(|| timestamp(version.create_time)),
        purge_time: None,
    };
    Ok(K::version(VersionParts {
        version_number: version.version_number,
        action: messages::action(version.action).into(),
        configuration: K::message(&spec, meta),
        diff: version.diff.iter().map(messages::change).collect(),
        change_description: version.change_description.clone(),
        changed_by: version.changed_by.clone(),
        create_time: Some(timestamp(version.create_time)),
        labels,
    }))
}

/// One page of a listing, as the response messages hold it.
#[derive(Debug)]
pub struct Listed<T> {
    pub items: Vec<T>,
    pub next_page_token: String,
    pub total_size: i32,
}

/// A versioned kind's gRPC service: the handlers every kind has (get,
/// list, delete, undelete, purge, list versions, get a version, diff two,
/// roll back) come
/// from the generic methods of [`Registry`] below; the kind lists its
/// request types, the field that names the resource in its version
/// requests (`$of`) and in its delete request (`$del`), and writes its
/// own handlers (create, update, …) in `$own`.
macro_rules! versioned_service {
    (
        $service:ident for $K:ty = $kind:expr; versions of $of:ident; delete by $del:ident;
        $get:ident($get_req:ident);
        $list:ident($list_req:ident, $list_scope:literal) -> $list_res:ident { $items:ident };
        $delete:ident($delete_req:ident);
        $undelete:ident($undelete_req:ident);
        $purge:ident($purge_req:ident);
        $lv:ident($lv_req:ident, $lv_scope:literal) -> $lv_res:ident;
        $gv:ident($gv_req:ident);
        $diff:ident($diff_req:ident) -> $diff_res:ident;
        $rollback:ident($rollback_req:ident);
        labels $set_label:ident($set_label_req:ident), $delete_label:ident($delete_label_req:ident),
            $list_labels:ident($list_labels_req:ident),
            $label_history:ident($label_history_req:ident, $history_scope:literal);
        $($own:tt)*
    ) => {
        #[tonic::async_trait]
        impl $service for Registry {
            #[tracing::instrument(skip_all)]
            async fn $get(
                &self,
                request: Request<pb::$get_req>,
            ) -> Result<Response<<$K as Resource>::Message>, Status> {
                let (caller, request) = parts(request)?;
                let id = ("id", request.id.as_str());
                Ok(Response::new(self.get::<$K>(&caller, id, request.show_deleted).await?))
            }

            #[tracing::instrument(skip_all)]
            async fn $list(
                &self,
                request: Request<pb::$list_req>,
            ) -> Result<Response<pb::$list_res>, Status> {
                let (caller, request) = parts(request)?;
                let page = (request.page_size, request.page_token.as_str());
                let search = (
                    request.filter.as_str(),
                    request.order_by.as_str(),
                    request.show_deleted,
                );
                let page = self.list::<$K>(&caller, $list_scope, page, search).await?;
                Ok(Response::new(pb::$list_res {
                    $items: page.items,
                    next_page_token: page.next_page_token,
                    total_size: page.total_size,
                }))
            }

            #[tracing::instrument(skip_all)]
            async fn $delete(
                &self,
                request: Request<pb::$delete_req>,
            ) -> Result<Response<()>, Status> {
                let (caller, request) = parts(request)?;
                let intent = $crate::api::retries::Intent::of(&request)?;
                let id = (stringify!($del), request.$del.as_str());
                self.delete(&$kind, &caller, id, &request.etag, &intent).await?;
                Ok(Response::new(()))
            }

            #[tracing::instrument(skip_all, fields(id = %request.get_ref().$del))]
            async fn $undelete(
                &self,
                request: Request<pb::$undelete_req>,
            ) -> Result<Response<<$K as Resource>::Message>, Status> {
                let (caller, request) = parts(request)?;
                let intent = $crate::api::retries::Intent::of(&request)?;
                let id = (stringify!($del), request.$del.as_str());
                let kind = $kind;
                let undeleted = self.undelete(&kind, &caller, id, &request.etag, &intent);
                Ok(Response::new(undeleted.await?))
            }

            #[tracing::instrument(skip_all, fields(id = %request.get_ref().$del))]
            async fn $purge(
                &self,
                request: Request<pb::$purge_req>,
            ) -> Result<Response<()>, Status> {
                let (caller, request) = parts(request)?;
                let intent = $crate::api::retries::Intent::of(&request)?;
                let id = (stringify!($del), request.$del.as_str());
                self.purge(&$kind, &caller, id, &request.etag, &intent).await?;
                Ok(Response::new(()))
            }

            #[tracing::instrument(skip_all)]
            async fn $lv(
                &self,
                request: Request<pb::$lv_req>,
            ) -> Result<Response<pb::$lv_res>, Status> {
                let (caller, request) = parts(request)?;
                let of = ($lv_scope, stringify!($of), request.$of.as_str());
                let (size, token) = (request.page_size, &request.page_token);
                let page = self.list_versions::<$K>(&caller, of, size, token).await?;
                Ok(Response::new(pb::$lv_res {
                    versions: page.items,
                    next_page_token: page.next_page_token,
                    total_size: page.total_size,
                }))
            }

            #[tracing::instrument(skip_all)]
            async fn $gv(
                &self,
                request: Request<pb::$gv_req>,
            ) -> Result<Response<<$K as Resource>::Version>, Status> {
                let (caller, request) = parts(request)?;
                let id = (stringify!($of), request.$of.as_str());
                let version = self.get_version::<$K>(&caller, id, request.version_number);
                Ok(Response::new(version.await?))
            }

            #[tracing::instrument(skip_all)]
            async fn $diff(
                &self,
                request: Request<pb::$diff_req>,
            ) -> Result<Response<pb::$diff_res>, Status> {
                let (caller, request) = parts(request)?;
                let id = (stringify!($of), request.$of.as_str());
                let range = (request.from_version, request.to_version);
                let changes = self.diff_versions::<$K>(&caller, id, range).await?;
                Ok(Response::new(pb::$diff_res { changes }))
            }

            #[tracing::instrument(skip_all, fields(id = %request.get_ref().$of))]
            async fn $rollback(
                &self,
                request: Request<pb::$rollback_req>,
            ) -> Result<Response<<$K as Resource>::Message>, Status> {
                let (caller, request) = parts(request)?;
                let intent = $crate::api::retries::Intent::of(&request)?;
                let id = (stringify!($of), request.$of.as_str());
                let how = (request.etag.as_str(), request.change_description.as_str());
                let (kind, number) = ($kind, request.version_number);
                let rolled_back = self.rollback(&kind, &caller, id, number, how, &intent);
                Ok(Response::new(rolled_back.await?))
            }

            #[tracing::instrument(skip_all, fields(id = %request.get_ref().$of))]
            async fn $set_label(
                &self,
                request: Request<pb::$set_label_req>,
            ) -> Result<Response<pb::Label>, Status> {
                let admin = $crate::caller::TenantAdmin::is_caller_of(&request);
                let (caller, request) = parts(request)?;
                let intent = $crate::api::retries::Intent::of(&request)?;
                let set = $crate::api::labels::SetLabel {
                    intent: &intent,
                    id: (stringify!($of), request.$of.as_str()),
                    label: &request.label,
                    version_number: request.version_number,
                    expected_version: request.expected_version,
                    reason: &request.reason,
                };
                Ok(Response::new(self.set_label::<$K>(&caller, admin, set).await?))
            }

            #[tracing::instrument(skip_all, fields(id = %request.get_ref().$of))]
            async fn $delete_label(
                &self,
                request: Request<pb::$delete_label_req>,
            ) -> Result<Response<()>, Status> {
                let admin = $crate::caller::TenantAdmin::is_caller_of(&request);
                let (caller, request) = parts(request)?;
                let intent = $crate::api::retries::Intent::of(&request)?;
                let delete = $crate::api::labels::DeleteLabel {
                    intent: &intent,
                    id: (stringify!($of), request.$of.as_str()),
                    label: &request.label,
                    expected_version: request.expected_version,
                    reason: &request.reason,
                };
                self.delete_label::<$K>(&caller, admin, delete).await?;
                Ok(Response::new(()))
            }

            #[tracing::instrument(skip_all)]
            async fn $list_labels(
                &self,
                request: Request<pb::$list_labels_req>,
            ) -> Result<Response<pb::ListLabelsResponse>, Status> {
                let (caller, request) = parts(request)?;
                let id = (stringify!($of), request.$of.as_str());
                Ok(Response::new(self.list_labels::<$K>(&caller, id).await?))
            }

            #[tracing::instrument(skip_all)]
            async fn $label_history(
                &self,
                request: Request<pb::$label_history_req>,
            ) -> Result<Response<pb::ListLabelHistoryResponse>, Status> {
                let (caller, request) = parts(request)?;
                let query = $crate::api::labels::HistoryQuery {
                    method: $history_scope,
                    id: (stringify!($of), request.$of.as_str()),
                    label: &request.label,
                    page_size: request.page_size,
                    page_token: &request.page_token,
                };
                Ok(Response::new(self.label_history::<$K>(&caller, query).await?))
            }

            $($own)*
        }
    };
}
pub(crate) use versioned_service;

/// The resource message a create or update request must carry.
pub fn required<T>(field: &str, message: Option<T>) -> Result<T, Error> {
    message.ok_or_else(|| Error::bad_field(field, "is required"))
}

/// Who writes and why: the given description, or `default`.
pub fn writer<'a>(
    caller: &'a Caller,
    action: Action,
    (given, default): (&str, &str),
) -> Result<Write<'a>, Error> {
    let description = describe(given, || default.to_owned())?;
    Ok(Write::new(caller, action, description))
}

/// What every update request carries besides the new values, checked in
/// this order: the resource's id and etag, its item counts and update mask
/// (both reported together), the description.
#[derive(Debug)]
pub struct UpdateParts<'a> {
    pub write: Write<'a>,
    pub expected: Option<i64>,
    /// `None`: a full replace.
    pub paths: Option<Vec<String>>,
}

impl<'a> UpdateParts<'a> {
    /// The resource an update request must carry (`K::FIELD`), and its
    /// parts, checked.
    pub fn of<K: Resource>(
        caller: &'a Caller,
        input: Option<K::Message>,
        mask: Option<&FieldMask>,
        description: &str,
    ) -> Result<(K::Message, Self), Error> {
        let input = required(K::FIELD, input)?;
        let parts = Self::check::<K>(caller, &input, mask, description)?;
        Ok((input, parts))
    }

    fn check<K: Resource>(
        caller: &'a Caller,
        input: &K::Message,
        mask: Option<&FieldMask>,
        description: &str,
    ) -> Result<Self, Error> {
        let (id, etag) = K::id_and_etag(input);
        require_id(&format!("{}.id", K::FIELD), id)?;
        let expected = parse_etag(etag, &format!("{}.etag", K::FIELD))?;
        let counts = K::check_counts(input);
        let fields_set = || K::fields_set(input);
        let mask = mask_paths(mask, fields_set, K::is_mask_path, K::OUTPUT_ONLY);
        let paths = Error::both(counts, mask)?;
        let default = format!("{} updated", title(K::NAMES.kind));
        let write = writer(caller, Action::Update, (description, &default))?;
        Ok(Self {
            write,
            expected,
            paths,
        })
    }
}

/// Who creates a resource of kind `K` and why (the given description, or
/// "<Kind> created"), and the new resource's id (a UUIDv7).
pub fn creation<'a, K: Resource>(
    caller: &'a Caller,
    description: &str,
) -> Result<(Write<'a>, String), Error> {
    let default = format!("{} created", title(K::NAMES.kind));
    let write = writer(caller, Action::Create, (description, &default))?;
    Ok((write, uuid::Uuid::now_v7().to_string()))
}

/// A kind's name as a description starts it (`"Agent"`).
pub fn title(kind: &str) -> String {
    let mut chars = kind.chars();
    chars
        .next()
        .map(|first| first.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
}

/// The caller and the request's message.
pub fn parts<T>(request: Request<T>) -> Result<(Caller, T), Error> {
    Ok((Caller::of(&request)?, request.into_inner()))
}

/// The handlers every versioned kind shares; each service's handlers only
/// name their request's fields.
impl Registry {
    /// Get: the resource `id` (in field `field`); a deleted one only with
    /// `show_deleted`.
    pub async fn get<K: Resource>(
        &self,
        caller: &Caller,
        (field, id): (&str, &str),
        show_deleted: bool,
    ) -> Result<K::Message, Error> {
        require_id(field, id)?;
        let shown = Shown::deleted_too(show_deleted);
        let record = versioned::get_shown::<K>(&self.db, &caller.tenant, id, shown).await?;
        self.labelled::<K>(&caller.tenant, &record).await
    }

    /// The message of `record` with its labels (one query).
    pub async fn labelled<K: Resource>(
        &self,
        tenant: &str,
        record: &Record<K::Spec>,
    ) -> Result<K::Message, Error> {
        let labels = label_store::labels_of::<K>(&self.db, tenant, &record.id).await?;
        Ok(self.with_labels::<K>(record, labels))
    }

    /// The answer of an update or rollback: the message of what it wrote,
    /// with the labels its write read, or else read now (one query).
    pub async fn written<K: Resource>(
        &self,
        tenant: &str,
        written: versioned::Written<K::Spec>,
    ) -> Result<K::Message, Error> {
        match written.labels {
            Some(labels) => Ok(self.with_labels::<K>(&written.record, labels)),
            None => self.labelled::<K>(tenant, &written.record).await,
        }
    }

    fn with_labels<K: Resource>(
        &self,
        record: &Record<K::Spec>,
        labels: Vec<label_store::LabelRecord>,
    ) -> K::Message {
        let labels = labels
            .into_iter()
            .map(|l| (l.label, l.version_number))
            .collect();
        let meta = Meta::labelled(record, labels, self.purge_after);
        K::message(&record.spec, meta)
    }

    /// List: one page of the caller's resources that `filter` selects, in
    /// `order_by`'s order; `method` scopes the token, with the filter and
    /// the order in their canonical forms (a plain listing's token is
    /// scoped as before filters existed).
    pub async fn list<K: Resource>(
        &self,
        caller: &Caller,
        method: &str,
        (page_size, page_token): (i32, &str),
        (filter, order_by, show_deleted): (&str, &str, bool),
    ) -> Result<Listed<K::Message>, Error> {
        let limit = page::size(page_size)?;
        let backend = self.db.get_database_backend();
        let search = Search::new::<K>(&caller.tenant, (filter, order_by), backend)?;
        let mut parts = vec![caller.tenant.as_str(), method];
        if !search.is_plain() {
            let (filter, order_by) = (&search.filter, &search.order_by);
            parts.extend(["filter", filter, "order_by", order_by]);
        }
        if show_deleted {
            parts.push("show_deleted");
        }
        let scope = page::Scope::new(&parts);
        let after = scope.resume_after(page_token)?;
        let shown = Shown::deleted_too(show_deleted);
        let page =
            versioned::list::<K>(&self.db, &caller.tenant, (&search, shown), after, limit).await?;
        let ids: Vec<&str> = page.items.iter().map(|r| r.id.as_str()).collect();
        let mut labels = label_store::labels_of_many::<K>(&self.db, &caller.tenant, &ids).await?;
        let message = |record: &Record<K::Spec>| {
            let labels = labels.remove(&record.id).unwrap_or_default();
            K::message(
                &record.spec,
                Meta::labelled(record, labels, self.purge_after),
            )
        };
        let mut items: Vec<K::Message> = page.items.iter().map(message).collect();
        let next_after = page::cut_with_next(&mut items, &page.items, page.next_after, |record| {
            search.cursor::<K>(record)
        });
        Ok(Listed {
            items,
            next_page_token: next_after
                .map(|k| scope.token_after(&k))
                .unwrap_or_default(),
            total_size: clamp_total(page.total),
        })
    }

    /// ListVersions: one page of resource `id`'s versions, newest first.
    pub async fn list_versions<K: Resource>(
        &self,
        caller: &Caller,
        (method, field, id): (&str, &str, &str),
        page_size: i32,
        page_token: &str,
    ) -> Result<Listed<K::Version>, Error> {
        require_id(field, id)?;
        let limit = page::size(page_size)?;
        let scope = page::Scope::new(&[&caller.tenant, method, id]);
        let before = version_cursor(scope.resume_after(page_token)?)?;
        let page =
            versioned::list_versions::<K>(&self.db, &caller.tenant, id, before, limit).await?;
        // Every label of the resource (at most MAX_LABELS), in one query.
        let labels = label_store::labels_of::<K>(&self.db, &caller.tenant, id).await?;
        let naming = |number: i64| {
            labels
                .iter()
                .filter(|l| l.version_number == number)
                .map(|l| l.label.clone())
                .collect()
        };
        let mut items: Vec<K::Version> = page
            .items
            .iter()
            .map(|v| version_of::<K>(id, v, naming(v.version_number)))
            .collect::<Result<_, _>>()?;
        let next_after = page::cut_with_next(&mut items, &page.items, page.next_after, |version| {
            version.version_number.to_string()
        });
        Ok(Listed {
            items,
            next_page_token: next_after
                .map(|k| scope.token_after(&k))
                .unwrap_or_default(),
            total_size: clamp_total(page.total),
        })
    }

    /// GetVersion: version `number` of resource `id` (in field `field`).
    pub async fn get_version<K: Resource>(
        &self,
        caller: &Caller,
        (field, id): (&str, &str),
        number: i64,
    ) -> Result<K::Version, Error> {
        require_id(field, id)?;
        require_version("version_number", number)?;
        let version = versioned::get_version::<K>(&self.db, &caller.tenant, id, number).await?;
        let labels = label_store::labels_of::<K>(&self.db, &caller.tenant, id).await?;
        let naming = labels
            .into_iter()
            .filter(|l| l.version_number == number)
            .map(|l| l.label)
            .collect();
        version_of::<K>(id, &version, naming)
    }

    /// DiffVersions: the changes from version `from` to version `to`.
    pub async fn diff_versions<K: Resource>(
        &self,
        caller: &Caller,
        (field, id): (&str, &str),
        (from, to): (i64, i64),
    ) -> Result<Vec<pb::FieldChange>, Error> {
        require_id(field, id)?;
        require_versions(from, to)?;
        let tenant = &caller.tenant;
        let from = versioned::get_version::<K>(&self.db, tenant, id, from).await?;
        let to = versioned::get_version::<K>(&self.db, tenant, id, to).await?;
        // Both sides in today's stored form: a snapshot stored by an
        // earlier release may spell an unset field differently (an empty
        // backstory as `""` rather than left out), which is no change.
        let new = K::Spec::from_json(&to.configuration)?;
        let changes = K::diff(
            &K::Spec::from_json(&from.configuration)?,
            &new,
            &new.to_json(),
        );
        Ok(changes.iter().map(messages::change).collect())
    }

    /// Delete: marks resource `id` (in field `field`) deleted, when `etag`
    /// (if sent) is current (soft delete: see [`versioned::delete`]); once
    /// per request id, or only checked.
    pub async fn delete<K: Resource>(
        &self,
        kind: &K,
        caller: &Caller,
        (field, id): (&str, &str),
        etag: &str,
        intent: &retries::Intent,
    ) -> Result<(), Error> {
        require_id(field, id)?;
        let expected = parse_etag(etag, "etag")?;
        let deleted = format!("{} deleted", title(K::NAMES.kind));
        let delete = || async {
            let write = intent.stamp(writer(caller, Action::Delete, ("", &deleted))?);
            let validate_only = intent.validate_only;
            versioned::delete(&self.db, kind, write, id, expected, validate_only).await?;
            Ok(())
        };
        self.once(caller, intent, delete, |_| async { Ok(()) })
            .await
    }

    /// Undelete: restores deleted resource `id` (in field `field`), when
    /// `etag` (if sent) is current; once per request id, or only checked.
    pub async fn undelete<K: Resource>(
        &self,
        kind: &K,
        caller: &Caller,
        (field, id): (&str, &str),
        etag: &str,
        intent: &retries::Intent,
    ) -> Result<K::Message, Error> {
        require_id(field, id)?;
        let expected = parse_etag(etag, "etag")?;
        let undeleted = format!("{} undeleted", title(K::NAMES.kind));
        let undelete = || async {
            let write = intent.stamp(writer(caller, Action::Undelete, ("", &undeleted))?);
            let validate_only = intent.validate_only;
            let record =
                versioned::undelete(&self.db, kind, write, id, expected, validate_only).await?;
            self.labelled::<K>(&caller.tenant, &record).await
        };
        let rebuild = |answer| self.labelled_at::<K>(caller, answer);
        self.once(caller, intent, undelete, rebuild).await
    }

    /// Purge: removes deleted resource `id` (in field `field`) and its
    /// history for good, when `etag` (if sent) is current; once per request
    /// id, or only checked.
    pub async fn purge<K: Resource>(
        &self,
        kind: &K,
        caller: &Caller,
        (field, id): (&str, &str),
        etag: &str,
        intent: &retries::Intent,
    ) -> Result<(), Error> {
        require_id(field, id)?;
        let expected = parse_etag(etag, "etag")?;
        let purge = || versioned::purge_now(&self.db, kind, caller, id, expected, intent.how());
        self.once(caller, intent, purge, |_| async { Ok(()) }).await
    }

    /// Rollback: resource `id` (in field `field`) back to version `number`.
    pub async fn rollback<K: Resource>(
        &self,
        kind: &K,
        caller: &Caller,
        (field, id): (&str, &str),
        number: i64,
        (etag, description): (&str, &str),
        intent: &retries::Intent,
    ) -> Result<K::Message, Error> {
        require_id(field, id)?;
        require_version("version_number", number)?;
        let expected = parse_etag(etag, "etag")?;
        let description = describe(description, || format!("Rolled back to version {number}"))?;
        K::restorable(self, &caller.tenant, id, number).await?;
        let write = intent.stamp(Write::new(caller, Action::Rollback, description));
        if intent.validate_only {
            let validated =
                versioned::validate_rollback(&self.db, kind, &write, id, number, expected).await?;
            return self.validated::<K>(&caller.tenant, validated).await;
        }
        // A rollback's only effect is its transaction (a provider's key
        // comes from the snapshot: crypto-service is not called).
        let rollback = || async {
            let write = write.clone();
            let written = versioned::rollback(&self.db, kind, write, id, number, expected).await?;
            self.written::<K>(&caller.tenant, written).await
        };
        let rebuild = |answer| self.labelled_at::<K>(caller, answer);
        self.once_write_first(caller, intent, rollback, rebuild)
            .await
    }

    /// A dry run's answer: the resource as it would be, with its labels
    /// and the changes its version would record.
    pub async fn validated<K: Resource>(
        &self,
        tenant: &str,
        validated: versioned::Validated<K::Spec>,
    ) -> Result<K::Message, Error> {
        let mut message = self.labelled::<K>(tenant, &validated.record).await?;
        let diff = validated.diff.iter().map(messages::change).collect();
        K::set_validated_diff(&mut message, diff);
        Ok(message)
    }

    /// A remembered answer of a create: the resource as its version 1
    /// was (a create answers without labels).
    pub async fn created_at<K: Resource>(
        &self,
        caller: &Caller,
        answer: Answer,
    ) -> Result<K::Message, Error> {
        let (id, number) = (&answer.resource_id, answer.version_number);
        let record = versioned::record_at::<K>(&self.db, &caller.tenant, id, number).await?;
        Ok(message::<K>(&record))
    }

    /// A remembered answer of an update, rollback or key revocation: the
    /// resource as that version was, with its labels.
    pub async fn labelled_at<K: Resource>(
        &self,
        caller: &Caller,
        answer: Answer,
    ) -> Result<K::Message, Error> {
        let (id, number) = (&answer.resource_id, answer.version_number);
        let record = versioned::record_at::<K>(&self.db, &caller.tenant, id, number).await?;
        self.labelled::<K>(&caller.tenant, &record).await
    }
}

/// `total_size` is an int32 in the contract.
pub fn clamp_total(total: i64) -> i32 {
    i32::try_from(total).unwrap_or(i32::MAX)
}

/// A `google.protobuf.Timestamp`.
pub fn timestamp(time: chrono::DateTime<chrono::Utc>) -> Timestamp {
    Timestamp {
        seconds: time.timestamp(),
        nanos: i32::try_from(time.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

/// The etag of a version: opaque to clients, the version number to us.
pub fn etag(version: i64) -> String {
    format!("\"{version}\"")
}

/// The version an etag names; `None` when no etag was sent. Only the form
/// [`etag`] writes is taken: a quoted positive number without leading
/// zeros, so `1`, `"1` or `"+1"` are refused, not read as version 1.
pub fn parse_etag(etag: &str, field: &str) -> Result<Option<i64>, Error> {
    if etag.is_empty() {
        return Ok(None);
    }
    etag.strip_prefix('"')
        .and_then(|rest| rest.strip_suffix('"'))
        .filter(|digits| {
            !digits.starts_with('0')
                && !digits.is_empty()
                && digits.bytes().all(|b| b.is_ascii_digit())
        })
        .and_then(|digits| digits.parse::<i64>().ok())
        .map(Some)
        .ok_or_else(|| Error::bad_field(field, "is not an etag this service issued"))
}

/// A default change description, as the platform wrote them.
pub fn describe(given: &str, default: impl FnOnce() -> String) -> Result<String, Error> {
    describe_as("change_description", given, default)
}

/// [`describe`] for a request whose description field is named `field`.
pub fn describe_as(
    field: &str,
    given: &str,
    default: impl FnOnce() -> String,
) -> Result<String, Error> {
    if given.chars().count() > 2000 {
        return Err(Error::bad_field(field, "must be at most 2000 characters"));
    }
    if given.contains('\0') {
        return Err(Error::bad_field(field, "must not contain NUL characters"));
    }
    Ok(if given.trim().is_empty() {
        default()
    } else {
        given.to_owned()
    })
}
