//! W3C trace context (`traceparent`), so a trace crosses services: a
//! message's span continues the trace its input carried, and every output
//! it published or HTTP request it made carries a span of its own, child of
//! the message's. Ids missing from the input are derived from the message's
//! place (SHA-256), not drawn at random: a redelivered message gets the same
//! ids, so its outputs are the same records as the first time.

use sha2::{Digest, Sha256};

use crate::contract::{Header, Message};
use crate::telemetry::Readable;
use crate::wire::TRACEPARENT;

/// A message's trace: its span's context, its correlation id (the first
/// of the configured headers it carries), and the `tracing` span its logs
/// and its outputs' spans belong to.
#[derive(Debug, Clone)]
pub(crate) struct MessageTrace {
    /// When the pipeline took the message in (for `end-to-end` timing).
    pub(crate) started: std::time::Instant,
    /// The input's id, as its outputs' `sluice-id`s start (`wire::input_id`).
    pub(crate) input: String,
    pub(crate) context: TraceContext,
    pub(crate) correlation: Option<Header>,
    pub(crate) span: tracing::Span,
}

impl MessageTrace {
    /// Opens the `message` span of `message`, served by `handler`.
    pub(crate) fn open(
        message: &Message,
        handler: &dyn crate::runtime::Handler,
        correlation_headers: &[String],
    ) -> MessageTrace {
        let input = crate::wire::input_id(message);
        let context = TraceContext::at(message, &input);
        let correlation = correlation_headers.iter().find_map(|name| {
            message
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .cloned()
        });
        let key = Readable(message.key.as_deref().unwrap_or_default());
        let span = tracing::info_span!(
            "message",
            topic = %message.topic,
            partition = message.partition,
            offset = message.offset,
            key = %key,
            handler = handler.name(),
            version = handler.version(),
            trace_id = %context.trace_id(),
            span_id = %context.span_id(),
            parent_span_id = tracing::field::Empty,
            correlation_id = tracing::field::Empty,
            outcome = tracing::field::Empty,
        );
        if context.parent_id.is_some() {
            span.record("parent_span_id", context.parent_id());
        }
        if let Some(header) = &correlation {
            span.record(
                "correlation_id",
                tracing::field::display(Readable(&header.value)),
            );
        }
        MessageTrace {
            started: std::time::Instant::now(),
            input,
            context,
            correlation,
            span,
        }
    }

    /// The span of output `index` (as in `sluice-id`); an output that
    /// leaves the host (`headers`) carries its `traceparent`, and the
    /// message's correlation header unless it has one.
    pub(crate) fn output(&self, index: usize, headers: Option<&mut Vec<Header>>) -> tracing::Span {
        let child = self.context.child(index);
        if let Some(headers) = headers {
            child.stamp(headers);
            if let Some(correlation) = &self.correlation
                && !headers
                    .iter()
                    .any(|h| h.name.eq_ignore_ascii_case(&correlation.name))
            {
                headers.push(correlation.clone());
            }
        }
        tracing::info_span!(
            parent: &self.span,
            "output",
            index,
            span_id = %child.span_id(),
            topic = tracing::field::Empty,
            url = tracing::field::Empty,
        )
    }
}

/// A span's place in a trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TraceContext {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    /// The span it is a child of, if any.
    parent_id: Option<[u8; 8]>,
    flags: u8,
}

impl TraceContext {
    /// The span of handling `message`: a child of the span in its
    /// `traceparent` header, or the root of a trace of its own.
    #[cfg(test)]
    fn of(message: &Message) -> TraceContext {
        Self::at(message, &crate::wire::input_id(message))
    }

