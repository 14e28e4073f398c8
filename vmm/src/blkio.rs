//! Virtual disks whose blocks live in a file on a datastore, reached through a queue.
//!
//! The virtio block device runs on the CPU of the vCPU that notified it; the host's storage
//! drivers and datastores belong to the management CPU. So a datastore-backed device does not
//! touch the disk itself: it parses a request, copies what a write carries out of guest memory and
//! [`IoQueue::submit`]s it; the management CPU takes the requests ([`IoQueue::take_requests`]),
//! executes them on the file ([`serve`]: reads, thin writes, flushes that commit the datastore's
//! metadata and flush the device) and posts completions ([`IoQueue::complete`]); the device, at
//! its next service (the management CPU kicks the VM's CPUs), copies what a read returned into
//! the guest's buffers and completes the request. Nothing of the disk is kept in host memory but
//! the requests in flight, which are bounded: before a device takes a request from its ring it
//! reserves room for the largest one ([`MAX_REQUEST_BYTES`]) in its disk's budget
//! ([`MAX_IN_FLIGHT`] requests, [`MAX_IN_FLIGHT_BYTES`]) and in the host's
//! ([`HOST_IN_FLIGHT_BYTES`], shared by every datastore-backed disk of every VM); without room the
//! request stays on the ring until completions make some. So guests can never tie up more than
//! [`HOST_IN_FLIGHT_BYTES`] of the host's heap.
//!
//! Ordering: requests are executed in the order they were submitted, so a flush covers every
//! write submitted before it (virtio's rule is weaker: only writes completed before the flush).

use alloc::collections::VecDeque;
use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicUsize, Ordering};
use ember_storage::block::BlockDevice;
use ember_storage::datastore::{Datastore, DsError};
use spin::Mutex;

/// Requests in flight per disk, at most.
pub const MAX_IN_FLIGHT: usize = 64;
/// Largest data transfer of one request.
pub const MAX_REQUEST_BYTES: usize = 4 << 20;
/// Bytes in flight per disk, at most.
pub const MAX_IN_FLIGHT_BYTES: usize = 8 << 20;
/// Bytes in flight for all the disks of one VM, at most (so one VM cannot take the host's budget).
pub const VM_IN_FLIGHT_BYTES: usize = 8 << 20;
/// Bytes in flight on the whole host, at most.
pub const HOST_IN_FLIGHT_BYTES: usize = 32 << 20;
/// Data buffers kept for the next requests, host-wide, at most (see [`buffer`]).
const POOLED: usize = 4;
/// Largest buffer kept (so the pool holds at most 8 MiB).
const POOLED_BYTES: usize = 2 << 20;
/// Data buffers of finished requests, for the next ones.
static POOL: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// A data buffer of `len` bytes for a request, one a finished request left ([`recycle`]) where there
/// is one: a 1 MiB request then costs no allocation and no zeroing of its buffer (under emulation
/// zeroing alone is a tenth of the host's work for it). Its bytes are another request's: whoever
/// takes one writes all of it (a read the file's bytes and zeros past its end, a write the
/// guest's). The pool's lock is only tried (a CPU that stopped holding it costs a fresh buffer).
pub fn buffer(len: usize) -> Vec<u8> {
    let mut v = POOL.try_lock().and_then(|mut p| p.pop()).unwrap_or_default();
    v.resize(len, 0);
    v
}

/// Gives a finished request's data buffer back for the next one (kept if the pool has room and it
/// is not too large).
pub fn recycle(v: Vec<u8>) {
    if v.capacity() == 0 || v.capacity() > POOLED_BYTES {
        return;
    }
    if let Some(mut p) = POOL.try_lock() {
        if p.len() < POOLED {
            p.push(v);
        }
    }
}

/// Tries at a queue's lock on the management CPU (a vCPU holds it briefly; one whose CPU stopped
/// holds it for good, and the management CPU must go on).
const LOCK_TRIES: usize = 100_000;

/// Bytes in flight (and reserved) on the whole host.
static HOST_BYTES: AtomicUsize = AtomicUsize::new(0);

