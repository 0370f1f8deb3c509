//! The streams an authenticated agent opens: batch streams (batches read, applied to the
//! latest-value table and the registry of agents, handed to the store writer and the incident
//! engine, acknowledged in order once committed and evaluated) and inventory streams (one
//! snapshot or delta each, reconciled into the CMDB, answered with an ack or a resync request).
//! The kind of a stream's first frame says which it is, and so which frame limit applies.

use std::sync::Arc;

use quinn::{RecvStream, SendStream, VarInt};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use vigil_runtime::clock::now_ms;
use vigil_shared::codec::{self, DecodeError, FrameDecoder};
use vigil_shared::proto::{self, codes, kind, Ack, Batch, Message};

use super::budget::{ConnectionBudget, Reservation};
use super::{read_frame_within, read_some, session, write_msg, Ingest, StreamError, MAX_UNACKED};
use crate::cmdb::{self, InventoryOutcome};
use crate::incidents::engine::Input;
use crate::latest::Refused;
use crate::store::{AppendOutcome, NewBatch, Pending};

impl Ingest {
    /// A stream sent something undecodable: count it, log it, and stop that stream (only).
    fn reject_stream(&self, recv: &mut RecvStream, e: &DecodeError, what: &str) {
        self.parts.metrics.reject(e.reason());
        warn!(error = %e, "closing {what} stream");
        let _ = recv.stop(VarInt::from_u32(e.code()));
    }

    /// A stream ended with `e`: a refusal of ours (undecodable, no room, too slow) is counted,
    /// logged and the stream stopped; anything else just ended it.
    fn end_stream(&self, recv: &mut RecvStream, e: &StreamError, what: &str) {
        match e.refusal() {
            Some((reason, code)) => {
                self.parts.metrics.reject(reason);
                warn!(error = %e, "closing {what} stream");
                let _ = recv.stop(VarInt::from_u32(code));
            }
            None => debug!(error = %e, "{what} stream ended"),
        }
    }

    /// A stream opened by an agent: the kind of its first frame says what it carries (batches or
    /// one inventory message), and so which frame limit applies.
    pub(super) async fn agent_stream(
        self: Arc<Self>,
        agent: Arc<str>,
        send: SendStream,
        mut recv: RecvStream,
        budget: ConnectionBudget,
        shutdown: CancellationToken,
    ) {
        let mut dec = FrameDecoder::new(self.parts.max_frame);
        let first = loop {
            if let Some(k) = dec.peek_kind() {
                break Some(k);
            }
            let more = tokio::select! {
                r = read_some(&mut recv, &mut dec) => r,
                _ = shutdown.cancelled() => return,
            };
            match more {
                Ok(true) => {}
                Ok(false) => break None,
                Err(e) => {
                    debug!(error = %e, "stream ended before its first frame");
                    return;
                }
            }
        };
        match first {
            Some(kind::INVENTORY_SNAPSHOT | kind::INVENTORY_DELTA) => {
                dec.set_max(codec::MAX_INVENTORY_FRAME);
                self.inventory_stream(agent, send, recv, dec, budget).await
            }
            _ => {
                self.batch_stream(agent, send, recv, dec, budget, shutdown)
                    .await
            }
        }
    }

