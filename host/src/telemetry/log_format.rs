//! The fields of text log lines, written so that no value can break a line:
//! guests supply much of what the host logs (their stdout, `log` outputs,
//! error texts, topics and URLs), and a raw newline or terminal escape in
//! one would forge standalone host log lines or rewrite the operator's
//! screen. Control characters (and the Unicode line separators and bidi
//! overrides) are written escaped, as `\n` or `\u{1b}`; JSON logs need
//! none of this, their encoder escapes strings itself.

use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::format::Writer;

/// Formats event and span fields like `tracing_subscriber`'s default text
/// format (the message, then `name=value` pairs), escaping what could
/// break a line.
#[derive(Debug, Default, Clone, Copy)]
pub struct EscapedFields;

impl<'writer> FormatFields<'writer> for EscapedFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'writer>, fields: R) -> fmt::Result {
        let mut visitor = Visitor {
            writer,
            first: true,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        visitor.result
    }
}

struct Visitor<'writer> {
    writer: Writer<'writer>,
    first: bool,
    result: fmt::Result,
}

impl Visitor<'_> {
    fn write(&mut self, field: &Field, value: fmt::Arguments<'_>) {
        if self.result.is_err() {
            return;
        }
        let separator = if self.first { "" } else { " " };
        self.first = false;
        let text = value.to_string();
        self.result = match field.name() {
            "message" => write!(self.writer, "{separator}{}", Escaped(&text)),
            // Fields of events forwarded from the `log` crate say where they came from.
            name if name.starts_with("log.") => Ok(()),
            name => write!(self.writer, "{separator}{name}={}", Escaped(&text)),
        };
    }
}

impl Visit for Visitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        // As the default format: a message as it is, other strings quoted.
        match field.name() {
            "message" => self.write(field, format_args!("{value}")),
            _ => self.write(field, format_args!("{value:?}")),
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.write(field, format_args!("{value:?}"));
    }
}

/// Text with every character that could break a log line escaped.
pub(crate) struct Escaped<'a>(pub(crate) &'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.0.chars().any(breaks_lines) {
            return f.write_str(self.0);
        }
        for c in self.0.chars() {
            match c {
                '\n' => f.write_str("\\n")?,
                '\r' => f.write_str("\\r")?,
                '\t' => f.write_str("\\t")?,
                c if breaks_lines(c) => write!(f, "\\u{{{:x}}}", c as u32)?,
                c => f.write_char(c)?,
            }
        }
        Ok(())
    }
}

/// Control characters, and what displays as a line break or reorders text.
fn breaks_lines(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_the_rest_kept() {
        let cases = [
            ("plain text, ünïcode ✓", "plain text, ünïcode ✓"),
            ("two\nlines", "two\\nlines"),
            ("cr\r\nlf\ttab", "cr\\r\\nlf\\ttab"),
            ("\u{1b}[2Jclear", "\\u{1b}[2Jclear"),
            ("nul\0del\u{7f}c1\u{85}", "nul\\u{0}del\\u{7f}c1\\u{85}"),
            ("sep\u{2028}bidi\u{202e}", "sep\\u{2028}bidi\\u{202e}"),
        ];
        for (raw, escaped) in cases {
            assert_eq!(Escaped(raw).to_string(), escaped);
        }
    }

    #[test]
    fn no_field_of_an_event_can_break_its_line() {
        use std::sync::{Arc, Mutex};
        #[derive(Clone, Default)]
        struct Sink(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Sink {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let sink = Sink::default();
        let writer = sink.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .fmt_fields(EscapedFields)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("message", key = %"k\nINFO forged span");
            let _entered = span.enter();
            let text = "hello\nERROR sluice: forged line";
            tracing::info!(detail = %"a\rb", quoted = "c\nd", "{text}");
        });
        let log = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        assert_eq!(log.lines().count(), 1, "{log}");
        assert!(log.contains("hello\\nERROR sluice: forged line"), "{log}");
        assert!(log.contains("key=k\\nINFO forged span"), "{log}");
        assert!(log.contains("detail=a\\rb"), "{log}");
        assert!(log.contains("quoted=\"c\\nd\""), "{log}");
    }
}