/// Bytes in flight (and reserved) on the whole host now.
pub fn host_in_flight_bytes() -> usize {
    HOST_BYTES.load(Ordering::Acquire)
}

/// Takes `n` bytes of the host's budget if they fit.
fn host_take(n: usize) -> bool {
    HOST_BYTES
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| {
            b.checked_add(n).filter(|t| *t <= HOST_IN_FLIGHT_BYTES)
        })
        .is_ok()
}

fn host_give(n: usize) {
    let _ = HOST_BYTES.fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| Some(b.saturating_sub(n)));
}

/// What a request asks of the disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IoOp {
    Read {
        offset: u64,
        len: usize,
    },
    Write {
        offset: u64,
        data: Vec<u8>,
    },
    /// Everything submitted before it on stable storage, with the metadata that finds it.
    Flush,
}

impl IoOp {
    fn bytes(&self) -> usize {
        match self {
            IoOp::Read { len, .. } => *len,
            IoOp::Write { data, .. } => data.len(),
            IoOp::Flush => 0,
        }
    }
}

/// A submitted request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IoRequest {
    pub tag: u64,
    pub op: IoOp,
}

/// A completed request: `ok`, and for a read the bytes read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IoDone {
    pub tag: u64,
    pub ok: bool,
    pub data: Vec<u8>,
}

#[derive(Default)]
struct Inner {
    submitted: VecDeque<IoRequest>,
    done: VecDeque<IoDone>,
    /// Requests and bytes submitted whose completion the device has not taken yet.
    in_flight: usize,
    in_flight_bytes: usize,
    /// Bytes of each request in flight, by tag (to release them when its completion is taken).
    sizes: VecDeque<(u64, usize)>,
    next_tag: u64,
    /// Room for one request is reserved ([`IoQueue::reserve`]).
    reserved: bool,
    /// The VM's run is over ([`IoQueue::discard`]): nothing more is taken.
    closed: bool,
}

/// Called when a request arrives at an empty queue (the appliance wakes the management CPU).
pub type Notify = alloc::boxed::Box<dyn Fn() + Send + Sync>;

/// The queue between one virtio block device and the host's I/O service for its file.
pub struct IoQueue {
    capacity: u64,
    inner: Mutex<Inner>,
    notify: Option<Notify>,
    /// Bytes in flight (and reserved) for all the disks of this queue's VM.
    vm_bytes: Arc<AtomicUsize>,
}

/// Takes `n` bytes of a budget of `max` if they fit.
fn budget_take(b: &AtomicUsize, n: usize, max: usize) -> bool {
    b.fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| v.checked_add(n).filter(|t| *t <= max)).is_ok()
}

fn budget_give(b: &AtomicUsize, n: usize) {
    let _ = b.fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| Some(v.saturating_sub(n)));
}

impl IoQueue {
    /// A queue for a disk of `capacity` bytes.
    pub fn new(capacity: u64) -> IoQueue {
        IoQueue { capacity, inner: Mutex::new(Inner::default()), notify: None, vm_bytes: Arc::default() }
    }

    /// A queue that calls `notify` when a request arrives and none was waiting, sharing the VM
    /// budget `vm_bytes` with the VM's other disks.
    pub fn with_notify(capacity: u64, notify: Notify, vm_bytes: Arc<AtomicUsize>) -> IoQueue {
        IoQueue { capacity, inner: Mutex::new(Inner::default()), notify: Some(notify), vm_bytes }
    }

