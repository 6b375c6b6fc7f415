//! The state file: a versioned, length-prefixed stream of (key, state) records.
//!
//! Written to a temporary file beside the target, fsynced and renamed, so that a crash leaves
//! either the old snapshot or the new one, never a torn file. Holds no message text: the
//! states it stores have none.
//!
//! Format 3 added the exposure count (and packs the ring positions), and a table of the model
//! labels the states' welfare slots stand for, after the magic: a count byte, then each label
//! as a length byte and its bytes (a label over 255 bytes is written empty: `other`). A
//! format-2 file is still read, its threads' exposures starting at 0, so an upgrade keeps every
//! lock.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;

use super::{Map, ThreadKey};
use crate::policy::{ThreadState, ThreadStateV2};

const MAGIC: &[u8; 8] = b"TWSNAP03";
/// The previous format, still read.
const MAGIC_V2: &[u8; 8] = b"TWSNAP02";
/// A record larger than this is corruption, not data.
const MAX_RECORD: usize = 4096;

/// Why a snapshot could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a threadwarden snapshot (bad header)")]
    BadHeader { path: String },
    #[error("{path}: corrupt record {index}: {reason}")]
    Corrupt {
        path: String,
        index: usize,
        reason: String,
    },
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> SnapshotError + '_ {
    move |source| SnapshotError::Io {
        path: path.display().to_string(),
        source,
    }
}

pub(super) fn write(map: &Map, path: &Path, labels: &[&str]) -> Result<usize, SnapshotError> {
    let tmp = path.with_extension("tmp");
    let file = File::create(&tmp).map_err(io(&tmp))?;
    let mut out = BufWriter::new(file);
    out.write_all(MAGIC).map_err(io(&tmp))?;
    let labels = &labels[..labels.len().min(255)];
    let mut table = vec![labels.len() as u8];
    for label in labels {
        let bytes = if label.len() <= 255 {
            label.as_bytes()
        } else {
            &[]
        };
        table.push(bytes.len() as u8);
        table.extend_from_slice(bytes);
    }
    out.write_all(&table).map_err(io(&tmp))?;
    let mut count = 0usize;
    let mut buf = Vec::with_capacity(256);
    for entry in map.iter() {
        buf.clear();
        buf.extend_from_slice(&entry.key().to_u128().to_le_bytes());
        buf = postcard::to_extend(entry.value(), buf).map_err(|e| SnapshotError::Corrupt {
            path: tmp.display().to_string(),
            index: count,
            reason: e.to_string(),
        })?;
        out.write_all(&(buf.len() as u32).to_le_bytes())
            .and_then(|_| out.write_all(&buf))
            .map_err(io(&tmp))?;
        count += 1;
    }
    let file = out.into_inner().map_err(|e| io(&tmp)(e.into_error()))?;
    file.sync_all().map_err(io(&tmp))?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(io(path))?;
    // Make the rename itself durable.
    if let Some(d) = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .and_then(|dir| File::open(dir).ok())
    {
        let _ = d.sync_all();
    }
    Ok(count)
}

pub(super) fn read(
    path: &Path,
    slot_of: impl Fn(&str) -> u8,
    mut insert: impl FnMut(ThreadKey, ThreadState),
) -> Result<usize, SnapshotError> {
    let file = File::open(path).map_err(io(path))?;
    let mut input = BufReader::new(file);
    let mut magic = [0u8; 8];
    input.read_exact(&mut magic).map_err(io(path))?;
    let v2 = match &magic {
        m if m == MAGIC => false,
        m if m == MAGIC_V2 => true,
        _ => {
            return Err(SnapshotError::BadHeader {
                path: path.display().to_string(),
            });
        }
    };
    let corrupt = |index: usize, reason: String| SnapshotError::Corrupt {
        path: path.display().to_string(),
        index,
        reason,
    };
    // This process's slot for each slot of the file (0, `other`, stays 0).
    let mut slots = vec![0u8];
    if !v2 {
        let bad = |e: std::io::Error| corrupt(0, format!("label table: {e}"));
        let mut n = [0u8; 1];
        input.read_exact(&mut n).map_err(bad)?;
        for _ in 0..n[0] {
            let mut len = [0u8; 1];
            input.read_exact(&mut len).map_err(bad)?;
            let mut label = vec![0u8; usize::from(len[0])];
            input.read_exact(&mut label).map_err(bad)?;
            slots.push(slot_of(&String::from_utf8_lossy(&label)));
        }
    }
    let mut count = 0usize;
    let mut buf = Vec::with_capacity(256);
    loop {
        let mut len = [0u8; 4];
        match input.read_exact(&mut len) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(io(path)(e)),
        }
        let len = u32::from_le_bytes(len) as usize;
        if !(16..=MAX_RECORD).contains(&len) {
            return Err(corrupt(count, format!("record length {len}")));
        }
        buf.resize(len, 0);
        input
            .read_exact(&mut buf)
            .map_err(|e| corrupt(count, e.to_string()))?;
        let key =
            ThreadKey::from_u128(u128::from_le_bytes(buf[..16].try_into().expect("16 bytes")));
        let state: ThreadState = if v2 {
            postcard::from_bytes::<ThreadStateV2>(&buf[16..]).map(ThreadState::from)
        } else {
            postcard::from_bytes(&buf[16..])
        }
        .map_err(|e| corrupt(count, e.to_string()))?;
        let mut state = state;
        let slot = slots.get(usize::from(state.model_slot())).copied();
        state.set_model_slot(slot.unwrap_or(0));
        insert(key, state);
        count += 1;
    }
    Ok(count)
}
