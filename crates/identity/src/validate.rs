//! Request-body checks with Keystone's messages ("Invalid input for field 'x': …", "'x' is a required
//! property"). Every create/update handler validates the whole body before touching the database.

use crate::error::{IdentityError, Result};
use serde_json::{Map, Value};

fn bad(field: &str, why: String) -> IdentityError {
    IdentityError::Validation(format!("Invalid input for field '{field}': {why}"))
}

fn type_name(v: &Value) -> String {
    match v {
        Value::String(s) => format!("'{s}'"),
        other => other.to_string(),
    }
}

/// `body[key]` as an object: the entity wrapper (`{"user": {...}}`).
pub fn entity<'a>(body: &'a Value, key: &str) -> Result<&'a Map<String, Value>> {
    match body.get(key) {
        Some(Value::Object(m)) => Ok(m),
        Some(v) => Err(bad(key, format!("{} is not of type 'object'", type_name(v)))),
        None => Err(IdentityError::Validation(format!(
            "'{key}' is a required property"
        ))),
    }
}

pub fn req_str(m: &Map<String, Value>, field: &str, max: usize) -> Result<String> {
    match m.get(field) {
        None => Err(IdentityError::Validation(format!(
            "'{field}' is a required property"
        ))),
        Some(v) => opt_str(m, field, max)?
            .ok_or_else(|| bad(field, format!("{} is not of type 'string'", type_name(v)))),
    }
}

/// A string or absent; `null` counts as absent. Empty strings and strings over `max` are refused.
pub fn opt_str(m: &Map<String, Value>, field: &str, max: usize) -> Result<Option<String>> {
    match m.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => {
            if s.trim().is_empty() {
                Err(bad(field, format!("'{s}' is too short")))
            } else if s.chars().count() > max {
                Err(bad(field, format!("'{s}' is too long")))
            } else {
                Ok(Some(s.clone()))
            }
        }
        Some(v) => Err(bad(
            field,
            format!("{} is not of type 'string', 'null'", type_name(v)),
        )),
    }
}

/// A free-text string that may be empty (descriptions).
pub fn opt_text(m: &Map<String, Value>, field: &str) -> Result<Option<Option<String>>> {
    match m.get(field) {
        None => Ok(None),
        Some(Value::Null) => Ok(Some(None)),
        Some(Value::String(s)) => Ok(Some(Some(s.clone()))),
        Some(v) => Err(bad(
            field,
            format!("{} is not of type 'string', 'null'", type_name(v)),
        )),
    }
}

pub fn opt_bool(m: &Map<String, Value>, field: &str) -> Result<Option<bool>> {
    match m.get(field) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(v) => Err(bad(field, format!("{} is not of type 'boolean'", type_name(v)))),
    }
}

pub fn opt_str_list(m: &Map<String, Value>, field: &str) -> Result<Option<Vec<String>>> {
    match m.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| bad(field, format!("{} is not of type 'string'", type_name(v))))
            })
            .collect::<Result<Vec<_>>>()
            .map(Some),
        Some(v) => Err(bad(field, format!("{} is not of type 'array'", type_name(v)))),
    }
}

/// Refuse `id` and other read-only attributes in a body.
pub fn no_readonly(m: &Map<String, Value>, fields: &[&str]) -> Result<()> {
    for f in fields {
        if m.contains_key(*f) {
            return Err(IdentityError::Validation(format!(
                "Invalid input for field '{f}': the attribute is read-only"
            )));
        }
    }
    Ok(())
}

/// The attributes of `m` not in `known`: Keystone keeps them as "extra" attributes.
pub fn extras(m: &Map<String, Value>, known: &[&str]) -> Map<String, Value> {
    m.iter()
        .filter(|(k, _)| !known.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Query booleans as Keystone reads them (`enabled=false`, `enabled=0`).
pub fn query_bool(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" | "" => Some(true),
        "false" | "0" | "no" | "off" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn messages() {
        let body = json!({"user": {"name": 5, "enabled": "yes", "email": "a@b"}});
        let m = entity(&body, "user").unwrap();
        assert!(req_str(m, "name", 255)
            .unwrap_err()
            .to_string()
            .contains("5 is not of type 'string'"));
        assert!(opt_bool(m, "enabled")
            .unwrap_err()
            .to_string()
            .contains("'yes' is not of type 'boolean'"));
        assert!(req_str(m, "password", 255)
            .unwrap_err()
            .to_string()
            .contains("'password' is a required property"));
        assert!(entity(&json!({"x": 1}), "user").is_err());
        assert_eq!(extras(m, &["name", "enabled"]).len(), 1);
        assert_eq!(query_bool("False"), Some(false));
    }
}
