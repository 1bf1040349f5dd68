//! Database URLs as operators write them (oslo.db / SQLAlchemy forms) turned into what sqlx opens.

use crate::DbError;
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
    MySql,
}

/// Accepts `sqlite:///relative/path`, `sqlite:////absolute/path` (SQLAlchemy: three slashes then the path),
/// `sqlite://` / `sqlite:///:memory:` (memory), `postgresql[+driver]://` / `postgres://`, and
/// `mysql[+driver]://` / `mariadb://`. Returns the dialect and the URL sqlx understands.
pub fn normalize_url(url: &str) -> Result<(Dialect, String), DbError> {
    let url = url.trim();
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(DbError::BadUrl(url.to_string()));
    };
    let base = scheme.split('+').next().unwrap_or("").to_ascii_lowercase();
    match base.as_str() {
        "sqlite" => {
            let path = rest.strip_prefix('/').unwrap_or(rest);
            let (path, _query) = path.split_once('?').unwrap_or((path, ""));
            if path.is_empty() || path == ":memory:" {
                return Ok((Dialect::Sqlite, "sqlite::memory:".to_string()));
            }
            Ok((Dialect::Sqlite, format!("sqlite://{path}?mode=rwc")))
        }
        "postgresql" | "postgres" => Ok((
            Dialect::Postgres,
            format!(
                "postgres://{}",
                keep_params(rest, &["sslmode", "application_name", "options", "host", "port"])
            ),
        )),
        "mysql" | "mariadb" => Ok((
            Dialect::MySql,
            format!(
                "mysql://{}",
                keep_params(rest, &["charset", "ssl-mode", "socket", "unix_socket"])
            ),
        )),
        _ => Err(DbError::BadUrl(url.to_string())),
    }
}

/// Drop query parameters that only Python drivers understand (`?charset=utf8&plugin=…`), keeping the ones sqlx
/// takes. `unix_socket` (PyMySQL's name) becomes sqlx's `socket`.
fn keep_params(rest: &str, keep: &[&str]) -> String {
    let Some((base, query)) = rest.split_once('?') else {
        return rest.to_string();
    };
    let kept: Vec<String> = query
        .split('&')
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            if !keep.contains(&k) {
                return None;
            }
            let k = if k == "unix_socket" { "socket" } else { k };
            if k == "charset" && v.eq_ignore_ascii_case("utf8") {
                return Some("charset=utf8mb4".to_string());
            }
            Some(format!("{k}={v}"))
        })
        .collect();
    if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    }
}

/// The file path of a sqlx SQLite URL, if it has one.
pub(crate) fn sqlite_path(sqlx_url: &str) -> Option<PathBuf> {
    let rest = sqlx_url.strip_prefix("sqlite://")?;
    let path = rest.split('?').next()?;
    Some(PathBuf::from(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlalchemy_forms() {
        assert_eq!(
            normalize_url("sqlite:///rel/x.db").unwrap(),
            (Dialect::Sqlite, "sqlite://rel/x.db?mode=rwc".into())
        );
        assert_eq!(
            normalize_url("sqlite:////abs/x.db").unwrap(),
            (Dialect::Sqlite, "sqlite:///abs/x.db?mode=rwc".into())
        );
        assert_eq!(normalize_url("sqlite://").unwrap().1, "sqlite::memory:");
        assert_eq!(
            normalize_url("mysql+pymysql://nova:pw@127.0.0.1/nova?charset=utf8&plugin=x").unwrap(),
            (
                Dialect::MySql,
                "mysql://nova:pw@127.0.0.1/nova?charset=utf8mb4".into()
            )
        );
        assert_eq!(
            normalize_url("postgresql+psycopg2://u:p@h:5432/db").unwrap(),
            (Dialect::Postgres, "postgres://u:p@h:5432/db".into())
        );
        assert_eq!(normalize_url("postgres://u@h/db").unwrap().0, Dialect::Postgres);
        assert!(normalize_url("oracle://x").is_err());
        assert!(normalize_url("nonsense").is_err());
    }
}
