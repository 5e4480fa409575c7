//! One supervisor actor per VM. It owns the VM's three actors:
//! - the [`Queuer`] (bounded, double-buffered write queue), and the
//!   [`Throttler`] (data-drop switch), on the supervisor's arbiter;
//! - the [`Inferencer`], alone on its own arbiter (thread), started once
//!   the source has crawled the disk;
//!
//! and the VM's source, on a thread of its own with its own async runtime
//! for capture (an NBD server, a QMP attachment, or a trace reader). The
//! source hands its requests to the queuer through [`forward`], which
//! holds each one's bytes in the VM's [`Budget`] until it is inferred.
//!
//! When the source ends, the queuer drains, the inferencer settles, and the
//! supervisor reports the VM's outcome. A VM that fails is reported and
//! does not take the others down. A partition whose inference panics is
//! rebuilt by the inferencer from the disk as it was before the failing
//! write (re-crawled), and counted as a restart; see [`super::pipeline`].

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use actix::prelude::*;
use anyhow::Result;
use gammaray_core::DiskWrite;
use tokio::sync::{mpsc, oneshot};

use super::inferencer::{DiskView, Inferencer};
use super::pipeline::{Pipeline, VmContext};
use super::queuer::{forward, Budget, Finished, Queuer, SourceEnded, Start};
use super::throttler::Throttler;
use super::VmSpec;

/// Requests in flight between a source's capture and [`forward`].
pub const CAPTURE_REQUESTS: usize = 64;

/// The source has crawled the disk: inference can start.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Ready {
    /// The VM's pipeline (followers, outputs).
    pub pipe: Pipeline,
    /// The disk as inference sees it.
    pub disk: Box<dyn DiskView>,
}

/// What a source gets to work with.
pub struct SourceKit {
    /// The VM's shared context.
    pub ctx: VmContext,
    /// Where captured requests go (dropped when capture ends).
    pub tx: mpsc::Sender<DiskWrite>,
    /// Where the source says it is ready.
    pub ready: Recipient<Ready>,
}

/// One VM's supervisor.
pub struct Supervisor {
    spec: Option<VmSpec>,
    ctx: VmContext,
    done: Option<oneshot::Sender<Result<(), String>>>,
    queuer: Option<Addr<Queuer>>,
    inference: Option<Arbiter>,
    source: Option<std::thread::JoinHandle<Result<()>>>,
}

impl Supervisor {
    /// Supervises `spec`; its outcome is sent on `done`.
    pub fn new(spec: VmSpec, ctx: VmContext, done: oneshot::Sender<Result<(), String>>) -> Self {
        Supervisor {
            spec: Some(spec),
            ctx,
            done: Some(done),
            queuer: None,
            inference: None,
            source: None,
        }
    }
}

impl Actor for Supervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let Some(spec) = self.spec.take() else {
            return;
        };
        let vm = spec.name().to_string();
        let switch = Arc::new(AtomicBool::new(false));
        let throttler = Throttler::new(
            &vm,
            self.ctx.drop_policy,
            switch.clone(),
            self.ctx.stats.clone(),
        )
        .start();
        let budget = Budget::new(self.ctx.queue_bytes);
        let queuer = Queuer::new(
            switch,
            throttler.clone(),
            self.ctx.stats.clone(),
            ctx.address().recipient(),
        )
        .start();
        self.queuer = Some(queuer.clone());
        let vctx = self.ctx.clone();
        let ready = ctx.address().recipient();
        let ended: Recipient<SourceEnded> = ctx.address().recipient();
        let source = std::thread::Builder::new()
            .name(format!("source-{vm}"))
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        ended.do_send(SourceEnded);
                        return Err(e.into());
                    }
                };
                let (tx, rx) = mpsc::channel(CAPTURE_REQUESTS);
                let fwd = rt.spawn(forward(
                    rx,
                    queuer,
                    throttler.recipient(),
                    budget,
                    vctx.stats.clone(),
                ));
                let kit = SourceKit {
                    ctx: vctx,
                    tx,
                    ready,
                };
                let r = match &spec {
                    VmSpec::Serve(s) => super::serve::run(s, kit, &rt),
                    VmSpec::Attach(s) => super::attach::run(s, kit, &rt),
                    VmSpec::Replay(s) => super::replay_source::run(s, kit),
                };
                // Every sender is gone once the source returns: the
                // forwarder ends once it has queued every write. The end
                // goes through the supervisor, after `Ready` (if sent).
                let _ = rt.block_on(fwd);
                ended.do_send(SourceEnded);
                rt.shutdown_timeout(std::time::Duration::from_secs(1));
                r
            });
        match source {
            Ok(h) => self.source = Some(h),
            Err(e) => {
                if let Some(d) = self.done.take() {
                    let _ = d.send(Err(format!("starting the source thread: {e}")));
                }
                ctx.stop();
            }
        }
    }
}

impl Handler<Ready> for Supervisor {
    type Result = ();

    fn handle(&mut self, r: Ready, _: &mut Context<Self>) {
        let arbiter = Arbiter::new();
        let (pipe, disk) = (r.pipe, r.disk);
        let inf =
            Inferencer::start_in_arbiter(&arbiter.handle(), move |_| Inferencer::new(pipe, disk));
        self.inference = Some(arbiter);
        if let Some(q) = &self.queuer {
            q.do_send(Start(inf));
        }
    }
}

impl Handler<SourceEnded> for Supervisor {
    type Result = ();

    fn handle(&mut self, _: SourceEnded, _: &mut Context<Self>) {
        // After any `Ready` of the same source (one mailbox, in order): the
        // queuer gets `Start` before this.
        if let Some(q) = &self.queuer {
            q.do_send(SourceEnded);
        }
    }
}

impl Handler<Finished> for Supervisor {
    type Result = ();

    fn handle(&mut self, Finished(inferred): Finished, ctx: &mut Context<Self>) {
        if let Some(a) = self.inference.take() {
            a.stop();
        }
        if let Err(e) = &inferred {
            // The guest goes on (a served disk stays served); its writes
            // are no longer followed.
            tracing::error!(
                "inference ended with an error: {e}; the source goes on unfollowed until it ends"
            );
        }
        // The source returns once its capture has ended; wait for it off
        // this arbiter.
        let source = self.source.take();
        let done = self.done.take();
        let stats = self.ctx.stats.clone();
        let _ = std::thread::Builder::new()
            .name("vm-outcome".into())
            .spawn(move || {
                let sourced = match source.map(|h| h.join()) {
                    Some(Ok(r)) => r.map_err(|e| format!("{e:#}")),
                    Some(Err(_)) => Err("the source thread panicked".to_string()),
                    None => Ok(()),
                };
                // Every captured write must have been inferred.
                let (captured, followed) = (
                    stats.writes.load(std::sync::atomic::Ordering::Relaxed),
                    stats.inferred.load(std::sync::atomic::Ordering::Relaxed),
                );
                let complete = if followed < captured {
                    Err(format!(
                        "{} of {captured} captured writes were never inferred",
                        captured - followed
                    ))
                } else {
                    Ok(())
                };
                if let Some(d) = done {
                    let _ = d.send(sourced.and(inferred).and(complete));
                }
            });
        ctx.stop();
    }
}