    /// One inventory message: reconcile it into the CMDB, answer with an ack or a resync request.
    async fn inventory_stream(
        self: Arc<Self>,
        agent: Arc<str>,
        mut send: SendStream,
        mut recv: RecvStream,
        mut dec: FrameDecoder,
        budget: ConnectionBudget,
    ) {
        // The reservation is held until the inventory is reconciled: a decoded inventory and
        // the reconciliation's work take memory in proportion to the frame.
        let (msg, _reservation) = match read_frame_within(&mut recv, &mut dec, &budget).await {
            Ok(Some((frame, reservation))) => match frame.decode() {
                Ok(m @ (Message::InventorySnapshot(_) | Message::InventoryDelta(_))) => {
                    (m, reservation)
                }
                Ok(other) => {
                    self.parts.metrics.reject("unexpected");
                    warn!(
                        kind = other.kind(),
                        "closing inventory stream: unexpected message"
                    );
                    let _ = recv.stop(VarInt::from_u32(codes::UNEXPECTED));
                    return;
                }
                Err(e) => {
                    self.reject_stream(&mut recv, &e, "inventory");
                    return;
                }
            },
            Ok(None) => return,
            Err(e) => {
                self.end_stream(&mut recv, &e, "inventory");
                return;
            }
        };
        let mut msg = msg;
        let accepted = match &mut msg {
            Message::InventorySnapshot(s) => {
                session::accept_inventory(&mut s.inventory, &self.limits)
            }
            Message::InventoryDelta(d) => session::accept_delta(&mut d.delta, &self.limits),
            _ => Ok(Vec::new()),
        };
        match accepted {
            Ok(dropped) => {
                for reason in dropped {
                    self.parts.metrics.reject(reason);
                }
            }
            Err(refusal) => {
                self.parts.metrics.reject(refusal.reason);
                warn!(
                    reason = refusal.reason,
                    max_cis = self.limits.max_cis,
                    "closing inventory stream: the inventory is larger than allowed"
                );
                refuse(&mut send, &mut recv, refusal.code);
                return;
            }
        }
        let snapshot = matches!(msg, Message::InventorySnapshot(_));
        let gc = Arc::clone(&self.cmdb);
        let id = agent.to_string();
        let outcome = tokio::task::spawn_blocking(move || {
            let msg = match msg {
                Message::InventorySnapshot(s) => cmdb::InventoryMessage::Snapshot(s),
                Message::InventoryDelta(d) => cmdb::InventoryMessage::Delta(d),
                _ => {
                    return Err(crate::store::StoreError::Task(
                        "not an inventory message".into(),
                    ))
                }
            };
            gc.apply(&id, msg, now_ms())
        })
        .await;
        let reply = match outcome {
            Ok(Ok(InventoryOutcome::Stored {
                version,
                added,
                changed,
                removed,
            })) => {
                self.parts
                    .metrics
                    .inventory(if snapshot { "snapshot" } else { "delta" });
                self.tell_engine(Input::InventoryStored {
                    agent: agent.clone(),
                })
                .await;
                if snapshot || added + changed + removed > 0 {
                    info!(
                        version,
                        added, changed, removed, snapshot, "inventory reconciled"
                    );
                }
                Message::InventoryAck(proto::InventoryAck { version })
            }
            Ok(Ok(InventoryOutcome::TooManyCis { cis, max })) => {
                self.parts.metrics.reject(session::reason::CI_LIMIT);
                warn!(
                    cis,
                    max_cis = max,
                    "closing inventory stream: the delta would leave the agent more CIs than allowed"
                );
                refuse(&mut send, &mut recv, codes::LIMIT);
                return;
            }
            Ok(Ok(InventoryOutcome::Resync { have })) => {
                self.parts.metrics.inventory("resync");
                info!(have = ?have, "inventory delta does not match the stored version: asking for a snapshot");
                Message::InventoryResync(proto::InventoryResync { have })
            }
            Ok(Err(e)) => {
                warn!(error = %e, "cannot store inventory");
                self.parts.metrics.reject("store_error");
                let _ = send.reset(VarInt::from_u32(codes::INTERNAL));
                return;
            }
            Err(e) => {
                warn!(error = %e, "inventory task failed");
                self.parts.metrics.reject("store_error");
                let _ = send.reset(VarInt::from_u32(codes::INTERNAL));
                return;
            }
        };
        if write_msg(&mut send, &reply).await.is_ok() {
            let _ = send.finish();
        }
    }

