//! Tessera's configuration: a static option registry ([`options::OPTIONS`]), an oslo-style INI loader that
//! reports every problem with file, section and line, typed getters, and the sample-file writer.

pub mod options;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// The type of an option's value, checked at load time.
#[derive(Debug, Clone, Copy)]
pub enum OptType {
    Str,
    Bool,
    Int {
        min: i64,
        max: i64,
    },
    /// A decimal number, at least `min` (a ratio, say).
    Float {
        min: f64,
    },
    Port,
    List,
    Enum(&'static [&'static str]),
}

/// One registered option.
#[derive(Debug, Clone, Copy)]
pub struct OptDef {
    pub group: &'static str,
    pub name: &'static str,
    pub ty: OptType,
    pub default: &'static str,
    pub help: &'static str,
    /// Masked in logs and listings.
    pub secret: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{}", .0.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Problem>),
}

/// One problem found in a config file.
#[derive(Debug, Clone)]
pub struct Problem {
    pub file: String,
    pub line: usize,
    pub section: String,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}: [{}] {}",
            self.file, self.line, self.section, self.message
        )
    }
}

pub fn find_opt(group: &str, name: &str) -> Option<&'static OptDef> {
    options::OPTIONS
        .iter()
        .find(|o| o.group == group && o.name == name)
}

fn check_value(ty: OptType, value: &str) -> Result<(), String> {
    match ty {
        OptType::Str | OptType::List => Ok(()),
        OptType::Bool => parse_bool(value)
            .map(|_| ())
            .ok_or_else(|| format!("invalid boolean '{value}'")),
        OptType::Int { min, max } => match value.trim().parse::<i64>() {
            Ok(v) if v < min || v > max => Err(format!("value {v} out of range [{min}, {max}]")),
            Ok(_) => Ok(()),
            Err(_) => Err(format!("invalid integer '{value}'")),
        },
        OptType::Float { min } => match value.trim().parse::<f64>() {
            Ok(v) if !v.is_finite() || v < min => Err(format!("value {v} out of range (minimum {min})")),
            Ok(_) => Ok(()),
            Err(_) => Err(format!("invalid number '{value}'")),
        },
        OptType::Port => match value.trim().parse::<u16>() {
            Ok(_) => Ok(()),
            Err(_) => Err(format!("invalid port number '{value}' (0-65535)")),
        },
        OptType::Enum(choices) => {
            if choices.contains(&value.trim()) {
                Ok(())
            } else {
                Err(format!(
                    "invalid value '{value}', choose one of: {}",
                    choices.join(", ")
                ))
            }
        }
    }
}

fn parse_bool(v: &str) -> Option<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Some(true),
        "false" | "0" | "no" | "off" => Some(false),
        _ => None,
    }
}

/// Loaded configuration: values set in the file, over the registry's defaults.
#[derive(Debug, Clone, Default)]
pub struct Config {
    values: HashMap<(String, String), String>,
    /// The file it was loaded from, if any.
    pub source: Option<PathBuf>,
}

impl Config {
    /// Defaults only.
    pub fn defaults() -> Self {
        Self::default()
    }

