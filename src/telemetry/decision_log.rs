//! The decision log: one JSON line per END, warning, crisis routing, denied model-requested end
//! and piece of feedback, joinable with feedback by event id.
//!
//! Records go through a bounded queue to a writer thread, so a slow disk never delays a verdict;
//! a full queue drops the record and counts it. No message text unless `log_content` is on.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};

use super::metrics::Metrics;

/// Where decision records go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sink {
    /// Standard output, beside the logs.
    Stdout,
    /// A file, appended to.
    File(PathBuf),
    /// Nowhere.
    Off,
}

/// Records waiting for the writer; beyond this, records are dropped and counted.
const QUEUE: usize = 16 * 1024;

/// A handle to the decision log; cheap to clone.
#[derive(Clone)]
pub struct DecisionLog {
    tx: Option<SyncSender<Option<String>>>,
    metrics: Arc<Metrics>,
}

/// The writer thread; `close` flushes and joins it.
pub struct DecisionLogWriter(Option<(SyncSender<Option<String>>, std::thread::JoinHandle<()>)>);

impl DecisionLog {
    /// A log that writes nowhere.
    pub fn off(metrics: Arc<Metrics>) -> DecisionLog {
        DecisionLog { tx: None, metrics }
    }

    /// Opens the sink and starts the writer thread.
    pub fn start(
        sink: &Sink,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<(DecisionLog, DecisionLogWriter)> {
        let out: Box<dyn Write + Send> = match sink {
            Sink::Off => return Ok((DecisionLog::off(metrics), DecisionLogWriter(None))),
            Sink::Stdout => Box::new(std::io::stdout()),
            Sink::File(path) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            ),
        };
        let (tx, rx) = sync_channel(QUEUE);
        let handle = std::thread::Builder::new()
            .name("decision-log".into())
            .spawn(move || write_loop(rx, out))?;
        Ok((
            DecisionLog {
                tx: Some(tx.clone()),
                metrics,
            },
            DecisionLogWriter(Some((tx, handle))),
        ))
    }

    /// True if records go anywhere (callers skip building them otherwise).
    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    /// Queues one record; never blocks.
    pub fn record(&self, record: &serde_json::Value) {
        let Some(tx) = &self.tx else { return };
        match tx.try_send(Some(record.to_string())) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.metrics.decision_log_dropped()
            }
        }
    }
}

fn write_loop(rx: Receiver<Option<String>>, out: Box<dyn Write + Send>) {
    let mut out = std::io::BufWriter::new(out);
    // `None` is the close signal: everything queued before it has been written.
    while let Ok(Some(line)) = rx.recv() {
        let _ = writeln!(out, "{line}");
        // Drain what is queued, then flush once: a burst costs one write.
        let mut closing = false;
        while let Ok(next) = rx.try_recv() {
            match next {
                Some(line) => {
                    let _ = writeln!(out, "{line}");
                }
                None => {
                    closing = true;
                    break;
                }
            }
        }
        let _ = out.flush();
        if closing {
            return;
        }
    }
    let _ = out.flush();
}

impl DecisionLogWriter {
    /// Writes everything queued so far, flushes, and stops the writer.
    pub fn close(mut self) {
        if let Some((tx, handle)) = self.0.take() {
            // A blocking send: the close signal must not be dropped like a record would be.
            let _ = tx.send(None);
            let _ = handle.join();
        }
    }
}
