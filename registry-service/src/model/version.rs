//! Version history pieces shared by agents and providers: the action that
//! made a version, and the diff between two configuration snapshots.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use migrations::entity::VersionAction as Action;

/// How a field changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ChangeKind {
    Added,
    Modified,
    Removed,
}

/// One changed field, by dotted path.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    pub path: String,
    pub kind: ChangeKind,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub old: Option<Value>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub new: Option<Value>,
}

/// A value that is present is `Some`, even when it is JSON `null`; an
/// absent one is `None` (through `serde(default)`).
fn present<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(deserializer).map(Some)
}

/// The changes that turn `old` into `new`. Objects are compared field by
/// field (nested fields get dotted paths); anything else, lists included,
/// is compared as a whole. Paths come out in key order segment by segment
/// (`a.b` before `a-c`, because `a` sorts before `a-c`): sorted as plain
/// strings only when keys are identifiers, which every agent and provider
/// field is.
pub fn diff(old: &Value, new: &Value) -> Vec<Change> {
    let mut changes = Vec::new();
    diff_into("", old, new, &mut changes);
    changes
}

/// The most changes a version's diff lists field by field.
pub const MAX_DETAILED_CHANGES: usize = 100;

/// [`diff`], held to [`MAX_DETAILED_CHANGES`]: past that, each changed
/// top-level field is listed once, whole (still undone exactly by
/// [`apply`]). A change of every key of a large JSON setting would
/// otherwise be stored as one change per key, each with its path, in every
/// version row and in every page of history that reads it.
pub fn diff_bounded(old: &Value, new: &Value) -> Vec<Change> {
    let changes = diff(old, new);
    if changes.len() <= MAX_DETAILED_CHANGES {
        return changes;
    }
    match (old, new) {
        (Value::Object(old_fields), Value::Object(new_fields)) => {
            let keys: BTreeSet<&String> = old_fields.keys().chain(new_fields.keys()).collect();
            keys.into_iter()
                .filter_map(|key| {
                    let (old, new) = (old_fields.get(key), new_fields.get(key));
                    let kind = match (old, new) {
                        (Some(a), Some(b)) if a != b => ChangeKind::Modified,
                        (Some(_), None) => ChangeKind::Removed,
                        (None, Some(_)) => ChangeKind::Added,
                        _ => return None,
                    };
                    Some(Change {
                        path: key.clone(),
                        kind,
                        old: old.cloned(),
                        new: new.cloned(),
                    })
                })
                .collect()
        }
        // Not two objects: `diff` answered one change already.
        _ => changes,
    }
}

fn diff_into(prefix: &str, old: &Value, new: &Value, changes: &mut Vec<Change>) {
    match (old, new) {
        (Value::Object(old_fields), Value::Object(new_fields)) => {
            let keys: BTreeSet<&String> = old_fields.keys().chain(new_fields.keys()).collect();
            for key in keys {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                match (old_fields.get(key), new_fields.get(key)) {
                    (Some(a), Some(b)) => diff_into(&path, a, b, changes),
                    (Some(a), None) => changes.push(Change {
                        path,
                        kind: ChangeKind::Removed,
                        old: Some(a.clone()),
                        new: None,
                    }),
                    (None, Some(b)) => changes.push(Change {
                        path,
                        kind: ChangeKind::Added,
                        old: None,
                        new: Some(b.clone()),
                    }),
                    (None, None) => {}
                }
            }
        }
        _ if old != new => changes.push(Change {
            path: prefix.to_owned(),
            kind: ChangeKind::Modified,
            old: Some(old.clone()),
            new: Some(new.clone()),
        }),
        _ => {}
    }
}

/// Stored form of a diff.
pub fn changes_to_json(changes: &[Change]) -> Value {
    serde_json::to_value(changes).unwrap_or(Value::Array(Vec::new()))
}

/// Reads a stored diff; an unreadable one reads as empty.
pub fn changes_from_json(value: &Value) -> Vec<Change> {
    Vec::<Change>::deserialize(value).unwrap_or_default()
}

