//! Resource admission: a job's process starts only once the worker's cores
//! it asks for (`resources.cores_mcpu`) are free, as Hail's worker admits
//! (its `cpu_sem`; the driver packs workers by cores). A job's
//! `memory_bytes` is its limit, not a share of a queue. With
//! [`Admission::by_cores_and_memory`] (`serve --admit-by-memory`) memory is
//! queued for too.
//!
//! The queue is first come, first served: two fair tokio semaphores, one
//! counting mcpu and one counting MiB of memory, acquired in that order by
//! every job. A large job at the head of the queue is not overtaken by
//! smaller ones behind it, so it cannot starve. A job that asks for more
//! than the worker has in all is refused at once: it could never start.
//! Dropping a pending [`Admission::request`] leaves the queue; dropping a
//! [`Grant`] frees what it held.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// What the worker has to give out in all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    /// CPU, in mcpu (1000 = one core).
    pub cores_mcpu: u64,
    /// Memory, in bytes.
    pub memory_bytes: u64,
}

impl Capacity {
    /// The machine's: its available parallelism (cgroup limits included) and
    /// its total RAM (1 core and 1 GiB if either cannot be read).
    pub fn of_machine() -> Capacity {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
        let memory_bytes = nix::sys::sysinfo::sysinfo().map_or(1 << 30, |s| s.ram_total());
        Capacity {
            cores_mcpu: cores * 1000,
            memory_bytes,
        }
    }

    /// Plenty for any test job (1024 cores, 1 PiB): admission never waits.
    pub fn unlimited() -> Capacity {
        Capacity {
            cores_mcpu: 1024 * 1000,
            memory_bytes: 1 << 50,
        }
    }
}

/// One job's reservation (see [`Admission::request`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// CPU, in mcpu.
    pub cores_mcpu: u64,
    /// Memory, in bytes.
    pub memory_bytes: u64,
}

/// A request the worker can never satisfy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the job asks for {asked}; the worker has {has} in all")]
pub struct Refused {
    asked: String,
    has: String,
}

/// Held while a job's process runs; dropping it frees the job's share.
#[derive(Debug)]
pub struct Grant {
    _cpu: OwnedSemaphorePermit,
    _memory: OwnedSemaphorePermit,
}

/// The worker's admission queue. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Admission {
    capacity: Capacity,
    /// Whether memory is reserved and waited for too.
    by_memory: bool,
    cpu_mcpu: Arc<Semaphore>,
    memory_mib: Arc<Semaphore>,
}

const MIB: u64 = 1024 * 1024;

/// Memory is counted in whole MiB (a semaphore holds at most `u32::MAX`
/// permits); a request is rounded up.
fn mib_up(bytes: u64) -> u64 {
    bytes.div_ceil(MIB)
}

/// Semaphore permits for `n`, capped where a semaphore's count stops.
fn permits(n: u64) -> u32 {
    u32::try_from(n)
        .unwrap_or(u32::MAX)
        .min(Semaphore::MAX_PERMITS as u32)
}

impl Admission {
    /// A queue giving out `capacity`'s cores (Hail's admission): memory is
    /// neither reserved nor waited for.
    pub fn new(capacity: Capacity) -> Admission {
        Admission {
            by_memory: false,
            ..Admission::by_cores_and_memory(capacity)
        }
    }

    /// A queue giving out `capacity`'s cores and memory: a job also waits
    /// until its `memory_bytes` are free, and one asking for more than the
    /// worker has is refused.
    pub fn by_cores_and_memory(capacity: Capacity) -> Admission {
        Admission {
            by_memory: true,
            capacity,
            cpu_mcpu: Arc::new(Semaphore::new(permits(capacity.cores_mcpu) as usize)),
            memory_mib: Arc::new(Semaphore::new(permits(capacity.memory_bytes / MIB) as usize)),
        }
    }

    /// What the worker gives out in all.
    pub fn capacity(&self) -> Capacity {
        self.capacity
    }

    /// Waits for `request`'s cores and memory, behind every earlier request.
    ///
    /// # Errors
    /// [`Refused`] at once when `request` exceeds the worker's capacity.
    pub async fn request(&self, request: Request) -> Result<Grant, Refused> {
        let request = self.counted(request);
        let cpu = request.cores_mcpu;
        // Fit is decided in bytes; the reservation is rounded up to whole
        // MiB but never past the whole capacity (which is rounded down), so
        // a job asking for exactly what the worker has fits.
        let memory = mib_up(request.memory_bytes).min(self.capacity.memory_bytes / MIB);
        let cpu_fits = cpu <= self.capacity.cores_mcpu && cpu <= u64::from(permits(cpu));
        let memory_fits = request.memory_bytes <= self.capacity.memory_bytes;
        if !cpu_fits || !memory_fits {
            return Err(Refused {
                asked: format!(
                    "{} mcpu and {} bytes of memory",
                    request.cores_mcpu, request.memory_bytes
                ),
                has: format!(
                    "{} mcpu and {} bytes",
                    self.capacity.cores_mcpu, self.capacity.memory_bytes
                ),
            });
        }
        // The semaphores are never closed, so acquiring cannot fail.
        let cpu = self
            .cpu_mcpu
            .clone()
            .acquire_many_owned(permits(cpu))
            .await
            .expect("the cpu semaphore is never closed");
        let memory = self
            .memory_mib
            .clone()
            .acquire_many_owned(permits(memory))
            .await
            .expect("the memory semaphore is never closed");
        Ok(Grant {
            _cpu: cpu,
            _memory: memory,
        })
    }

