//! A batch's item count, checked as its request's bytes arrive, before
//! anything is decoded.
//!
//! The batch methods (`EncryptBatch`, `DecryptBatch`, `Rewrap`,
//! `ImportFernet`) hold their items in field 1 of the request. prost decodes
//! every item before a handler can count them, so the handler's check came
//! after the work: 4 MiB of empty items is two million messages, about
//! 240 MB and up to 0.6 s of CPU for one call (`BENCHMARKS.md`). This layer
//! reads only the gRPC frame's prefix and the top-level protobuf keys and
//! lengths of the message as its body streams in, counts the items, and
//! ends the body with INVALID_ARGUMENT (a violation on `items`, as the
//! handler words it) at the first item past the limit: a few KiB read,
//! nothing decoded. What it cannot read (a compressed frame, a malformed
//! message) it leaves to the decoder, which refuses it as before.

use std::pin::Pin;
use std::task::{Context, Poll};

use tonic::codegen::{Bytes, StdError, http};
use tonic::server::NamedService;

use crate::error::Error;

/// The methods whose request is a batch in field 1.
const BATCH_METHODS: [&str; 4] = ["EncryptBatch", "DecryptBatch", "Rewrap", "ImportFernet"];

/// The protobuf field number of every batch request's items.
const ITEMS_FIELD: u64 = 1;

/// Wraps the crypto service so that a batch's items are counted as they
/// arrive.
#[derive(Debug, Clone, Copy)]
pub struct BatchLimitLayer {
    max_items: usize,
}

impl BatchLimitLayer {
    /// Batches of at most `max_items`.
    pub fn new(max_items: usize) -> Self {
        Self { max_items }
    }
}

impl<S> tower::Layer<S> for BatchLimitLayer {
    type Service = BatchLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        BatchLimit {
            inner,
            max_items: self.max_items,
        }
    }
}

/// The service behind the count.
#[derive(Debug, Clone)]
pub struct BatchLimit<S> {
    inner: S,
    max_items: usize,
}

impl<S: NamedService> NamedService for BatchLimit<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> tower::Service<http::Request<B>> for BatchLimit<S>
where
    S: tower::Service<http::Request<CountedItems<B>>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = request
            .uri()
            .path()
            .rsplit_once('/')
            .map_or("", |(_, method)| method);
        let counter = BATCH_METHODS
            .contains(&method)
            .then(|| ItemCounter::new(self.max_items));
        self.inner.call(request.map(|body| CountedItems {
            inner: body,
            counter,
        }))
    }
}

/// A request body whose batch items are counted as its frames pass.
#[derive(Debug)]
pub struct CountedItems<B> {
    inner: B,
    /// `None` for a method that takes no batch, and once the body failed.
    counter: Option<ItemCounter>,
}