    /// The lock, tried a bounded number of times (the management CPU's side).
    fn lock_bounded(&self) -> Option<spin::MutexGuard<'_, Inner>> {
        crate::try_lock_bounded(&self.inner, LOCK_TRIES)
    }

    /// Runs `f` with the queue's lock held (the `vm-panic` self-test panics there, to show that
    /// the management CPU's bounded locking outlives a vCPU that died holding it).
    pub fn while_locked<T>(&self, f: impl FnOnce() -> T) -> T {
        let _held = self.inner.lock();
        f()
    }

    /// Bytes given back to the VM's and the host's budgets.
    fn give(&self, n: usize) {
        budget_give(&self.vm_bytes, n);
        host_give(n);
    }

    /// The disk's size in bytes.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Reserves room for one request of up to [`MAX_REQUEST_BYTES`] in the disk's and the host's
    /// budgets, before the device takes it from its ring; false when there is none. A reservation
    /// is used by [`IoQueue::submit`] or given back by [`IoQueue::unreserve`].
    pub fn reserve(&self) -> bool {
        let mut i = self.inner.lock();
        if i.reserved {
            return true;
        }
        let fits = !i.closed
            && i.in_flight < MAX_IN_FLIGHT
            && i.in_flight_bytes.saturating_add(MAX_REQUEST_BYTES) <= MAX_IN_FLIGHT_BYTES;
        if !fits || !budget_take(&self.vm_bytes, MAX_REQUEST_BYTES, VM_IN_FLIGHT_BYTES) {
            return false;
        }
        if !host_take(MAX_REQUEST_BYTES) {
            budget_give(&self.vm_bytes, MAX_REQUEST_BYTES);
            return false;
        }
        i.reserved = true;
        true
    }

    /// Gives back a reservation [`IoQueue::submit`] did not use.
    pub fn unreserve(&self) {
        let mut i = self.inner.lock();
        if core::mem::take(&mut i.reserved) {
            self.give(MAX_REQUEST_BYTES);
        }
    }

    /// Submits a request (the device checked its range against the capacity and its size against
    /// [`MAX_REQUEST_BYTES`]), using the reservation if there is one; returns its tag.
    pub fn submit(&self, op: IoOp) -> u64 {
        let mut i = self.inner.lock();
        let tag = i.next_tag;
        i.next_tag = i.next_tag.wrapping_add(1);
        let bytes = op.bytes();
        let reserved = if core::mem::take(&mut i.reserved) { MAX_REQUEST_BYTES } else { 0 };
        if bytes <= reserved {
            self.give(reserved.saturating_sub(bytes));
        } else {
            // Without a reservation (or larger than the contract allows): counted all the same.
            HOST_BYTES.fetch_add(bytes.saturating_sub(reserved), Ordering::AcqRel);
            self.vm_bytes.fetch_add(bytes.saturating_sub(reserved), Ordering::AcqRel);
        }
        if i.closed {
            // The run is over: nothing more is executed (its room goes back at once).
            drop(i);
            self.give(bytes);
            return tag;
        }
        i.in_flight = i.in_flight.saturating_add(1);
        i.in_flight_bytes = i.in_flight_bytes.saturating_add(bytes);
        i.sizes.push_back((tag, bytes));
        let first = i.submitted.is_empty();
        i.submitted.push_back(IoRequest { tag, op });
        drop(i);
        if let (true, Some(n)) = (first, &self.notify) {
            n();
        }
        tag
    }

    /// Drops every request not executed yet and every completion not taken, and their room (the
    /// VM's run is over).
    pub fn discard(&self) {
        // A queue whose lock a stopped CPU holds keeps its room (until the host restarts).
        let Some(mut i) = self.lock_bounded() else { return };
        i.closed = true;
        i.submitted.clear();
        i.done.clear();
        let bytes = core::mem::take(&mut i.in_flight_bytes)
            .saturating_add(if core::mem::take(&mut i.reserved) { MAX_REQUEST_BYTES } else { 0 });
        i.in_flight = 0;
        i.sizes.clear();
        drop(i);
        self.give(bytes);
    }

    /// The completions posted since the last call (the device side); releases their room.
    pub fn take_done(&self) -> Vec<IoDone> {
        let mut i = self.inner.lock();
        let done: Vec<IoDone> = i.done.drain(..).collect();
        for d in &done {
            if let Some(k) = i.sizes.iter().position(|(t, _)| *t == d.tag) {
                let bytes = i.sizes.remove(k).map_or(0, |(_, b)| b);
                i.in_flight = i.in_flight.saturating_sub(1);
                i.in_flight_bytes = i.in_flight_bytes.saturating_sub(bytes);
                self.give(bytes);
            }
        }
        done
    }

    /// Up to `max` submitted requests, oldest first (the service side); `None` when the device
    /// holds the lock right now (the caller comes back later rather than wait for another CPU).
    pub fn take_requests(&self, max: usize) -> Option<Vec<IoRequest>> {
        let mut i = self.lock_bounded()?;
        let n = max.min(i.submitted.len());
        Some(i.submitted.drain(..n).collect())
    }

    /// Posts a completion (the service side).
    pub fn complete(&self, done: IoDone) {
        if let Some(mut i) = self.lock_bounded() {
            i.done.push_back(done);
        }
    }

    /// Requests waiting for the service (0 when the lock cannot be had).
    pub fn pending(&self) -> usize {
        self.lock_bounded().map_or(0, |i| i.submitted.len())
    }
}

