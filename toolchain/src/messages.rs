//! Reading what `cargo build --message-format=json-render-diagnostics` prints on stdout:
//! one JSON object per line; diagnostics are already rendered to stderr.

use std::path::PathBuf;

use serde_json::Value;

/// What one line of cargo's stdout says, as far as `cargo pop` cares.
#[derive(Debug, PartialEq, Eq)]
pub enum Message {
    /// A `compiler-artifact` that produced an executable (an image, for hermit targets).
    Executable {
        /// Path of the executable.
        path: PathBuf,
        /// True if cargo found it up to date and did not rebuild it.
        fresh: bool,
    },
    /// Any other JSON message.
    Other,
    /// A line that is not a JSON object (e.g. a build script's stray output).
    Text,
}

impl Message {
    /// Parses one line of cargo's stdout.
    pub fn parse(line: &str) -> Message {
        let Ok(Value::Object(msg)) = serde_json::from_str::<Value>(line) else {
            return Message::Text;
        };
        if msg.get("reason").and_then(Value::as_str) != Some("compiler-artifact") {
            return Message::Other;
        }
        match msg.get("executable").and_then(Value::as_str) {
            Some(path) => Message::Executable {
                path: PathBuf::from(path),
                fresh: msg.get("fresh").and_then(Value::as_bool).unwrap_or(false),
            },
            None => Message::Other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_executables() {
        let line = r#"{"reason":"compiler-artifact","package_id":"path+file:///x/hello#0.1.0","target":{"kind":["bin"],"name":"hello"},"filenames":["/x/target/x86_64-unknown-hermit/debug/hello"],"executable":"/x/target/x86_64-unknown-hermit/debug/hello","fresh":true}"#;
        assert_eq!(
            Message::parse(line),
            Message::Executable {
                path: PathBuf::from("/x/target/x86_64-unknown-hermit/debug/hello"),
                fresh: true
            }
        );
    }

    #[test]
    fn ignores_libraries_and_other_messages() {
        let lib = r#"{"reason":"compiler-artifact","target":{"kind":["lib"]},"filenames":["/x/libpop.rlib"],"executable":null,"fresh":false}"#;
        assert_eq!(Message::parse(lib), Message::Other);
        let done = r#"{"reason":"build-finished","success":true}"#;
        assert_eq!(Message::parse(done), Message::Other);
        assert_eq!(Message::parse("warning: something"), Message::Text);
        assert_eq!(Message::parse("[1,2]"), Message::Text);
    }
}
