//! The few bpf(2) commands aya 0.14 does not expose: opening a pinned
//! object, a link's target, lookup-and-delete and batched lookups of a
//! hash map. Each is one `union bpf_attr` layout from the kernel's uapi.
use std::{
    ffi::CString,
    io,
    mem::{MaybeUninit, size_of},
    os::{
        fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::Path,
};

use aya::Pod;

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_MAP_LOOKUP_AND_DELETE_ELEM: libc::c_long = 21;
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_LINK_GET_FD_BY_ID: libc::c_long = 30;

/// `BPF_LINK_TYPE_TCX`.
pub(crate) const LINK_TYPE_TCX: u32 = 11;

/// `union bpf_attr` is 120+ bytes in current kernels; the kernel reads only
/// the command's own prefix and requires the rest to be zero.
#[repr(C, align(8))]
struct Attr([u8; 128]);

impl Attr {
    fn new<T: Copy>(prefix: T) -> Self {
        assert!(size_of::<T>() <= 128);
        let mut attr = Attr([0; 128]);
        // SAFETY: T fits in the buffer and is plain data.
        unsafe { std::ptr::write_unaligned(attr.0.as_mut_ptr().cast(), prefix) };
        attr
    }

    fn read<T: Copy>(&self) -> T {
        // SAFETY: as above; the kernel wrote back a T-shaped prefix.
        unsafe { std::ptr::read_unaligned(self.0.as_ptr().cast()) }
    }
}

fn bpf(cmd: libc::c_long, attr: &mut Attr) -> io::Result<libc::c_long> {
    // SAFETY: attr is a valid, zero-padded bpf_attr of the right size.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut Attr,
            size_of::<Attr>() as libc::c_uint,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// `BPF_OBJ_GET`: a new fd for the object pinned at `path`.
pub(crate) fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct ObjAttr {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
    }
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut attr = Attr::new(ObjAttr {
        pathname: c.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
    });
    let fd = bpf(BPF_OBJ_GET, &mut attr)?;
    // SAFETY: the kernel returned a new fd we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// What `BPF_OBJ_GET_INFO_BY_FD` says about a link: its type and, for a
/// TCX link, the interface it is on (0 once the interface is gone).
#[derive(Clone, Copy, Debug)]
pub(crate) struct LinkTarget {
    pub link_type: u32,
    pub id: u32,
    /// The program the link runs.
    pub prog_id: u32,
    pub ifindex: u32,
}

pub(crate) fn link_target(fd: BorrowedFd<'_>) -> io::Result<LinkTarget> {
    // struct bpf_link_info: type, id, prog_id, then a union aligned to 8
    // whose `tcx` member starts with ifindex.
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Info {
        link_type: u32,
        id: u32,
        prog_id: u32,
        _pad: u32,
        ifindex: u32,
        attach_type: u32,
        _rest: [u64; 6],
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct InfoAttr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    let mut info = MaybeUninit::<Info>::zeroed();
    let mut attr = Attr::new(InfoAttr {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: size_of::<Info>() as u32,
        info: info.as_mut_ptr() as u64,
    });
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    // SAFETY: zero-initialised plain data, partly filled by the kernel.
    let info = unsafe { info.assume_init() };
    Ok(LinkTarget {
        link_type: info.link_type,
        id: info.id,
        prog_id: info.prog_id,
        ifindex: info.ifindex,
    })
}

/// Whether the link with this id still exists (`BPF_LINK_GET_FD_BY_ID`).
/// The kernel releases an unpinned link from a workqueue, so for a moment
/// after its last pin is removed it is still attached.
pub(crate) fn link_exists(id: u32) -> io::Result<bool> {
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct IdAttr {
        link_id: u32,
        next_id: u32,
        open_flags: u32,
    }
    let mut attr = Attr::new(IdAttr {
        link_id: id,
        next_id: 0,
        open_flags: 0,
    });
    match bpf(BPF_LINK_GET_FD_BY_ID, &mut attr) {
        Ok(fd) => {
            // SAFETY: the kernel returned a new fd we now own; dropped at once.
            drop(unsafe { OwnedFd::from_raw_fd(fd as i32) });
            Ok(true)
        }
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

#[repr(C)]
#[derive(Clone, Copy)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// `BPF_MAP_LOOKUP_AND_DELETE_ELEM`: the entry's value at the moment it
/// was removed, so nothing counted into it before removal is lost.
pub(crate) fn lookup_and_delete<K: Pod, V: Pod>(
    map: BorrowedFd<'_>,
    key: &K,
) -> io::Result<Option<V>> {
    elem_op(BPF_MAP_LOOKUP_AND_DELETE_ELEM, map, key)
}

fn elem_op<K: Pod, V: Pod>(
    cmd: libc::c_long,
    map: BorrowedFd<'_>,
    key: &K,
) -> io::Result<Option<V>> {
    let mut value = MaybeUninit::<V>::zeroed();
    let mut attr = Attr::new(ElemAttr {
        map_fd: map.as_raw_fd() as u32,
        _pad: 0,
        key: key as *const K as u64,
        value: value.as_mut_ptr() as u64,
        flags: 0,
    });
    match bpf(cmd, &mut attr) {
        // SAFETY: V is Pod and the kernel filled it.
        Ok(_) => Ok(Some(unsafe { value.assume_init() })),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Whether a batch call failed only because this kernel (before 5.6) or
/// map type has no batch operations: read entry by entry instead. The
/// kernel refuses before copying anything, so nothing is read twice.
pub(crate) fn batch_unsupported(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOTSUP | 524))
}

/// Every entry of a hash map, `chunk` entries per `BPF_MAP_LOOKUP_BATCH`
/// call instead of two syscalls per entry. Entries inserted or deleted
/// while reading may or may not appear, as with key-by-key iteration.
pub(crate) fn lookup_batch<K: Pod, V: Pod>(
    map: BorrowedFd<'_>,
    chunk: u32,
    mut each: impl FnMut(&K, &V),
) -> io::Result<()> {
    lookup_batch_per_cpu(map, chunk, 1, |k, v: &[V]| {
        each(k, &v[0]);
        true
    })
}

/// `bpf_attr` of the batch map operations.
#[repr(C)]
#[derive(Clone, Copy)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// One `BPF_MAP_LOOKUP_BATCH` call from bucket `from` (the start when
/// `None`) into `keys` and `values` (`values.len() / keys.len()` a key, one
/// per CPU): how many entries the kernel copied (it says so also on
/// ENOENT), and the bucket to go on from, `None` at the end.
fn batch_call<K: Pod, V: Pod>(
    map: BorrowedFd<'_>,
    keys: &mut [MaybeUninit<K>],
    values: &mut [V],
    from: Option<u32>,
) -> (usize, io::Result<Option<u32>>) {
    // The hash map's batch token is a bucket index (u32); 8 bytes to spare.
    let mut token_in = u64::from(from.unwrap_or(0));
    let mut token_out = 0u64;
    let mut attr = Attr::new(BatchAttr {
        in_batch: if from.is_none() {
            0
        } else {
            &raw mut token_in as u64
        },
        out_batch: &raw mut token_out as u64,
        keys: keys.as_mut_ptr() as u64,
        values: values.as_mut_ptr() as u64,
        count: keys.len() as u32,
        map_fd: map.as_raw_fd() as u32,
        elem_flags: 0,
        flags: 0,
    });
    let result = bpf(BPF_MAP_LOOKUP_BATCH, &mut attr);
    let done = (attr.read::<BatchAttr>().count as usize).min(keys.len());
    let next = match result {
        Ok(_) => Ok(Some(token_out as u32)),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    };
    (done, next)
}

/// `chunk` zeroed keys and `chunk * cpus` zeroed values for [`batch_call`].
fn batch_buffers<K: Pod, V: Pod>(chunk: usize, cpus: usize) -> (Vec<MaybeUninit<K>>, Vec<V>) {
    let keys = (0..chunk).map(|_| MaybeUninit::zeroed()).collect();
    // SAFETY: V is Pod: every byte pattern, zeroes included, is a value.
    let values = (0..chunk * cpus)
        .map(|_| unsafe { std::mem::zeroed() })
        .collect();
    (keys, values)
}

/// One `BPF_MAP_LOOKUP_BATCH` call of a hash map from bucket `from` (the
/// start when `None`): at most `chunk` entries handed to `each`, and the
/// bucket to go on from, `None` at the end. The token is a bucket index:
/// entries added or deleted meanwhile never make a page repeat or skip
/// the others.
pub(crate) fn lookup_batch_page<K: Pod, V: Pod>(
    map: BorrowedFd<'_>,
    chunk: u32,
    from: Option<u32>,
    mut each: impl FnMut(&K, &V),
) -> io::Result<Option<u32>> {
    let (mut keys, mut values) = batch_buffers::<K, V>(chunk.max(1) as usize, 1);
    let (done, next) = batch_call(map, &mut keys, &mut values, from);
    for i in 0..done {
        // SAFETY: the kernel filled the first `done` keys.
        each(unsafe { keys[i].assume_init_ref() }, &values[i]);
    }
    next
}

/// The same for a per-CPU map (array or hash) on `cpus` possible CPUs:
/// each entry's values, one per CPU, until `each` returns false (an array
/// read up to its last used index). `V`'s size must be a multiple of 8,
/// the kernel's per-CPU value stride.
pub(crate) fn lookup_batch_per_cpu<K: Pod, V: Pod>(
    map: BorrowedFd<'_>,
    chunk: u32,
    cpus: usize,
    mut each: impl FnMut(&K, &[V]) -> bool,
) -> io::Result<()> {
    assert!(
        cpus == 1 || size_of::<V>().is_multiple_of(8),
        "per-CPU values are 8-byte strided"
    );
    let cpus = cpus.max(1);
    let (mut keys, mut values) = batch_buffers::<K, V>(chunk.max(1) as usize, cpus);
    let mut from = None;
    loop {
        let (done, next) = batch_call(map, &mut keys, &mut values, from);
        for i in 0..done {
            // SAFETY: the kernel filled the first `done` keys.
            let key = unsafe { keys[i].assume_init_ref() };
            if !each(key, &values[i * cpus..(i + 1) * cpus]) {
                return Ok(());
            }
        }
        match next? {
            Some(bucket) => from = Some(bucket),
            None => return Ok(()),
        }
    }
}
