//! JSON logs on stdout, one object per line, each carrying the service's name.

use std::io::{self, Write};

use tracing_subscriber::fmt::MakeWriter;

/// Starts JSON logging, filtered by `RUST_LOG` (default `info`). Safe to call twice:
/// the second call is a no-op, so tests that embed several tiers can call it freely.
pub fn init_logging(service: &'static str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_current_span(false)
        .with_writer(ServiceTagged { service })
        .try_init();
}

/// Writes each JSON line with `"service":NAME` as its first field: the formatter has no
/// static fields, and one line is one write, so the tag goes in front of it.
struct ServiceTagged {
    service: &'static str,
}

impl<'a> MakeWriter<'a> for ServiceTagged {
    type Writer = TaggedLine;
    fn make_writer(&'a self) -> TaggedLine {
        TaggedLine { service: self.service }
    }
}

struct TaggedLine {
    service: &'static str,
}

impl Write for TaggedLine {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        tag(self.service, buf, &mut io::stdout().lock())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stdout().flush()
    }
}

/// Writes `line` to `out` with `"service":NAME` first when it is a JSON object.
fn tag(service: &str, line: &[u8], out: &mut impl Write) -> io::Result<()> {
    match line.split_first() {
        Some((b'{', rest)) => {
            write!(out, "{{\"service\":\"{service}\",")?;
            out.write_all(rest)
        }
        _ => out.write_all(line),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_json_line_names_its_service() {
        let mut out = Vec::new();
        super::tag("fanout", br#"{"level":"INFO","fields":{"message":"up"}}"#, &mut out).expect("write");
        let line: serde_json::Value = serde_json::from_slice(&out).expect("still JSON");
        assert_eq!(line["service"], "fanout");
        assert_eq!(line["fields"]["message"], "up");
        let mut out = Vec::new();
        super::tag("fanout", b"plain", &mut out).expect("write");
        assert_eq!(out, b"plain");
    }
}