impl<B> http_body::Body for CountedItems<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<StdError>,
{
    type Data = Bytes;
    type Error = StdError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, StdError>>> {
        let polled = match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => frame,
            Poll::Ready(Some(Err(error))) => return Poll::Ready(Some(Err(error.into()))),
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => return Poll::Pending,
        };
        if let (Some(counter), Some(data)) = (self.counter.as_mut(), polled.data_ref())
            && !counter.feed(data)
        {
            let max = counter.max_items;
            self.counter = None;
            let status = tonic::Status::from(Error::bad_field(
                "items",
                format!("must hold at most {max} items"),
            ));
            return Poll::Ready(Some(Err(Box::new(status))));
        }
        Poll::Ready(Some(Ok(polled)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Reads gRPC frames' prefixes and their messages' top-level fields, a
/// byte at a time across chunks, counting field-1 values.
#[derive(Debug)]
struct ItemCounter {
    max_items: usize,
    items: usize,
    /// Bytes of the current message not read yet.
    message_left: u64,
    state: State,
}

#[derive(Debug, Clone, Copy)]
enum State {
    /// A frame's 5-byte prefix: a compression flag and a big-endian length.
    Prefix { read: [u8; 5], have: usize },
    /// A field's key (a varint).
    Key { value: u64, shift: u32 },
    /// A varint field's value.
    Varint,
    /// A length-delimited field's length (a varint).
    Length { value: u64, shift: u32 },
    /// Bytes of a field's value to pass over.
    Skip { left: u64 },
    /// Not readable here (compressed, a group, malformed): left to the
    /// decoder.
    Off,
}

impl ItemCounter {
    fn new(max_items: usize) -> Self {
        Self {
            max_items,
            items: 0,
            message_left: 0,
            state: State::Prefix {
                read: [0; 5],
                have: 0,
            },
        }
    }

    /// Reads `data`; `false` once the items are more than the limit.
    fn feed(&mut self, mut data: &[u8]) -> bool {
        while let Some((&byte, rest)) = data.split_first() {
            match self.state {
                State::Off => return true,
                State::Prefix { mut read, have } => {
                    data = rest;
                    read[have] = byte;
                    self.state = if have < 4 {
                        State::Prefix {
                            read,
                            have: have + 1,
                        }
                    } else if read[0] != 0 {
                        State::Off
                    } else {
                        self.message_left =
                            u64::from(u32::from_be_bytes([read[1], read[2], read[3], read[4]]));
                        self.next_field()
                    };
                    continue;
                }
                State::Skip { left } => {
                    let step = left.min(data.len() as u64);
                    // `step` is at most `data.len()`: the cast is exact.
                    data = &data[step as usize..];
                    self.message_left -= step;
                    self.state = if step == left {
                        self.next_field()
                    } else {
                        State::Skip { left: left - step }
                    };
                    continue;
                }
                State::Key { .. } | State::Varint | State::Length { .. } => {}
            }
            data = rest;
            self.message_left -= 1;
            let more = byte & 0x80 != 0;
            let bits = u64::from(byte & 0x7f);
            self.state = match self.state {
                State::Key { shift, .. } | State::Length { shift, .. } if shift > 56 => State::Off,
                State::Key { value, shift } if more => State::Key {
                    value: value | bits << shift,
                    shift: shift + 7,
                },
                State::Key { value, shift } => {
                    let key = value | bits << shift;
                    match key & 7 {
                        0 => State::Varint,
                        1 => self.skip(8),
                        2 => {
                            if key >> 3 == ITEMS_FIELD {
                                self.items += 1;
                                if self.items > self.max_items {
                                    return false;
                                }
                            }
                            State::Length { value: 0, shift: 0 }
                        }
                        5 => self.skip(4),
                        _ => State::Off,
                    }
                }
                State::Varint if more => State::Varint,
                State::Varint => self.next_field(),
                State::Length { value, shift } if more => State::Length {
                    value: value | bits << shift,
                    shift: shift + 7,
                },
                State::Length { value, shift } => self.skip(value | bits << shift),
                State::Prefix { .. } | State::Skip { .. } | State::Off => State::Off,
            };
            if self.message_left == 0 && !matches!(self.state, State::Prefix { .. }) {
                // A field cut by the message's end: malformed.
                self.state = State::Off;
            }
        }
        true
    }

    /// Passes over `left` bytes of a value (none: the next field).
    fn skip(&self, left: u64) -> State {
        if left > self.message_left {
            State::Off
        } else if left == 0 {
            self.next_field()
        } else {
            State::Skip { left }
        }
    }

    /// The next field's key, or the next frame's prefix at the message's
    /// end.
    fn next_field(&self) -> State {
        if self.message_left == 0 {
            State::Prefix {
                read: [0; 5],
                have: 0,
            }
        } else {
            State::Key { value: 0, shift: 0 }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(message: &[u8]) -> Vec<u8> {
        let mut frame = vec![0];
        frame.extend_from_slice(&u32::try_from(message.len()).expect("small").to_be_bytes());
        frame.extend_from_slice(message);
        frame
    }

    /// Feeds `bytes` in chunks of `chunk` bytes; whether it stayed within
    /// the limit, and the items counted.
    fn count(bytes: &[u8], max: usize, chunk: usize) -> (bool, usize) {
        let mut counter = ItemCounter::new(max);
        let within = bytes.chunks(chunk).all(|piece| counter.feed(piece));
        (within, counter.items)
    }

    #[test]
    fn items_are_counted_across_any_chunking_and_other_fields_are_passed_over() {
        // items (field 1) twice with nested bytes, a varint field 2, a
        // fixed64 field 3, a fixed32 field 4, a 200-byte field 5 (a
        // two-byte length), then one more item.
        let mut message = vec![0x0a, 3, 0x0a, 1, b'x', 0x10, 0x96, 0x01];
        message.extend_from_slice(&[0x19, 1, 2, 3, 4, 5, 6, 7, 8, 0x25, 1, 2, 3, 4]);
        message.extend_from_slice(&[0x0a, 0]);
        message.extend_from_slice(&[0x2a, 0xc8, 0x01]);
        message.extend_from_slice(&[0x0a; 200]);
        message.extend_from_slice(&[0x0a, 2, 0x12, 0]);
        let bytes = framed(&message);
        for chunk in [1, 2, 3, 7, bytes.len()] {
            assert_eq!(count(&bytes, 3, chunk), (true, 3), "chunks of {chunk}");
            assert_eq!(count(&bytes, 2, chunk), (false, 3), "chunks of {chunk}");
        }
    }

    #[test]
    fn the_first_item_past_the_limit_stops_the_count() {
        let bytes = framed(&[0x0a, 0x00].repeat(100_000));
        let mut counter = ItemCounter::new(1000);
        assert!(!counter.feed(&bytes));
        assert_eq!(counter.items, 1001);
        assert!(count(&bytes, 100_000, 4096).0);
    }

    #[test]
    fn what_it_cannot_read_is_left_to_the_decoder() {
        let many = [0x0a, 0x00].repeat(10);
        // A compressed frame.
        let mut compressed = framed(&many);
        compressed[0] = 1;
        assert_eq!(count(&compressed, 1, 5), (true, 0));
        // A group (wire type 3) before the items.
        let mut grouped = vec![0x0b];
        grouped.extend_from_slice(&many);
        assert_eq!(count(&framed(&grouped), 1, 5), (true, 0));
        // A length past the message's end.
        let mut cut = vec![0x2a, 0x7f];
        cut.extend_from_slice(&many);
        assert_eq!(count(&framed(&cut), 1, 5), (true, 0));
        // A key longer than a varint may be.
        let mut endless = vec![0xff; 11];
        endless.extend_from_slice(&many);
        assert_eq!(count(&framed(&endless), 1, 5), (true, 0));
    }

    proptest::proptest! {
        /// Any bytes, however they are cut into chunks: no panic, and the
        /// same count and verdict as when read whole.
        #[test]
        fn any_bytes_in_any_chunks_count_as_when_read_whole(
            message in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600),
            declared in proptest::prelude::any::<Option<u16>>(),
            chunk in 1usize..40,
            max in 0usize..8,
        ) {
            let mut bytes = vec![0];
            let length = declared.map_or(message.len(), usize::from);
            bytes.extend_from_slice(&u32::try_from(length).unwrap_or(u32::MAX).to_be_bytes());
            bytes.extend_from_slice(&message);
            proptest::prop_assert_eq!(count(&bytes, max, chunk), count(&bytes, max, bytes.len()));
        }
    }

    #[test]
    fn a_second_frame_is_read_from_its_own_prefix() {
        let mut bytes = framed(&[0x0a, 0x00, 0x0a, 0x00]);
        bytes.extend_from_slice(&framed(&[0x0a, 0x00]));
        assert_eq!(count(&bytes, 3, 1), (true, 3));
        assert_eq!(count(&bytes, 2, 1), (false, 3));
    }
}