    /// Reads batches, applies them to the latest-value table, hands them to the store writer and
    /// the incident engine, and acknowledges in order once committed and evaluated.
    async fn batch_stream(
        self: Arc<Self>,
        agent: Arc<str>,
        mut send: SendStream,
        mut recv: RecvStream,
        mut dec: FrameDecoder,
        budget: ConnectionBudget,
        shutdown: CancellationToken,
    ) {
        // A batch's room in the budget is given back once it is committed (or failed): what
        // waits for the store counts too.
        let (ack_tx, mut ack_rx) =
            mpsc::channel::<(u64, usize, Pending, oneshot::Receiver<()>, Reservation)>(MAX_UNACKED);
        let metrics = self.parts.metrics.clone();
        let acker = tokio::spawn(async move {
            while let Some((seq, samples, pending, evaluated, room)) = ack_rx.recv().await {
                let outcome = pending.await;
                drop(room);
                match outcome {
                    Ok(AppendOutcome::Stored) => metrics.batch(samples),
                    Ok(AppendOutcome::Duplicate) => metrics.duplicate_batches.inc(),
                    Err(e) => {
                        warn!(seq, error = %e, "store failed: not acknowledging");
                        metrics.reject("store_error");
                        let _ = send.reset(VarInt::from_u32(codes::INTERNAL));
                        return;
                    }
                }
                // Acknowledged only once the incident engine has evaluated the batch too and
                // committed what it decided: nothing evaluates a stored batch again, so an
                // incident the batch opened must not be lost to a crash after its ack. Without an
                // engine (or with a dead one, which stops the collector) the sender is gone and
                // this returns at once.
                let _ = evaluated.await;
                // Acks are cumulative: when more batches are already waiting, the ack for the
                // last of them covers this one too.
                if ack_rx.is_empty()
                    && write_msg(&mut send, &Message::Ack(Ack { seq }))
                        .await
                        .is_err()
                {
                    return;
                }
            }
            let _ = send.finish();
        });
        let mut refused = Vec::new();
        loop {
            let frame = tokio::select! {
                f = read_frame_within(&mut recv, &mut dec, &budget) => f,
                _ = shutdown.cancelled() => break,
            };
            let (frame, room) = match frame {
                Ok(Some(f)) => {
                    // Nothing buffered after this frame: start afresh, so an agent idle between
                    // batches does not keep the last batch's buffer (~16 KiB per connection).
                    if dec.finish().is_ok() {
                        dec = FrameDecoder::new(self.parts.max_frame);
                    }
                    f
                }
                Ok(None) => break,
                Err(e) => {
                    self.end_stream(&mut recv, &e, "batch");
                    break;
                }
            };
            if frame.kind != kind::BATCH {
                let (reason, code) = if kind::is_known(frame.kind) {
                    ("unexpected", codes::UNEXPECTED)
                } else {
                    ("unknown_kind", codes::UNKNOWN_KIND)
                };
                self.parts.metrics.reject(reason);
                warn!(error = %StreamError::Unexpected(frame.kind), "closing batch stream");
                let _ = recv.stop(VarInt::from_u32(code));
                break;
            }
            let batch = match frame.decode() {
                Ok(Message::Batch(b)) => b,
                Ok(_) => continue,
                Err(e) => {
                    self.reject_stream(&mut recv, &e, "batch");
                    break;
                }
            };
            let now = now_ms();
            let mut batch = match session::accept_batch(batch, now, &self.limits) {
                Ok(b) => b,
                Err(refusal) => {
                    self.parts.metrics.reject(refusal.reason);
                    warn!(
                        reason = refusal.reason,
                        "closing batch stream: batch refused"
                    );
                    let _ = recv.stop(VarInt::from_u32(refusal.code));
                    break;
                }
            };
            // Series and checks past the agent's caps are refused here, before anything keeps
            // them: the latest-value table holds the caps, the store and the engine follow it.
            refused.clear();
            self.parts
                .table
                .apply_admitting(&agent, &batch.samples, now, &mut refused);
            if !refused.is_empty() {
                drop_refused(&mut batch, &refused);
            }
            // What is stored is what was accepted: re-encoded only when samples were dropped.
            let payload = if batch.dropped.is_empty() {
                frame.body.to_vec()
            } else {
                for reason in &batch.dropped {
                    self.parts.metrics.reject(reason);
                }
                let kept = Message::Batch(Batch {
                    seq: batch.seq,
                    samples: batch.samples.clone(),
                });
                match codec::encode_body(&kept) {
                    Ok(body) => body,
                    Err(e) => {
                        warn!(error = %e, "cannot re-encode a batch");
                        break;
                    }
                }
            };
            let n = batch.samples.len();
            let checks = crate::sla::occurrences::tally(&batch.samples);
            self.parts.presence.heard(&agent, now);
            let pending = self.parts.writer.submit_batch(NewBatch {
                agent_id: agent.clone(),
                seq: batch.seq,
                first_ts_ms: batch.first_ts_ms,
                last_ts_ms: batch.last_ts_ms,
                samples: u32::try_from(n).unwrap_or(u32::MAX),
                payload,
                checks,
                interval_ms: self
                    .parts
                    .presence
                    .status(&agent, now)
                    .map_or(0, |s| s.observed.interval_ms),
            });
            let (evaluated, engine_done) = oneshot::channel();
            self.tell_engine(Input::Samples {
                agent: agent.clone(),
                samples: batch.samples,
                received_ms: now,
                evaluated: Some(evaluated),
            })
            .await;
            if ack_tx
                .send((batch.seq, n, pending, engine_done, room))
                .await
                .is_err()
            {
                break;
            }
        }
        drop(ack_tx);
        let _ = acker.await;
    }
}

/// Drops the samples at the (ascending) indexes of `refused` from `batch`, adding their reasons
/// to its drops.
fn drop_refused(batch: &mut session::AcceptedBatch, refused: &[(usize, Refused)]) {
    let mut next = refused.iter().peekable();
    let mut i = 0;
    batch.samples.retain(|_| {
        let gone = next.next_if(|(at, _)| *at == i).is_some();
        i += 1;
        !gone
    });
    batch
        .dropped
        .extend(refused.iter().map(|(_, why)| why.reason()));
}

/// Refuses an inventory stream whose message was read: the agent learns the code from the reset
/// of the answer (a stop after the whole message arrived may never reach it).
fn refuse(send: &mut SendStream, recv: &mut RecvStream, code: u32) {
    let _ = send.reset(VarInt::from_u32(code));
    let _ = recv.stop(VarInt::from_u32(code));
}
