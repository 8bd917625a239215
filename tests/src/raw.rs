//! Calls a method by its path with raw protobuf bytes: for requests the
//! typed clients cannot build (unknown fields, truncated messages) and for
//! tests that name methods as strings.

use std::str::FromStr;

use prost::bytes::{Buf, BufMut};
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::codegen::{Body, Bytes, StdError};

/// Sends and receives message bytes as they are.
#[derive(Debug, Clone, Default)]
pub struct RawCodec;

/// The encoder and decoder of [`RawCodec`].
#[derive(Debug, Clone, Default)]
pub struct RawCoder;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCoder;
    type Decoder = RawCoder;

    fn encoder(&mut self) -> Self::Encoder {
        RawCoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCoder
    }
}

impl Encoder for RawCoder {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCoder {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

/// Calls the unary `method` (`/package.Service/Method`) on `channel` with
/// the request's bytes as the message.
pub async fn unary<T>(
    channel: T,
    method: &str,
    request: tonic::Request<Vec<u8>>,
) -> Result<tonic::Response<Vec<u8>>, Status>
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<StdError>,
    T::ResponseBody: Body<Data = Bytes> + Send + 'static,
    <T::ResponseBody as Body>::Error: Into<StdError> + Send,
{
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(e.into().to_string()))?;
    let path = PathAndQuery::from_str(method).expect("a method path");
    grpc.unary(request, path, RawCodec).await
}

/// Calls the server-streaming `method` on `channel` with the request's
/// bytes as the message, and answers its first message (or the status the
/// stream ended with before one); the stream is then dropped.
pub async fn first_streamed<T>(
    channel: T,
    method: &str,
    request: tonic::Request<Vec<u8>>,
) -> Result<Vec<u8>, Status>
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<StdError>,
    T::ResponseBody: Body<Data = Bytes> + Send + 'static,
    <T::ResponseBody as Body>::Error: Into<StdError> + Send,
{
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(e.into().to_string()))?;
    let path = PathAndQuery::from_str(method).expect("a method path");
    let mut stream = grpc
        .server_streaming(request, path, RawCodec)
        .await?
        .into_inner();
    stream
        .message()
        .await?
        .ok_or_else(|| Status::unknown("the stream ended without a message"))
}