impl Drop for IoQueue {
    fn drop(&mut self) {
        self.discard();
    }
}

/// What one call of [`serve`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Served {
    /// Requests completed (the VM's CPUs are to be kicked when any were).
    pub completed: usize,
    /// Why requests failed, for the host's log.
    pub errors: Vec<String>,
}

/// Executes up to `max` requests of `queue` on file `inode` of datastore `ds` (on `dev`, its
/// partition) and posts their completions; `now`: the time of day, for the file's mtime. A read
/// past the file's end reads zeros; a flush commits the datastore's metadata when it changed
/// (which flushes the device) and flushes the device otherwise. `label` names the disk in errors.
pub fn serve(
    queue: &IoQueue,
    ds: &mut Datastore,
    dev: &mut dyn BlockDevice,
    inode: u64,
    now: u64,
    max: usize,
    label: &str,
) -> Served {
    let mut out = Served::default();
    let Some(requests) = queue.take_requests(max) else { return out };
    for r in requests {
        let result = match &r.op {
            IoOp::Read { offset, len } => {
                let mut buf = buffer(*len);
                ds.read(dev, inode, *offset, &mut buf).map(|n| {
                    // Past the file's end: zeros.
                    if let Some(rest) = buf.get_mut(n..) {
                        rest.fill(0);
                    }
                    buf
                })
            }
            IoOp::Write { offset, data } => ds.write(dev, inode, *offset, data, now).map(|()| Vec::new()),
            IoOp::Flush => {
                let r = if ds.is_dirty() { ds.commit(dev) } else { dev.flush().map_err(DsError::Io) };
                r.map(|()| Vec::new())
            }
        };
        let done = match result {
            Ok(data) => IoDone { tag: r.tag, ok: true, data },
            Err(e) => {
                let what = match &r.op {
                    IoOp::Read { offset, len } => format!("reading {len} bytes at byte {offset}"),
                    IoOp::Write { offset, data } => format!("writing {} bytes at byte {offset}", data.len()),
                    IoOp::Flush => String::from("flushing"),
                };
                out.errors.push(format!("{label}: {what}: {e}"));
                IoDone { tag: r.tag, ok: false, data: Vec::new() }
            }
        };
        queue.complete(done);
        out.completed = out.completed.saturating_add(1);
        if let IoOp::Write { data, .. } = r.op {
            recycle(data);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use ember_storage::block::MemDisk;
    use ember_storage::datastore::FormatOptions;

    fn datastore() -> (Datastore, MemDisk, u64) {
        let mut dev = MemDisk::new(512, 64 << 11); // 64 MiB
        let opts = FormatOptions { label: "datastore1".into(), uuid: [7; 16], block_size: 1 << 20 };
        let mut ds = Datastore::format(&mut dev, &opts).unwrap();
        ds.mkdir("vm", 1).unwrap();
        let id = ds.create("vm/disk.img", 1).unwrap();
        ds.set_len(&mut dev, id, 8 << 30, 1).unwrap(); // 8 GiB, thin
        ds.commit(&mut dev).unwrap();
        (ds, dev, id)
    }

    #[test]
    fn requests_run_in_order_and_a_flush_makes_them_durable() {
        let (mut ds, mut dev, id) = datastore();
        let q = IoQueue::new(8 << 30);
        let w = q.submit(IoOp::Write { offset: 5 << 30, data: vec![7u8; 4096] });
        let r = q.submit(IoOp::Read { offset: (5 << 30) + 4000, len: 512 });
        let z = q.submit(IoOp::Read { offset: 1 << 30, len: 512 });
        let f = q.submit(IoOp::Flush);
        assert!(q.take_done().is_empty());
        let s = serve(&q, &mut ds, &mut dev, id, 2, 2, "d");
        assert_eq!(s.completed, 2, "at most `max` per call");
        let s = serve(&q, &mut ds, &mut dev, id, 2, 10, "d");
        assert_eq!(s, Served { completed: 2, errors: vec![] });
        let done = q.take_done();
        assert_eq!(done.iter().map(|d| d.tag).collect::<Vec<_>>(), [w, r, z, f]);
        assert!(done.iter().all(|d| d.ok));
        assert_eq!(&done[1].data[..96], &[7u8; 96][..]);
        assert_eq!(&done[1].data[96..], &[0u8; 416][..]);
        assert!(done[2].data.iter().all(|&b| b == 0), "never written: zeros");
        // The flush committed: a fresh mount sees the block.
        let again = Datastore::mount(&mut dev).unwrap();
        let mut b = [0u8; 4];
        again.read(&mut dev, id, 5 << 30, &mut b).unwrap();
        assert_eq!(b, [7; 4]);
        let u = again.usage();
        assert_eq!(u.capacity - u.free, 1 << 20, "one 1 MiB block of 8 GiB used");
    }

    #[test]
    fn a_recycled_buffer_never_shows_its_old_bytes() {
        let (mut ds, mut dev, id) = datastore();
        let q = IoQueue::new(8 << 30);
        q.submit(IoOp::Write { offset: 4096, data: vec![5u8; 512] });
        serve(&q, &mut ds, &mut dev, id, 2, 10, "d");
        assert_eq!(q.take_done().len(), 1);
        for _ in 0..POOLED {
            recycle(vec![0xee; 8192]);
        }
        // Written bytes, a hole, and the end of the file (8 GiB) part way through a read.
        let a = q.submit(IoOp::Read { offset: 4096 - 512, len: 4096 });
        let b = q.submit(IoOp::Read { offset: (8 << 30) - 512, len: 4096 });
        serve(&q, &mut ds, &mut dev, id, 2, 10, "d");
        let done = q.take_done();
        assert_eq!(
            done.iter().map(|d| (d.tag, d.ok, d.data.len())).collect::<Vec<_>>(),
            [(a, true, 4096), (b, true, 4096)]
        );
        assert!(done[0].data[..512].iter().all(|&x| x == 0));
        assert!(done[0].data[512..1024].iter().all(|&x| x == 5));
        assert!(done[0].data[1024..].iter().all(|&x| x == 0));
        assert!(done[1].data.iter().all(|&x| x == 0), "a hole, then past the end: zeros");
        // A buffer handed out has the length asked for, whatever it held before.
        recycle(vec![1; 100]);
        assert_eq!(buffer(4096).len(), 4096);
        assert_eq!(buffer(10).len(), 10);
        recycle(vec![0; POOLED_BYTES + 1]); // too large to keep: dropped
    }

    #[test]
    fn the_device_is_held_back_when_much_is_in_flight() {
        let q = IoQueue::new(1 << 30);
        for _ in 0..MAX_IN_FLIGHT - 1 {
            q.submit(IoOp::Flush);
        }
        assert!(q.reserve());
        q.submit(IoOp::Flush);
        assert!(!q.reserve(), "request count");
        let (mut ds, mut dev, id) = datastore();
        serve(&q, &mut ds, &mut dev, id, 1, 1, "d");
        assert!(!q.reserve(), "room comes back when the device takes the completion");
        assert_eq!(q.take_done().len(), 1);
        assert!(q.reserve());
        q.unreserve();
        // Bytes: room for a whole largest request is needed.
        let q = IoQueue::new(1 << 30);
        q.submit(IoOp::Read { offset: 0, len: MAX_IN_FLIGHT_BYTES - MAX_REQUEST_BYTES });
        assert!(q.reserve());
        q.unreserve();
        q.submit(IoOp::Read { offset: 0, len: 512 });
        assert!(!q.reserve(), "bytes");
        q.discard();
        assert!(!q.reserve(), "a discarded queue is closed");
    }

    /// The disks of one VM share its budget; a discarded (closed) queue takes nothing more.
    #[test]
    fn one_vm_cannot_take_more_than_its_budget() {
        let vm = Arc::new(AtomicUsize::new(0));
        let disks: Vec<IoQueue> = (0..4)
            .map(|_| IoQueue::with_notify(1 << 30, alloc::boxed::Box::new(|| {}), vm.clone()))
            .collect();
        let got = disks.iter().filter(|q| q.reserve()).count();
        assert_eq!(got, VM_IN_FLIGHT_BYTES / MAX_REQUEST_BYTES);
        assert_eq!(vm.load(Ordering::SeqCst), VM_IN_FLIGHT_BYTES);
        let other = IoQueue::new(1 << 30);
        assert!(other.reserve(), "another VM still has room");
        other.unreserve();
        disks[0].submit(IoOp::Read { offset: 0, len: 4096 });
        disks[0].discard();
        assert!(!disks[0].reserve(), "closed");
        disks[0].submit(IoOp::Flush);
        assert_eq!(disks[0].pending(), 0, "a closed queue takes nothing");
        drop(disks);
        assert_eq!(vm.load(Ordering::SeqCst), 0, "every byte given back");
    }

    #[test]
    fn a_request_at_an_empty_queue_notifies() {
        let count = alloc::sync::Arc::new(AtomicUsize::new(0));
        let c = count.clone();
        let q = IoQueue::with_notify(
            1 << 20,
            alloc::boxed::Box::new(move || {
                c.fetch_add(1, Ordering::SeqCst);
            }),
            Arc::default(),
        );
        q.submit(IoOp::Flush);
        q.submit(IoOp::Flush);
        assert_eq!(count.load(Ordering::SeqCst), 1, "only the first of a batch");
        q.take_requests(10).unwrap();
        q.submit(IoOp::Flush);
        assert_eq!(count.load(Ordering::SeqCst), 2);
    }

    /// However many disks there are, the host's budget holds: the reservations that succeed never
    /// add up to more than it (other tests may hold part of it meanwhile).
    #[test]
    fn the_host_budget_bounds_every_disk_together() {
        let queues: Vec<IoQueue> =
            (0..2 * HOST_IN_FLIGHT_BYTES / MAX_REQUEST_BYTES).map(|_| IoQueue::new(1 << 30)).collect();
        let got = queues.iter().filter(|q| q.reserve()).count();
        assert!((1..=HOST_IN_FLIGHT_BYTES / MAX_REQUEST_BYTES).contains(&got), "{got}");
        assert!(host_in_flight_bytes() <= HOST_IN_FLIGHT_BYTES);
        // A reservation becomes the request's real size.
        let q = queues.iter().find(|q| q.inner.lock().reserved).unwrap();
        q.submit(IoOp::Read { offset: 0, len: 4096 });
        assert_eq!(q.inner.lock().in_flight_bytes, 4096);
        drop(queues); // every queue gives its room back
    }

    #[test]
    fn failures_are_reported_and_complete_the_request() {
        let (mut ds, mut dev, id) = datastore();
        let q = IoQueue::new(1 << 40);
        // More than the 64 MiB datastore holds.
        q.submit(IoOp::Write { offset: 0, data: vec![1u8; 4096] });
        for k in 1..80u64 {
            q.submit(IoOp::Write { offset: k << 20, data: vec![1u8; 512] });
        }
        let s = serve(&q, &mut ds, &mut dev, id, 3, 100, "VM a: disk 0");
        assert_eq!(s.completed, 80);
        assert!(!s.errors.is_empty());
        assert!(s.errors[0].starts_with("VM a: disk 0: writing 512 bytes at byte "), "{}", s.errors[0]);
        let done = q.take_done();
        assert!(done[0].ok && !done[79].ok);
        // A request for a file that is gone fails too.
        q.submit(IoOp::Read { offset: 0, len: 512 });
        let s = serve(&q, &mut ds, &mut dev, 9999, 3, 100, "d");
        assert_eq!(s.errors.len(), 1);
        assert!(!q.take_done()[0].ok);
    }
}
