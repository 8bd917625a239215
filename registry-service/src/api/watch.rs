//! `WatchService`: a tenant's committed changes as a stream, from the
//! watch feed (`crate::watch`).

use std::pin::Pin;

use futures_util::Stream;
use proto::v1 as pb;
use proto::v1::watch_service_server::WatchService;
use tonic::{Request, Response, Status};

use super::messages::{watch_event, watch_request};
use super::{Registry, parts};

/// The stream a WatchChanges call answers with.
pub type ChangeStream = Pin<Box<dyn Stream<Item = Result<pb::Change, Status>> + Send>>;

#[tonic::async_trait]
impl WatchService for Registry {
    type WatchChangesStream = ChangeStream;

    #[tracing::instrument(skip_all)]
    async fn watch_changes(
        &self,
        request: Request<pb::WatchChangesRequest>,
    ) -> Result<Response<ChangeStream>, Status> {
        let (caller, request) = parts(request)?;
        let (after, kinds) = watch_request(&request)?;
        let stream = self.feed.watch(&caller.tenant, after, kinds).await?;
        let changes = futures_util::stream::unfold(stream, |mut stream| async move {
            let event = stream.next().await?;
            Some((event.map(watch_event).map_err(Status::from), stream))
        });
        Ok(Response::new(Box::pin(changes)))
    }
}
