//! `drctl wal-push`'s side of the control API: streams a file's bytes to
//! the daemon, which writes them once (see the daemon's `ops::walpush`).

use drd_proto::pb;
use tonic::Status;

/// Largest piece of a file `push_file` sends per message.
pub const PUSH_CHUNK_BYTES: usize = 1024 * 1024;

/// The client side of `wal-push` (drctl, tests): streams `size` bytes of
/// `file` as `name` to the daemon, in order. A read error ends the stream
/// early, and the daemon refuses the short push.
pub async fn push_file(
    client: &mut drd_proto::pb::control_client::ControlClient<tonic::transport::Channel>,
    stream: &str,
    name: &str,
    mut file: tokio::fs::File,
    size: u64,
) -> Result<pb::WalPushResponse, Status> {
    use tokio::io::AsyncReadExt;
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    let header = pb::WalPushRequest {
        stream: stream.to_string(),
        name: name.to_string(),
        size,
        data: Vec::new(),
    };
    let reader = tokio::spawn(async move {
        if tx.send(header).await.is_err() {
            return Ok(());
        }
        loop {
            let mut buf = Vec::with_capacity(PUSH_CHUNK_BYTES);
            let n = (&mut file)
                .take(PUSH_CHUNK_BYTES as u64)
                .read_to_end(&mut buf)
                .await?;
            if n == 0 {
                return Ok::<(), std::io::Error>(());
            }
            let msg = pb::WalPushRequest {
                data: buf,
                ..Default::default()
            };
            if tx.send(msg).await.is_err() {
                return Ok(());
            }
        }
    });
    let result = client
        .wal_push(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .map(|r| r.into_inner());
    match reader.await {
        Ok(Err(e)) if result.is_err() => Err(Status::data_loss(format!(
            "cannot read {name} while pushing it: {e}"
        ))),
        _ => result,
    }
}
