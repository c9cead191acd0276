//! What the data plane needs from `bpf(2)` that aya 0.14 lacks (batch
//! updates and lookups), and the data plane's error type, shared by the
//! loader (`datapath.rs`) and the list tables (`list_table.rs`).
use std::os::fd::{AsRawFd, OwnedFd};

use aya::{maps::MapError, programs::ProgramError};

/// `bpf(2)` commands, from the kernel's `enum bpf_cmd`.
pub(crate) const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error(
        "this rampart binary was built without its XDP program (AYA_BUILD_SKIP was set); rebuild it with `cargo xtask build`"
    )]
    NoObject,
    #[error("loading the XDP program failed: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("XDP program: {0}")]
    Program(#[from] ProgramError),
    #[error("the kernel's verifier rejected the XDP program ({hint}): {source}")]
    Rejected {
        hint: String,
        #[source]
        source: ProgramError,
    },
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: MapError,
    },
    #[error("the XDP object has no {kind} {name}")]
    MissingFromObject { kind: &'static str, name: String },
    #[error("map {name} is not {expected}")]
    WrongMapType {
        name: &'static str,
        expected: &'static str,
    },
    #[error("{what}: {source}")]
    Os {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{table} is full: it holds at most {capacity} entries (raise its capacity in the \
         [capacity] settings and restart with --replace-maps)"
    )]
    TableFull { table: &'static str, capacity: u64 },
    #[error("{table}: {slots} slots is not a power-of-two number of {ways}-slot buckets")]
    TableShape {
        table: &'static str,
        slots: u32,
        ways: u32,
    },
    #[error(
        "a list can hold at most {max} distinct prefix lengths per family, this change would \
         make it {wanted}"
    )]
    TooManyPrefixLengths { max: usize, wanted: usize },
    #[error("at most {max} rate-limit policies are supported, got {got}")]
    TooManyPolicies { max: u32, got: usize },
    #[error("a batch update thread panicked")]
    BatchWorker,
    #[error("prefix is neither IPv4 nor IPv6")]
    NotAnAddressFamily,
}

impl DatapathError {
    /// A failed system call, with what it was for.
    pub(crate) fn os(what: impl Into<String>, source: std::io::Error) -> Self {
        Self::Os {
            what: what.into(),
            source,
        }
    }
}

pub(crate) fn map_err(name: &'static str) -> impl FnOnce(MapError) -> DatapathError {
    move |source| DatapathError::Map { name, source }
}

/// The batch member of `union bpf_attr`: aya 0.14 has no batch API.
#[repr(C)]
pub(crate) struct BatchAttr {
    pub(crate) in_batch: u64,
    pub(crate) out_batch: u64,
    keys: u64,
    values: u64,
    pub(crate) count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

impl BatchAttr {
    pub(crate) fn new(fd: &OwnedFd, keys: u64, values: u64, count: usize) -> Self {
        Self {
            in_batch: 0,
            out_batch: 0,
            keys,
            values,
            count: count as u32,
            map_fd: fd.as_raw_fd() as u32,
            elem_flags: 0,
            flags: 0,
        }
    }
}

/// Runs one `bpf(2)` command on `attr`.
///
/// # Safety
/// `attr` must be the member of `union bpf_attr` that `cmd` reads, and its
/// pointers must reference memory of the sizes the command expects.
pub(crate) unsafe fn bpf_cmd<A>(cmd: libc::c_long, attr: &mut A) -> std::io::Result<()> {
    // SAFETY: upheld by the caller.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut A, std::mem::size_of::<A>()) };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Map updates in batches of 64k with `BPF_MAP_UPDATE_BATCH` (Linux 5.6),
/// from up to [`UPDATE_THREADS`] threads: a write mostly waits on cache
/// misses in a table far larger than the cache, and the kernel takes no
/// table-wide lock, so a large batch goes faster on two CPUs.
pub(crate) fn batch_update<K: aya::Pod + Sync, V: aya::Pod + Sync>(
    fd: &OwnedFd,
    keys: &[K],
    values: &[V],
) -> Result<(), DatapathError> {
    if keys.is_empty() {
        return Ok(());
    }
    // Asked once: the answer reads cgroup files, which would cost more than
    // a small update itself.
    static THREADS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let threads = *THREADS.get_or_init(|| {
        std::thread::available_parallelism()
            .map_or(1, usize::from)
            .clamp(1, UPDATE_THREADS)
    });
    let share = keys.len().div_ceil(threads).max(BATCH_CHUNK);
    if keys.len() <= share {
        return batch_update_serial(fd, keys, values);
    }
    std::thread::scope(|s| {
        let workers: Vec<_> = keys
            .chunks(share)
            .zip(values.chunks(share))
            .map(|(k, v)| s.spawn(move || batch_update_serial(fd, k, v)))
            .collect();
        // The scope joins every worker; the first error is reported.
        workers
            .into_iter()
            .try_for_each(|w| w.join().unwrap_or_else(|_| Err(DatapathError::BatchWorker)))
    })
}

const UPDATE_THREADS: usize = 4;

fn batch_update_serial<K: aya::Pod, V: aya::Pod>(
    fd: &OwnedFd,
    keys: &[K],
    values: &[V],
) -> Result<(), DatapathError> {
    for (kc, vc) in keys.chunks(BATCH_CHUNK).zip(values.chunks(BATCH_CHUNK)) {
        let mut attr = BatchAttr::new(fd, kc.as_ptr() as u64, vc.as_ptr() as u64, kc.len());
        // SAFETY: attr points to valid key and value arrays of `count`
        // elements each, of the map's key and value types, alive for the call.
        if let Err(e) = unsafe { bpf_cmd(BPF_MAP_UPDATE_BATCH, &mut attr) } {
            return Err(DatapathError::os(
                format!(
                    "batch update failed after {} of {} entries",
                    attr.count,
                    kc.len()
                ),
                e,
            ));
        }
    }
    Ok(())
}

const BATCH_CHUNK: usize = 1 << 16;

/// Reads every value of an array map with `BPF_MAP_LOOKUP_BATCH`, 64k at a
/// time, handing each to `f` with its index.
pub(crate) fn read_array<V: aya::Pod + Default>(
    fd: &OwnedFd,
    len: u32,
    mut f: impl FnMut(u32, &V),
) -> Result<(), DatapathError> {
    let chunk = BATCH_CHUNK.min(len as usize).max(1);
    let mut keys = vec![0u32; chunk];
    let mut values = vec![V::default(); chunk];
    let mut next: Option<u32> = None;
    loop {
        let mut in_batch = next.unwrap_or(0);
        let mut out_batch = 0u32;
        let mut attr = BatchAttr::new(
            fd,
            keys.as_mut_ptr() as u64,
            values.as_mut_ptr() as u64,
            chunk,
        );
        if next.is_some() {
            attr.in_batch = (&raw mut in_batch) as u64;
        }
        attr.out_batch = (&raw mut out_batch) as u64;
        // SAFETY: keys and values have room for `count` indexes and values
        // of the map's types; in_batch and out_batch hold one index each.
        let r = unsafe { bpf_cmd(BPF_MAP_LOOKUP_BATCH, &mut attr) };
        // The end of the array is reported as ENOENT with the entries read.
        let end = match r {
            Ok(()) => false,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => true,
            Err(e) => {
                return Err(DatapathError::os("reading a table back failed", e));
            }
        };
        let n = (attr.count as usize).min(chunk);
        for (k, v) in keys[..n].iter().zip(&values[..n]) {
            f(*k, v);
        }
        if end || n == 0 {
            return Ok(());
        }
        next = Some(out_batch);
    }
}
