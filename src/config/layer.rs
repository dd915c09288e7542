//! The layers of a configuration as TOML values: a file overlaid on the
//! embedded defaults (refusing keys they do not know), and single keys set
//! from `KILN_*` variables and `--set` flags, typed as the defaults type
//! them.

use super::ConfigError;
use super::validate::OPEN_TABLES;

/// Overlay `overlay` onto `base`, refusing keys the defaults do not know.
pub(super) fn merge(
    base: &mut toml::Value,
    overlay: toml::Value,
    origin: &str,
    prefix: &str,
) -> Result<(), ConfigError> {
    match (base, overlay) {
        (toml::Value::Table(b), toml::Value::Table(o)) => {
            for (k, v) in o {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                match b.get_mut(&k) {
                    Some(slot @ toml::Value::Table(_)) if v.is_table() => {
                        merge(slot, v, origin, &key)?
                    }
                    Some(slot) => *slot = v,
                    // Tables whose keys are the user's (platform names).
                    None if OPEN_TABLES.contains(&prefix) => {
                        b.insert(k, v);
                    }
                    None => {
                        return Err(ConfigError::UnknownKey {
                            origin: origin.to_string(),
                            key,
                        });
                    }
                }
            }
            Ok(())
        }
        (b, o) => {
            *b = o;
            Ok(())
        }
    }
}

pub(super) fn lookup<'a>(value: &'a toml::Value, path: &[String]) -> Option<&'a toml::Value> {
    let mut cur = value;
    for p in path {
        cur = cur.as_table()?.get(p)?;
    }
    Some(cur)
}

/// Map `REGISTRY_URL` to `["registry", "url"]` when such a scalar exists.
/// Top-level keys with underscores (`STATE_DIR`) are tried first.
pub(super) fn env_path(value: &toml::Value, rest: &str) -> Option<Vec<String>> {
    let lower = rest.to_ascii_lowercase();
    let table = value.as_table()?;
    if let Some(v) = table.get(&lower)
        && !v.is_table()
    {
        return Some(vec![lower]);
    }
    let (section, key) = lower.split_once('_')?;
    let sec = table.get(section)?.as_table()?;
    match sec.get(key) {
        Some(v) if !v.is_table() && !v.is_array() => Some(vec![section.into(), key.into()]),
        _ => None,
    }
}

pub(super) fn set_path(
    value: &mut toml::Value,
    path: &[String],
    raw: &str,
    origin: &str,
) -> Result<(), ConfigError> {
    let mut cur = value;
    for p in path {
        cur = cur
            .as_table_mut()
            .and_then(|t| t.get_mut(p))
            .ok_or_else(|| ConfigError::UnknownKey {
                origin: origin.to_string(),
                key: path.join("."),
            })?;
    }
    let bad = |what: &str| ConfigError::Field {
        origin: origin.to_string(),
        message: format!("{} = {raw:?}: expected {what}", path.join(".")),
    };
    *cur = match cur {
        toml::Value::String(_) => toml::Value::String(raw.to_string()),
        toml::Value::Integer(_) => {
            toml::Value::Integer(raw.parse().map_err(|_| bad("an integer"))?)
        }
        toml::Value::Float(_) => toml::Value::Float(raw.parse().map_err(|_| bad("a number"))?),
        toml::Value::Boolean(_) => {
            toml::Value::Boolean(raw.parse().map_err(|_| bad("true or false"))?)
        }
        _ => {
            // Arrays and tables: accept an inline TOML value.
            let wrapped = format!("v = {raw}");
            let t: toml::Table = wrapped.parse().map_err(|_| bad("a TOML value"))?;
            t.get("v").cloned().ok_or_else(|| bad("a TOML value"))?
        }
    };
    Ok(())
}
