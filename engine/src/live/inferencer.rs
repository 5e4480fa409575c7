//! The inferencer actor: one VM's file-system models, fed batches of
//! writes by the [`Queuer`](super::queuer::Queuer). It runs alone on its
//! own arbiter (thread), because inference is CPU-bound and blocking, and
//! replies to each batch when the batch is done; the queuer then releases
//! the batch's bytes and sends the next one.

use actix::prelude::*;
use anyhow::Result;
use gammaray_core::{BlockDevice, DiskWrite};

use super::pipeline::{wall_ns, Pipeline};
use super::queuer::Queued;

/// The disk as inference must see it: as it was before the write being
/// inferred. Each source keeps it its own way (an undo log over the served
/// image, gammaray's copy of an attached disk, an overlay over a trace's
/// base image).
pub trait DiskView: Send {
    /// Calls `f` with the disk as it was before `w`, then moves the view
    /// past `w`.
    fn follow(
        &mut self,
        w: &DiskWrite,
        f: &mut dyn FnMut(&dyn BlockDevice) -> Result<()>,
    ) -> Result<()>;
    /// Calls `f` with the disk as of the last write followed.
    fn current(&mut self, f: &mut dyn FnMut(&dyn BlockDevice) -> Result<()>) -> Result<()>;
}

/// A batch of queued writes, in arrival order.
#[derive(Message)]
#[rtype(result = "Result<BatchDone, String>")]
pub struct Batch(pub Vec<Queued>);

/// What a batch came to.
#[derive(Debug, Clone, Copy, Default)]
pub struct BatchDone {
    /// Writes followed.
    pub writes: u64,
}

/// Nothing arrived for a while: time passes for the inference (held
/// writes expire, home writes waiting for a flush are applied) and sinks
/// are flushed.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Tick;

/// The source has ended and every batch is done: settle, send the last
/// events, write the state listing if asked.
#[derive(Message)]
#[rtype(result = "Result<(), String>")]
pub struct Finish;

/// One VM's inference.
pub struct Inferencer {
    pipe: Pipeline,
    disk: Box<dyn DiskView>,
    /// Data drop as last set (from the writes' tags).
    dropping: bool,
}

impl Inferencer {
    /// Follows `disk` with `pipe`.
    pub fn new(pipe: Pipeline, disk: Box<dyn DiskView>) -> Self {
        Inferencer {
            pipe,
            disk,
            dropping: false,
        }
    }
}

impl Actor for Inferencer {
    type Context = Context<Self>;
}

impl Handler<Batch> for Inferencer {
    type Result = Result<BatchDone, String>;

    fn handle(&mut self, batch: Batch, _: &mut Context<Self>) -> Self::Result {
        let mut done = BatchDone::default();
        for q in batch.0 {
            let Queued {
                arrived,
                write,
                drop_data,
                permit,
            } = q;
            if drop_data != self.dropping {
                self.dropping = drop_data;
                self.pipe.set_data_drop(drop_data);
            }
            let pipe = &mut self.pipe;
            self.disk
                .follow(&write, &mut |view| pipe.write(view, &write, arrived))
                .map_err(|e| format!("{e:#}"))?;
            done.writes += 1;
            // Inferred: its bytes are free again.
            drop(permit);
        }
        Ok(done)
    }
}

impl Handler<Tick> for Inferencer {
    type Result = ();

    fn handle(&mut self, _: Tick, _: &mut Context<Self>) {
        let pipe = &mut self.pipe;
        if let Err(e) = self.disk.current(&mut |view| pipe.idle(view, wall_ns())) {
            tracing::warn!("idle inference: {e:#}");
        }
    }
}

impl Handler<Finish> for Inferencer {
    type Result = Result<(), String>;

    fn handle(&mut self, _: Finish, _: &mut Context<Self>) -> Self::Result {
        let pipe = &mut self.pipe;
        self.disk
            .current(&mut |view| pipe.finish(view))
            .map_err(|e| format!("{e:#}"))
    }
}