/// Applies `changes` to `base`: the inverse of [`diff`], so
/// `apply(old, &diff(old, new)) == new`. `Added` and `Modified` set the
/// value at the dotted path (creating missing parent objects, and replacing
/// a parent that is not an object), `Removed` deletes it; the empty path
/// stands for the whole value. A change without the value its kind needs,
/// or the removal of an absent path, changes nothing. Paths are split at
/// every `.`, so the inverse holds for values whose object keys are
/// non-empty and contain no `.`, as every configuration snapshot's are.
pub fn apply(base: &Value, changes: &[Change]) -> Value {
    fn set(target: &mut Value, path: &[&str], new: Option<&Value>) {
        let Some((first, rest)) = path.split_first() else {
            if let Some(value) = new {
                *target = value.clone();
            }
            return;
        };
        if !target.is_object() {
            if new.is_none() {
                return;
            }
            *target = Value::Object(serde_json::Map::new());
        }
        let Value::Object(fields) = target else {
            return;
        };
        match fields.get_mut(*first) {
            Some(_) if rest.is_empty() && new.is_none() => {
                fields.remove(*first);
            }
            Some(child) => set(child, rest, new),
            None if new.is_some() => {
                let mut child = Value::Null;
                set(&mut child, rest, new);
                fields.insert((*first).to_owned(), child);
            }
            None => {}
        }
    }

    let mut result = base.clone();
    for change in changes {
        let new = match (change.kind, &change.new) {
            (ChangeKind::Removed, _) => None,
            (_, Some(value)) => Some(value),
            (_, None) => continue,
        };
        let path: Vec<&str> = if change.path.is_empty() {
            Vec::new()
        } else {
            change.path.split('.').collect()
        };
        set(&mut result, &path, new);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_report_example_gives_exactly_two_modifications() {
        let v1 = json!({"name": "a", "temperature": 0.7, "max_iter": 15, "tools": ["x"]});
        let v2 = json!({"name": "a", "temperature": 0.8, "max_iter": 20, "tools": ["x"]});
        let changes = diff(&v1, &v2);
        assert_eq!(
            changes,
            vec![
                Change {
                    path: "max_iter".into(),
                    kind: ChangeKind::Modified,
                    old: Some(json!(15)),
                    new: Some(json!(20))
                },
                Change {
                    path: "temperature".into(),
                    kind: ChangeKind::Modified,
                    old: Some(json!(0.7)),
                    new: Some(json!(0.8))
                },
            ]
        );
    }

    #[test]
    fn nested_fields_get_dotted_paths_and_presence_changes_are_added_or_removed() {
        let old = json!({"llm_overrides": {"temperature": 0.1, "top_p": 0.5}, "max_rpm": 10});
        let new =
            json!({"llm_overrides": {"temperature": 0.2, "max_tokens": 5}, "tools": ["a", "b"]});
        let paths: Vec<(String, ChangeKind)> = diff(&old, &new)
            .into_iter()
            .map(|c| (c.path, c.kind))
            .collect();
        assert_eq!(
            paths,
            vec![
                ("llm_overrides.max_tokens".into(), ChangeKind::Added),
                ("llm_overrides.temperature".into(), ChangeKind::Modified),
                ("llm_overrides.top_p".into(), ChangeKind::Removed),
                ("max_rpm".into(), ChangeKind::Removed),
                ("tools".into(), ChangeKind::Added),
            ]
        );
        assert!(diff(&new, &new).is_empty());
    }

    #[test]
    fn a_diff_of_more_than_the_most_changes_lists_whole_top_level_fields() {
        let settings = |prefix: &str, count: usize| -> Value {
            (0..count)
                .map(|i| (format!("{prefix}{i}"), json!(i)))
                .collect::<serde_json::Map<String, Value>>()
                .into()
        };
        let config = |tool: Value, goal: &str| json!({"name": "a", "goal": goal, "tool_config": {"search": tool}, "gone": 1});
        // At the limit: field by field.
        let few = (settings("a", 50), settings("b", 50));
        let detailed = diff_bounded(&config(few.0, "g"), &config(few.1, "g"));
        assert_eq!(detailed.len(), MAX_DETAILED_CHANGES);
        assert!(detailed[0].path.starts_with("tool_config.search."));

        // One more: each changed top-level field once, whole, and still
        // the inverse of apply.
        let old = config(settings("a", 51), "g");
        let mut new = config(settings("b", 50), "h");
        new.as_object_mut().map(|fields| fields.remove("gone"));
        new.as_object_mut()
            .map(|fields| fields.insert("added".into(), json!(true)));
        let whole = diff_bounded(&old, &new);
        let shape: Vec<(&str, ChangeKind)> =
            whole.iter().map(|c| (c.path.as_str(), c.kind)).collect();
        assert_eq!(
            shape,
            [
                ("added", ChangeKind::Added),
                ("goal", ChangeKind::Modified),
                ("gone", ChangeKind::Removed),
                ("tool_config", ChangeKind::Modified),
            ]
        );
        assert_eq!(whole[0].old, None);
        assert_eq!(whole[2].new, None);
        assert_eq!(whole[3].old, old.get("tool_config").cloned());
        assert_eq!(apply(&old, &whole), new);
    }
}
