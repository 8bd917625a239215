//! The protobuf codec every generated client and server uses: tonic's
//! prost codec, with the encode buffer sized for the message it encodes.
//!
//! tonic allocates a response body's encode buffer when the call starts
//! (8 KiB by default) and keeps it for the call's life. A unary call
//! gives it back within milliseconds; a WatchChanges stream holds it for
//! as long as the watcher stays, idle or not, and a registry holds
//! thousands of them. Its messages ([`v1::Change`](crate::v1::Change)) are
//! a few hundred bytes, so its buffer starts small; it grows when a
//! replay batches many.

use std::any::TypeId;

use prost::Message;
use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// The encode buffer a WatchChanges stream starts with.
const CHANGE_BUFFER: usize = 1024;

/// Batch of messages a stream sends in one body frame at most (tonic's
/// default, kept).
const YIELD_THRESHOLD: usize = 32 * 1024;

/// [`ProstCodec`] with a small encode buffer for long-lived streams.
#[derive(Debug)]
pub struct SizedCodec<T, U>(ProstCodec<T, U>);

impl<T, U> Default for SizedCodec<T, U> {
    fn default() -> Self {
        Self(ProstCodec::default())
    }
}

impl<T, U> Codec for SizedCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        let settings = if TypeId::of::<T>() == TypeId::of::<crate::v1::Change>() {
            BufferSettings::new(CHANGE_BUFFER, YIELD_THRESHOLD)
        } else {
            BufferSettings::default()
        };
        ProstEncoder::new(settings)
    }

    fn decoder(&mut self) -> Self::Decoder {
        self.0.decoder()
    }
}
