//! Client shards: a few threads, each running one single-threaded tokio runtime that owns the clients given to it.
//! A client never moves between threads, so its str0m state, socket and timers stay on one core's caches, and there
//! is no work stealing or cross-thread wake-up per datagram.

use std::thread::JoinHandle;

use anyhow::{Context, Result};
use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// The shard threads and their runtimes; dropping it stops them (cancelling clients still running).
pub struct Shards {
    handles: Vec<Handle>,
    stops: Vec<oneshot::Sender<()>>,
    threads: Vec<JoinHandle<()>>,
}

impl Shards {
    /// Starts `n` (at least 1) shard threads named `client-shard-I`.
    pub fn start(n: usize) -> Result<Shards> {
        let mut shards = Shards {
            handles: Vec::new(),
            stops: Vec::new(),
            threads: Vec::new(),
        };
        for i in 0..n.max(1) {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("shard runtime")?;
            let (stop_tx, stop_rx) = oneshot::channel::<()>();
            shards.handles.push(rt.handle().clone());
            shards.stops.push(stop_tx);
            let thread = std::thread::Builder::new()
                .name(format!("client-shard-{i}"))
                .spawn(move || {
                    // Driving the runtime runs the tasks spawned on it through its handle.
                    rt.block_on(async {
                        let _ = stop_rx.await;
                    });
                })
                .context("shard thread")?;
            shards.threads.push(thread);
        }
        Ok(shards)
    }

    /// Runs `future` on shard `i % len`; its output can be awaited from any runtime.
    pub fn spawn<F>(&self, i: usize, future: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handles[i % self.handles.len()].spawn(future)
    }
}

impl Drop for Shards {
    fn drop(&mut self) {
        for stop in self.stops.drain(..) {
            let _ = stop.send(());
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
