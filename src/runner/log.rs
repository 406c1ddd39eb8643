//! The runner's log: one line per event on stderr, as text on a terminal and as one JSON object per
//! line otherwise (`log_format`), with time, level, stack, run id, event, message and figures.

use std::io::{IsTerminal, Write};

use serde::Deserialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Info,
    Warn,
    Error,
}

impl Level {
    fn as_str(self) -> &'static str {
        match self {
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        }
    }
}

#[derive(Clone)]
pub struct Log {
    json: bool,
    stack: String,
}

impl Log {
    /// `format` unset: text on a terminal, JSON otherwise (a container's log collector).
    pub fn new(format: Option<LogFormat>, stack: &str) -> Log {
        let json = format.map_or(!std::io::stderr().is_terminal(), |f| f == LogFormat::Json);
        Log { json, stack: stack.to_string() }
    }

    /// `figures`: a JSON object of numbers and names, merged into the line.
    pub fn event(&self, level: Level, run_id: &str, event: &str, message: &str, figures: serde_json::Value) {
        let line = if self.json {
            let mut object = serde_json::json!({
                "time": crate::now_rfc3339(),
                "level": level.as_str(),
                "stack": self.stack,
                "run_id": run_id,
                "event": event,
                "message": message,
            });
            if let (Some(object), serde_json::Value::Object(extra)) = (object.as_object_mut(), figures) {
                for (key, value) in extra {
                    object.entry(key).or_insert(value);
                }
            }
            object.to_string()
        } else {
            let extra = match figures {
                serde_json::Value::Object(extra) if !extra.is_empty() => {
                    format!(" ({})", extra.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" "))
                }
                _ => String::new(),
            };
            format!("{} {:<5} {event}: {message}{extra}", crate::now_rfc3339(), level.as_str())
        };
        let _ = writeln!(std::io::stderr().lock(), "{line}");
    }
}