    /// As `of`, given the message's `place` (`wire::input_id`), which the
    /// ids derive from.
    fn at(message: &Message, place: &str) -> TraceContext {
        let parent = message
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(TRACEPARENT))
            .and_then(|h| parse(&h.value));
        match parent {
            Some(parent) => TraceContext {
                trace_id: parent.trace_id,
                span_id: derive(&[&parent.span_id, place.as_bytes()]),
                parent_id: Some(parent.span_id),
                flags: parent.flags,
            },
            None => {
                let digest = Sha256::digest(place.as_bytes());
                let mut trace_id = [0; 16];
                let mut span_id = [0; 8];
                trace_id.copy_from_slice(&digest[..16]);
                span_id.copy_from_slice(&digest[16..24]);
                TraceContext {
                    trace_id,
                    span_id,
                    parent_id: None,
                    flags: 1,
                }
            }
        }
    }

    /// The span of one of its outputs (`index` as in `sluice-id`): the
    /// parent's id mixed with the index (SplitMix64), distinct per output
    /// and cheap, since every output has one.
    pub(crate) fn child(&self, index: usize) -> TraceContext {
        let mut z = u64::from_be_bytes(self.span_id)
            .wrapping_add((index as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        TraceContext {
            trace_id: self.trace_id,
            // Zero is not a valid span id.
            span_id: z.max(1).to_be_bytes(),
            parent_id: Some(self.span_id),
            flags: self.flags,
        }
    }

    /// The `traceparent` header value.
    pub(crate) fn traceparent(&self) -> String {
        // Written out by hand: one allocation, once per output.
        let mut text = String::with_capacity(55);
        text.push_str("00-");
        push_hex(&mut text, &self.trace_id);
        text.push('-');
        push_hex(&mut text, &self.span_id);
        text.push('-');
        push_hex(&mut text, &[self.flags]);
        text
    }

    /// Replaces any `traceparent` among `headers` with this span's.
    pub(crate) fn stamp(&self, headers: &mut Vec<Header>) {
        headers.retain(|h| !h.name.eq_ignore_ascii_case(TRACEPARENT));
        headers.push(Header::new(TRACEPARENT, self.traceparent()));
    }

    pub(crate) fn trace_id(&self) -> String {
        hex(&self.trace_id)
    }

    pub(crate) fn span_id(&self) -> String {
        hex(&self.span_id)
    }

    /// The parent span's id, or empty for a root.
    pub(crate) fn parent_id(&self) -> String {
        self.parent_id.as_ref().map_or_else(String::new, |p| hex(p))
    }
}

/// `00-<32 hex>-<16 hex>-<2 hex>`, with non-zero ids (W3C trace context
/// level 1); anything else is ignored, as the specification asks.
fn parse(value: &[u8]) -> Option<TraceContext> {
    let text = std::str::from_utf8(value).ok()?.trim();
    let mut parts = text.split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version != "00" || parts.next().is_some() {
        return None;
    }
    let trace_id: [u8; 16] = unhex(trace)?.try_into().ok()?;
    let span_id: [u8; 8] = unhex(span)?.try_into().ok()?;
    let [flags] = unhex(flags)?.try_into().ok()?;
    let zero = |bytes: &[u8]| bytes.iter().all(|b| *b == 0);
    if zero(&trace_id) || zero(&span_id) {
        return None;
    }
    Some(TraceContext {
        trace_id,
        span_id,
        parent_id: None,
        flags,
    })
}

fn derive<const N: usize>(parts: &[&[u8]]) -> [u8; N] {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part);
    }
    let digest = hasher.finalize();
    let mut id = [0; N];
    id.copy_from_slice(&digest[..N]);
    id
}

fn hex(bytes: &[u8]) -> String {
    let mut text = String::with_capacity(bytes.len() * 2);
    push_hex(&mut text, bytes);
    text
}

fn push_hex(text: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        text.push(DIGITS[usize::from(b >> 4)] as char);
        text.push(DIGITS[usize::from(b & 0xf)] as char);
    }
}

/// Lowercase hex only, as W3C trace context requires.
fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2)
        || !text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(traceparent: Option<&str>) -> Message {
        Message {
            topic: "in".into(),
            partition: 1,
            offset: 7,
            key: None,
            payload: Vec::new(),
            headers: traceparent
                .map(|t| vec![Header::new("traceparent", t)])
                .unwrap_or_default(),
            timestamp: 0,
        }
    }

    #[test]
    fn a_message_continues_its_inputs_trace_and_outputs_are_its_children() {
        let input = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let trace = TraceContext::of(&message(Some(input)));
        assert_eq!(trace.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(trace.parent_id(), "00f067aa0ba902b7");
        assert_ne!(trace.span_id(), "00f067aa0ba902b7");
        let output = trace.child(0);
        assert_eq!(output.parent_id(), trace.span_id());
        assert_ne!(output.span_id(), trace.child(1).span_id());
        let header = output.traceparent();
        assert!(
            header.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
            "{header}"
        );
        assert!(header.ends_with("-01"));
        // The same message gives the same ids: a redelivery's outputs match.
        assert_eq!(TraceContext::of(&message(Some(input))), trace);
    }

    #[test]
    fn bad_traceparents_start_a_trace_of_their_own() {
        let own = TraceContext::of(&message(None));
        assert_eq!(own.parent_id(), "");
        for bad in [
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "garbage",
        ] {
            assert_eq!(TraceContext::of(&message(Some(bad))), own, "{bad}");
        }
    }
}
