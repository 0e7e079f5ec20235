//! Server-to-server exchanges (replication between the dataservers of a
//! group): one connection to one peer, no routing and no retries — the
//! caller decides what a failure means.

use std::sync::Arc;
use std::time::Duration;

use proto::{Message, Reply, Request, RequestEnvelope, WireError};
use tokio::io::AsyncRead;

use crate::conn::{Body, Conn, Sink};
use crate::error::Result;

/// A body to send after a request.
pub enum PeerBody<'a> {
    None,
    Slice(&'a [u8]),
    Reader(&'a mut (dyn AsyncRead + Unpin + Send), u64),
}

/// One connection to a peer dataserver. After any error it must be dropped.
pub struct PeerConn {
    conn: Conn,
    next_id: u64,
}

impl PeerConn {
    pub async fn connect(addr: &str, connect_timeout: Duration, timeout: Duration) -> Result<Self> {
        let conn = Conn::connect(Arc::from(addr), connect_timeout, timeout).await?;
        Ok(PeerConn { conn, next_id: 1 })
    }

    pub fn addr(&self) -> &str {
        self.conn.addr()
    }

    /// Whether an idle connection can take another exchange: the peer has
    /// not closed it (it restarted, or idled it out) and sent nothing
    /// unasked. Checked before reusing a pooled connection.
    pub fn is_reusable(&self) -> bool {
        self.conn.is_reusable()
    }

    /// Send `op` (with `epoch` and the client's `(client_id, seq)`) and its
    /// body; return the answer. A download's bytes (answer
    /// [`Reply::Download`] or [`Reply::ReplFile`]) are appended to `data`.
    pub async fn call(
        &mut self,
        op: Request,
        epoch: u64,
        client: (u64, u64),
        body: PeerBody<'_>,
        data: Option<&mut Vec<u8>>,
    ) -> Result<std::result::Result<Reply, WireError>> {
        let id = self.next_id;
        self.next_id += 1;
        let msg = Message::Request(RequestEnvelope {
            id,
            client_id: client.0,
            seq: client.1,
            epoch,
            op,
        });
        let mut body = match body {
            PeerBody::None => Body::None,
            PeerBody::Slice(s) => Body::Slice(s),
            PeerBody::Reader(r, n) => Body::Reader(r, n),
        };
        self.conn.send_request(&msg, id, &mut body).await?;
        let resp = self.conn.recv_response(id).await?;
        let length = match &resp {
            Ok(Reply::Download { length, .. }) => Some(*length),
            Ok(Reply::ReplFile {
                state: Some(st), ..
            }) => Some(st.size),
            _ => None,
        };
        if let Some(length) = length {
            let mut scratch = Vec::new();
            let v = data.unwrap_or(&mut scratch);
            let mut sink = Sink::Vec(v);
            self.conn.recv_body(id, length, &mut sink, None).await?;
        }
        Ok(resp)
    }
}