    /// Takes `request`'s cores and memory now, ahead of any queue (a job
    /// re-attached at start, whose process already runs); `None` when they
    /// are not free (the job then runs without a reservation).
    pub fn reserve(&self, request: Request) -> Option<Grant> {
        let request = self.counted(request);
        let memory = mib_up(request.memory_bytes).min(self.capacity.memory_bytes / MIB);
        let cpu = self
            .cpu_mcpu
            .clone()
            .try_acquire_many_owned(permits(request.cores_mcpu))
            .ok()?;
        let memory = self
            .memory_mib
            .clone()
            .try_acquire_many_owned(permits(memory))
            .ok()?;
        Some(Grant {
            _cpu: cpu,
            _memory: memory,
        })
    }

    /// What of `request` this queue counts: its memory only by memory.
    fn counted(&self, request: Request) -> Request {
        Request {
            memory_bytes: if self.by_memory {
                request.memory_bytes
            } else {
                0
            },
            ..request
        }
    }

    /// Free mcpu and MiB right now (for status and tests).
    pub fn available(&self) -> (u64, u64) {
        (
            self.cpu_mcpu.available_permits() as u64,
            self.memory_mib.available_permits() as u64,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn two_cores() -> Admission {
        Admission::by_cores_and_memory(Capacity {
            cores_mcpu: 2000,
            memory_bytes: 4 << 30,
        })
    }

    fn cores(mcpu: u64) -> Request {
        Request {
            cores_mcpu: mcpu,
            memory_bytes: 0,
        }
    }

    #[tokio::test]
    async fn by_default_memory_is_a_limit_not_a_queue() {
        let admission = Admission::new(Capacity {
            cores_mcpu: 4000,
            memory_bytes: 15 << 30,
        });
        // Four one-core jobs of a standard 4-core worker, each asking for
        // 3.75 GiB plus a little: all four run at once, as on Hail's.
        let job = Request {
            cores_mcpu: 1000,
            memory_bytes: (15 << 30) / 4 + 1,
        };
        let mut grants = Vec::new();
        for _ in 0..4 {
            grants.push(admission.request(job).await.unwrap());
        }
        assert_eq!(admission.available().0, 0);
        // More memory than the machine has is not refused either.
        let huge = Request {
            cores_mcpu: 0,
            memory_bytes: 1 << 40,
        };
        assert!(admission.request(huge).await.is_ok());
    }

    #[tokio::test]
    async fn a_job_waits_until_earlier_jobs_free_their_cores() {
        let admission = two_cores();
        let first = admission.request(cores(1000)).await.unwrap();
        let _second = admission.request(cores(1000)).await.unwrap();
        let third = admission.request(cores(1000));
        tokio::pin!(third);
        assert!(futures::poll!(&mut third).is_pending(), "no core is free");
        drop(first);
        assert!(futures::poll!(&mut third).is_ready(), "a core was freed");
    }

    #[tokio::test]
    async fn the_queue_is_first_come_first_served() {
        let admission = two_cores();
        let held = admission.request(cores(1500)).await.unwrap();
        let big = admission.request(cores(2000));
        tokio::pin!(big);
        assert!(futures::poll!(&mut big).is_pending());
        // 500 mcpu are free, but the big job queued first.
        let small = admission.request(cores(500));
        tokio::pin!(small);
        assert!(futures::poll!(&mut small).is_pending());
        drop(held);
        let big = big.await.unwrap();
        assert!(futures::poll!(&mut small).is_pending());
        drop(big);
        small.await.unwrap();
    }

    #[tokio::test]
    async fn a_job_larger_than_the_worker_is_refused_at_once() {
        let admission = two_cores();
        let err = admission.request(cores(2001)).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "the job asks for 2001 mcpu and 0 bytes of memory; the worker has 2000 mcpu and 4294967296 bytes in all"
        );
        let memory = Request {
            cores_mcpu: 0,
            memory_bytes: (4 << 30) + 1,
        };
        assert!(admission.request(memory).await.is_err());
    }

    #[tokio::test]
    async fn a_job_asking_for_exactly_the_capacity_fits() {
        let odd = Admission::by_cores_and_memory(Capacity {
            cores_mcpu: 1000,
            memory_bytes: 1_000_000_000,
        });
        let all = Request {
            cores_mcpu: 1000,
            memory_bytes: 1_000_000_000,
        };
        let grant = odd.request(all).await.unwrap();
        let more = odd.request(Request {
            cores_mcpu: 0,
            memory_bytes: 1,
        });
        tokio::pin!(more);
        assert!(futures::poll!(&mut more).is_pending(), "all of it is taken");
        drop(grant);
        more.await.unwrap();
    }

    #[tokio::test]
    async fn memory_is_counted_in_whole_mib_and_a_cancelled_wait_frees_nothing() {
        let admission = two_cores();
        let half = Request {
            cores_mcpu: 0,
            memory_bytes: 2 << 30,
        };
        let a = admission.request(half).await.unwrap();
        let b = admission.request(half).await.unwrap();
        {
            let c = admission.request(Request {
                cores_mcpu: 0,
                memory_bytes: 1,
            });
            tokio::pin!(c);
            assert!(futures::poll!(&mut c).is_pending(), "1 byte is 1 MiB");
        }
        drop((a, b));
        assert_eq!(admission.available(), (2000, 4096));
    }
}
