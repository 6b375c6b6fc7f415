//! Readers for the public data formats under `shared/data/dev/` (see its README): CSV with a
//! header (RFC 4180 quoting), header-less one-column CSV, JSON, JSONL, gzip'd JSONL.
//!
//! Nothing here is embedded in the binary: every file is read from the `--data` directory.

use std::path::{Path, PathBuf};

use serde_json::Value;

/// Errors reading a data file.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
}

fn ferr(path: &Path, message: impl ToString) -> DataError {
    DataError::File {
        path: path.display().to_string(),
        message: message.to_string(),
    }
}

/// Reads a whole text file (a UTF-8 BOM is dropped); `Ok(None)` when it does not exist.
pub fn read_text(path: &Path) -> Result<Option<String>, DataError> {
    if !path.exists() {
        return Ok(None);
    }
    let bytes = std::fs::read(path).map_err(|e| ferr(path, e))?;
    let text = String::from_utf8_lossy(&bytes).into_owned();
    Ok(Some(text.trim_start_matches('\u{feff}').to_string()))
}

/// Reads a gzip file through the system `gzip -dc` (the eval tool only; never the server path).
pub fn read_gz(path: &Path) -> Result<Option<String>, DataError> {
    if !path.exists() {
        return Ok(None);
    }
    let out = std::process::Command::new("gzip")
        .arg("-dc")
        .arg(path)
        .output()
        .map_err(|e| ferr(path, format!("running gzip -dc: {e}")))?;
    if !out.status.success() {
        return Err(ferr(path, "gzip -dc failed"));
    }
    Ok(Some(String::from_utf8_lossy(&out.stdout).into_owned()))
}

/// Parses CSV text into rows of fields: commas, `"` quoting with `""` escapes, newlines inside
/// quotes, CRLF or LF line ends.
pub fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    let mut row: Vec<String> = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    let mut any = false;
    while let Some(c) = chars.next() {
        any = true;
        if quoted {
            if c == '"' {
                if chars.peek() == Some(&'"') {
                    field.push('"');
                    chars.next();
                } else {
                    quoted = false;
                }
            } else {
                field.push(c);
            }
            continue;
        }
        match c {
            '"' if field.is_empty() => quoted = true,
            ',' => row.push(std::mem::take(&mut field)),
            '\r' => {}
            '\n' => {
                row.push(std::mem::take(&mut field));
                rows.push(std::mem::take(&mut row));
                any = false;
            }
            _ => field.push(c),
        }
    }
    if any {
        row.push(field);
        rows.push(row);
    }
    rows
}

/// A CSV file with a header: rows as (header, fields).
pub struct Table {
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    /// Column index by name.
    pub fn col(&self, name: &str) -> Option<usize> {
        self.header.iter().position(|h| h.trim() == name)
    }

    /// The field of `row` in column `name`, or "".
    pub fn get<'a>(&self, row: &'a [String], name: &str) -> &'a str {
        self.col(name)
            .and_then(|i| row.get(i))
            .map(String::as_str)
            .unwrap_or("")
    }
}

/// Reads a CSV file with a header; `Ok(None)` when absent.
pub fn read_table(path: &Path) -> Result<Option<Table>, DataError> {
    let Some(text) = read_text(path)? else {
        return Ok(None);
    };
    let mut rows = parse_csv(&text);
    if rows.is_empty() {
        return Err(ferr(path, "empty CSV"));
    }
    let header = rows.remove(0);
    Ok(Some(Table { header, rows }))
}

/// Reads a JSON document; `Ok(None)` when absent.
pub fn read_json(path: &Path) -> Result<Option<Value>, DataError> {
    let Some(text) = read_text(path)? else {
        return Ok(None);
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| ferr(path, e))
}

/// Reads JSON lines (blank lines skipped); `Ok(None)` when absent.
pub fn read_jsonl(path: &Path) -> Result<Option<Vec<Value>>, DataError> {
    let text = if path.extension().is_some_and(|e| e == "gz") {
        read_gz(path)?
    } else {
        read_text(path)?
    };
    let Some(text) = text else {
        return Ok(None);
    };
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        out.push(
            serde_json::from_str(line).map_err(|e| ferr(path, format!("line {}: {e}", i + 1)))?,
        );
    }
    Ok(Some(out))
}

/// Every string leaf of a JSON value, in document order (CatQA's nested topic lists).
pub fn string_leaves(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Array(a) => a.iter().for_each(|x| string_leaves(x, out)),
        Value::Object(o) => o.values().for_each(|x| string_leaves(x, out)),
        _ => {}
    }
}

/// `root/rel`.
pub fn at(root: &Path, rel: &str) -> PathBuf {
    root.join(rel)
}

/// Splits an hh-rlhf transcript into (is_user, text) turns.
pub fn hh_turns(transcript: &str) -> Vec<(bool, String)> {
    let mut out = Vec::new();
    let mut rest = transcript;
    let mut current: Option<bool> = None;
    loop {
        let h = rest.find("\n\nHuman:");
        let a = rest.find("\n\nAssistant:");
        let next = match (h, a) {
            (Some(h), Some(a)) => Some(if h < a { (h, true, 8) } else { (a, false, 12) }),
            (Some(h), None) => Some((h, true, 8)),
            (None, Some(a)) => Some((a, false, 12)),
            (None, None) => None,
        };
        let (end, next_role, skip) = match next {
            Some((pos, role, len)) => (pos, Some(role), len),
            None => (rest.len(), None, 0),
        };
        if let Some(role) = current {
            let t = rest[..end].trim();
            if !t.is_empty() {
                out.push((role, t.to_string()));
            }
        }
        match next_role {
            Some(r) => {
                current = Some(r);
                rest = &rest[end + skip..];
            }
            None => break,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_and_newlines() {
        let rows = parse_csv("a,b\n\"x, \"\"y\"\"\",\"two\nlines\"\r\nlast,\n");
        assert_eq!(rows.len(), 3);
        assert_eq!(
            rows[1],
            vec!["x, \"y\"".to_string(), "two\nlines".to_string()]
        );
        assert_eq!(rows[2], vec!["last".to_string(), String::new()]);
    }

    #[test]
    fn hh_split() {
        let t = hh_turns("\n\nHuman: hi there\n\nAssistant: hello\n\nHuman: bye");
        assert_eq!(
            t,
            vec![
                (true, "hi there".to_string()),
                (false, "hello".to_string()),
                (true, "bye".to_string())
            ]
        );
    }
}