    /// Load an INI file; every problem in it is reported at once.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: path.display().to_string(),
            source,
        })?;
        let mut cfg = Self::parse(&text, &path.display().to_string())?;
        cfg.source = Some(path.to_path_buf());
        Ok(cfg)
    }

    /// Parse INI text. `file` is only used in messages.
    pub fn parse(text: &str, file: &str) -> Result<Self, ConfigError> {
        let mut problems = Vec::new();
        let mut values: HashMap<(String, String), String> = HashMap::new();
        let mut lines_of: HashMap<(String, String), usize> = HashMap::new();
        let mut section: Option<String> = None;
        let mut last_key: Option<(String, String)> = None;
        let known_group = |g: &str| options::GROUPS.iter().any(|(n, _)| *n == g);
        for (idx, raw) in text.lines().enumerate() {
            let lineno = idx + 1;
            let sec_name = section.clone().unwrap_or_default();
            let problem = |message: String| Problem {
                file: file.to_string(),
                line: lineno,
                section: sec_name.clone(),
                message,
            };
            let trimmed = raw.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with(';') {
                continue;
            }
            // Continuation line (oslo.config allows indented continuation of the previous value).
            if raw.starts_with([' ', '\t']) {
                if let Some(key) = &last_key {
                    if let Some(v) = values.get_mut(key) {
                        v.push('\n');
                        v.push_str(trimmed);
                        continue;
                    }
                }
            }
            if trimmed.starts_with('[') {
                if !trimmed.ends_with(']') {
                    problems.push(problem(format!("malformed section header '{trimmed}'")));
                    section = None;
                    continue;
                }
                let name = trimmed[1..trimmed.len() - 1].trim().to_string();
                if !known_group(&name) {
                    problems.push(Problem {
                        file: file.to_string(),
                        line: lineno,
                        section: name.clone(),
                        message: format!("unknown section [{name}]"),
                    });
                }
                section = Some(name);
                last_key = None;
                continue;
            }
            let Some(sec) = section.clone() else {
                problems.push(problem(format!("option outside any section: '{trimmed}'")));
                continue;
            };
            let Some((k, v)) = trimmed.split_once(['=', ':']) else {
                problems.push(problem(format!("expected 'name = value', got '{trimmed}'")));
                continue;
            };
            let (k, v) = (k.trim().to_string(), v.trim().to_string());
            if !known_group(&sec) {
                continue; // already reported once for the section
            }
            let Some(def) = find_opt(&sec, &k) else {
                problems.push(problem(format!("unknown option '{k}'")));
                continue;
            };
            if let Err(m) = check_value(def.ty, &v) {
                problems.push(problem(format!("{k}: {m}")));
                continue;
            }
            let key = (sec, k);
            lines_of.insert(key.clone(), lineno);
            values.insert(key.clone(), v);
            last_key = Some(key);
        }
        if problems.is_empty() {
            Ok(Self { values, source: None })
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }

    /// Set a value programmatically (used by all-in-one and tests). Values are checked like file values.
    pub fn set(&mut self, group: &str, name: &str, value: impl Into<String>) -> Result<(), String> {
        let value = value.into();
        let def = find_opt(group, name).ok_or_else(|| format!("unknown option [{group}] {name}"))?;
        check_value(def.ty, &value)?;
        self.values.insert((group.to_string(), name.to_string()), value);
        Ok(())
    }

    /// Whether the file set this option explicitly.
    pub fn is_set(&self, group: &str, name: &str) -> bool {
        self.values.contains_key(&(group.to_string(), name.to_string()))
    }

    fn raw(&self, group: &str, name: &str) -> String {
        if let Some(v) = self.values.get(&(group.to_string(), name.to_string())) {
            return v.clone();
        }
        debug_assert!(
            find_opt(group, name).is_some(),
            "option [{group}] {name} is not registered"
        );
        find_opt(group, name)
            .map(|d| d.default.to_string())
            .unwrap_or_default()
    }

    /// A string option with `$state_path` expanded.
    pub fn get_str(&self, group: &str, name: &str) -> String {
        let v = self.raw(group, name);
        if v.contains("$state_path") && !(group == "DEFAULT" && name == "state_path") {
            let sp = self.raw("DEFAULT", "state_path");
            v.replace("$state_path", &sp)
        } else {
            v
        }
    }

    pub fn get_bool(&self, group: &str, name: &str) -> bool {
        parse_bool(&self.raw(group, name)).unwrap_or(false)
    }

    pub fn get_int(&self, group: &str, name: &str) -> i64 {
        self.raw(group, name).trim().parse().unwrap_or(0)
    }

    pub fn get_float(&self, group: &str, name: &str) -> f64 {
        self.raw(group, name).trim().parse().unwrap_or(0.0)
    }

    pub fn get_port(&self, group: &str, name: &str) -> u16 {
        self.raw(group, name).trim().parse().unwrap_or(0)
    }

    pub fn get_list(&self, group: &str, name: &str) -> Vec<String> {
        self.get_str(group, name)
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect()
    }

    /// Write the values set explicitly, as an INI file `load` reads back to an equal config.
    pub fn to_ini(&self) -> String {
        let mut out = String::from(
            "# Written by tessera. Options not listed keep their defaults (see tessera.conf.sample).\n",
        );
        for (group, _) in options::GROUPS {
            let mut set: Vec<&OptDef> = options::OPTIONS
                .iter()
                .filter(|o| o.group == *group && self.is_set(group, o.name))
                .collect();
            if set.is_empty() {
                continue;
            }
            set.sort_by_key(|o| o.name);
            let _ = writeln!(out, "\n[{group}]");
            for o in set {
                let _ = writeln!(out, "{} = {}", o.name, self.raw(group, o.name));
            }
        }
        out
    }
}

pub use tessera_types::mask_url;

/// The sample configuration file: every option with its help, type and default, commented out.
pub fn sample() -> String {
    let mut out = String::new();
    out.push_str(
        "# Sample configuration for tessera, generated by `tessera config sample`. Do not edit by hand.\n",
    );
    for (group, about) in options::GROUPS {
        let _ = writeln!(out, "\n[{group}]\n#\n# {about}\n#");
        for o in options::OPTIONS.iter().filter(|o| o.group == *group) {
            out.push('\n');
            for line in wrap(o.help, 100) {
                let _ = writeln!(out, "# {line}");
            }
            let ty = match o.ty {
                OptType::Str => "string".to_string(),
                OptType::Bool => "boolean".to_string(),
                OptType::Int { min, max } if max == i64::MAX => format!("integer, minimum {min}"),
                OptType::Int { min, max } => format!("integer, {min}..{max}"),
                OptType::Float { min } => format!("number, minimum {min}"),
                OptType::Port => "port number".to_string(),
                OptType::List => "comma-separated list".to_string(),
                OptType::Enum(c) => format!("one of {}", c.join(", ")),
            };
            let _ = writeln!(out, "# ({ty}{})", if o.secret { ", secret" } else { "" });
            let _ = writeln!(out, "#{} = {}", o.name, o.default);
        }
    }
    out
}

fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut cur = String::new();
    for word in text.split_whitespace() {
        if !cur.is_empty() && cur.len() + 1 + word.len() > width {
            lines.push(std::mem::take(&mut cur));
        }
        if !cur.is_empty() {
            cur.push(' ');
        }
        cur.push_str(word);
    }
    if !cur.is_empty() {
        lines.push(cur);
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_option_belongs_to_a_listed_group() {
        for o in options::OPTIONS {
            assert!(
                options::GROUPS.iter().any(|(g, _)| *g == o.group),
                "[{}] {} is in a group missing from GROUPS",
                o.group,
                o.name
            );
        }
    }

    #[test]
    fn defaults_and_expansion() {
        let c = Config::parse("[DEFAULT]\nstate_path = /var/lib/t\n", "t.conf").unwrap();
        assert_eq!(
            c.get_str("fernet_tokens", "key_repository"),
            "/var/lib/t/fernet-keys"
        );
        assert_eq!(c.get_int("token", "expiration"), 3600);
        assert_eq!(
            c.get_list("auth", "methods"),
            vec!["password", "token", "application_credential"]
        );
    }

    #[test]
    fn problems_carry_file_section_and_line() {
        let text = "[DEFAULT]\ndebug = maybe\n\n[token]\nexpiration = abc\nbogus = 1\n[nosuch]\nx = 1\n";
        let err = Config::parse(text, "t.conf").unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("t.conf:2: [DEFAULT] debug: invalid boolean 'maybe'"),
            "{msg}"
        );
        assert!(
            msg.contains("t.conf:5: [token] expiration: invalid integer 'abc'"),
            "{msg}"
        );
        assert!(msg.contains("t.conf:6: [token] unknown option 'bogus'"), "{msg}");
        assert!(
            msg.contains("t.conf:7: [nosuch] unknown section [nosuch]"),
            "{msg}"
        );
    }

    #[test]
    fn range_and_enum_checks() {
        assert!(Config::parse("[token]\nexpiration = 5\n", "f").is_err());
        assert!(Config::parse("[DEFAULT]\nlog_format = xml\n", "f").is_err());
        assert!(Config::parse("[identity]\nbind_port = 70000\n", "f").is_err());
        assert!(Config::parse("debug = true\n", "f").is_err());
    }

    #[test]
    fn continuation_lines_and_round_trip() {
        let c = Config::parse("[auth]\nmethods = password,\n  token\n", "f").unwrap();
        assert_eq!(c.get_list("auth", "methods"), vec!["password", "token"]);
        let mut c = Config::defaults();
        c.set("identity", "bind_port", "5001").unwrap();
        c.set("DEFAULT", "debug", "true").unwrap();
        let again = Config::parse(&c.to_ini(), "f").unwrap();
        assert_eq!(again.get_port("identity", "bind_port"), 5001);
        assert!(again.get_bool("DEFAULT", "debug"));
        assert!(c.set("identity", "bind_port", "x").is_err());
    }

    #[test]
    fn masks_passwords() {
        assert_eq!(
            mask_url("mysql+pymysql://nova:s3cret@db/nova"),
            "mysql+pymysql://nova:****@db/nova"
        );
        assert_eq!(mask_url("sqlite:///x.db"), "sqlite:///x.db");
        assert_eq!(
            mask_url("rabbit://guest:guest@h:5672/"),
            "rabbit://guest:****@h:5672/"
        );
    }

    #[test]
    fn sample_lists_every_option() {
        let s = sample();
        for o in options::OPTIONS {
            assert!(s.contains(&format!("#{} = ", o.name)), "{} missing", o.name);
            assert!(
                options::GROUPS.iter().any(|(g, _)| *g == o.group),
                "group {} not in GROUPS",
                o.group
            );
        }
    }
}

#[cfg(test)]
mod golden {
    /// `etc/tessera.conf.sample` must match the registry. Regenerate with
    /// `UPDATE_GOLDEN=1 cargo test -p tessera-config` (or `tessera config sample > etc/tessera.conf.sample`).
    #[test]
    fn sample_file_is_current() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../etc/tessera.conf.sample");
        let want = super::sample();
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::write(&path, &want).expect("write sample");
        }
        let have = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            have == want,
            "etc/tessera.conf.sample is stale: run `tessera config sample > etc/tessera.conf.sample`"
        );
    }
}
