// svm WGSL prelude: managed pointers translated through the device page table.
//
// A managed pointer is the 64-bit address the CPU sees, carried as
// vec2<u32>(low, high). Every access:
//   1. subtracts the arena base (64-bit arithmetic in u32 pairs);
//   2. rejects addresses outside the arena, null, misaligned;
//   3. looks the page up in `svm_pt` (one load) and checks ALLOC / VALID /
//      WRITE;
//   4. reads or writes the pool frame the entry names.
// A failed check records an error (kind + address) in `svm_log` and the
// access does nothing (loads yield 0): kernels never touch memory outside
// the pool, and the launch reports the error. In a replayable launch an
// access to an allocated but non-resident page is a *fault* instead: it is
// recorded (deduplicated, bounded) in `svm_log`, yields 0, and the runtime
// migrates the page and runs the kernel again.
//
// Bindings (group 0) are fixed; kernels add none of their own.

// --- PTE layout: must equal svm_pagetable::Pte (checked by a test) ---
const SVM_PTE_VALID: u32 = 1u;
const SVM_PTE_WRITE: u32 = 2u;
const SVM_PTE_ALLOC: u32 = 4u;
const SVM_PTE_COHERENT: u32 = 8u;
const SVM_PTE_FRAME_SHIFT: u32 = 8u;
const SVM_PAGE_SHIFT: u32 = 12u;
const SVM_PAGE_WORDS: u32 = 1024u;

// --- error kinds: must equal svm::KernelFaultKind (checked by a test) ---
const SVM_ERR_OUT_OF_ARENA: u32 = 1u;
const SVM_ERR_UNALLOCATED: u32 = 2u;
const SVM_ERR_NOT_DECLARED: u32 = 3u;
const SVM_ERR_READ_ONLY: u32 = 4u;
const SVM_ERR_MISALIGNED: u32 = 5u;
const SVM_ERR_RECORDS: u32 = 16u;

const SVM_MAX_ARG_WORDS: u32 = 64u;

// --- launch flags: must equal svm_shaders::flags (checked by a test) ---
// Replayable launch: an access to an allocated page that is not mapped (or a
// write to a read-only mapping) is a GPU *fault*: recorded in `svm_log`
// for the runtime to migrate and replay, instead of an error.
const SVM_FLAG_REPLAYABLE: u32 = 1u;

struct SvmArgs {
    base: vec2<u32>,
    arena_bytes: u32,
    frames_per_segment: u32,
    flags: u32,
    // Capacity of the fault list, and word offsets of the read and write
    // fault bitmaps (one bit per arena page) in `svm_log`.
    fault_cap: u32,
    fault_read_bitmap: u32,
    fault_write_bitmap: u32,
    // Byte offset, from the arena base, of the range `svm_coherent` maps
    // (pages with SVM_PTE_COHERENT: host memory the GPU uses in place).
    coherent_base: u32,
    pad0: u32,
    pad1: u32,
    pad2: u32,
    words: array<u32, 64>,
}

@group(0) @binding(0) var<storage, read> svm_pt: array<u32>;
@group(0) @binding(1) var<storage, read> svm_args: SvmArgs;
// The launch log, one buffer:
//   [0]                   error count, then SVM_ERR_RECORDS records of 4 words
//                         (kind, address low, address high, 0);
//   [SVM_LOG_FAULTS]      faults recorded (may exceed fault_cap), then
//                         fault_cap entries page | (write << 31);
//   then the read and write fault bitmaps (offsets in svm_args).
@group(0) @binding(2) var<storage, read_write> svm_log: array<atomic<u32>>;
@group(0) @binding(3) var<storage, read_write> svm_pool0: array<u32>;
@group(0) @binding(4) var<storage, read_write> svm_pool1: array<u32>;
@group(0) @binding(5) var<storage, read_write> svm_pool2: array<u32>;
@group(0) @binding(6) var<storage, read_write> svm_pool3: array<u32>;
// Host memory imported for in-place access (Advice::AccessedBy), or a
// placeholder.
@group(0) @binding(7) var<storage, read_write> svm_coherent: array<u32>;

const SVM_LOG_FAULTS: u32 = 65u;
const SVM_SEG_COHERENT: u32 = 4u;

fn svm_record_fault(page: u32, write: bool) {
    let bitmap = select(svm_args.fault_read_bitmap, svm_args.fault_write_bitmap, write);
    let bit = 1u << (page & 31u);
    let old = atomicOr(&svm_log[bitmap + (page >> 5u)], bit);
    if ((old & bit) == 0u) {
        let i = atomicAdd(&svm_log[SVM_LOG_FAULTS], 1u);
        if (i < svm_args.fault_cap) {
            atomicStore(&svm_log[SVM_LOG_FAULTS + 1u + i], page | select(0u, 0x80000000u, write));
        }
    }
}

fn svm_record_error(kind: u32, p: vec2<u32>) {
    let i = atomicAdd(&svm_log[0], 1u);
    if (i < SVM_ERR_RECORDS) {
        atomicStore(&svm_log[1u + i * 4u], kind);
        atomicStore(&svm_log[2u + i * 4u], p.x);
        atomicStore(&svm_log[3u + i * 4u], p.y);
    }
}

// Location of a word: x = pool segment (or 0xffffffff when the access is
// refused), y = word index inside the segment.
fn svm_translate(p: vec2<u32>, write: bool) -> vec2<u32> {
    let bad = vec2<u32>(0xffffffffu, 0u);
    let base = svm_args.base;
    let borrow = select(0u, 1u, p.x < base.x);
    let off = p.x - base.x;
    let hi = p.y - base.y - borrow;
    if (hi != 0u || off >= svm_args.arena_bytes || (p.y < base.y) || (p.y == base.y && p.x < base.x)) {
        svm_record_error(SVM_ERR_OUT_OF_ARENA, p);
        return bad;
    }
    if ((off & 3u) != 0u) {
        svm_record_error(SVM_ERR_MISALIGNED, p);
        return bad;
    }
    let page = off >> SVM_PAGE_SHIFT;
    let pte = svm_pt[page];
    if ((pte & SVM_PTE_ALLOC) == 0u) {
        svm_record_error(SVM_ERR_UNALLOCATED, p);
        return bad;
    }
    let replayable = (svm_args.flags & SVM_FLAG_REPLAYABLE) != 0u;
    if ((pte & SVM_PTE_VALID) == 0u) {
        if (replayable) {
            svm_record_fault(page, write);
        } else {
            svm_record_error(SVM_ERR_NOT_DECLARED, p);
        }
        return bad;
    }
    if (write && (pte & SVM_PTE_WRITE) == 0u) {
        if (replayable) {
            svm_record_fault(page, true);
        } else {
            svm_record_error(SVM_ERR_READ_ONLY, p);
        }
        return bad;
    }
    if ((pte & SVM_PTE_COHERENT) != 0u) {
        return vec2<u32>(SVM_SEG_COHERENT, (off - svm_args.coherent_base) >> 2u);
    }
    let frame = pte >> SVM_PTE_FRAME_SHIFT;
    let fps = svm_args.frames_per_segment;
    let seg = frame / fps;
    let word = (frame % fps) * SVM_PAGE_WORDS + ((off & 4095u) >> 2u);
    return vec2<u32>(seg, word);
}

fn svm_pool_read(t: vec2<u32>) -> u32 {
    switch (t.x) {
        case 0u: { return svm_pool0[t.y]; }
        case 1u: { return svm_pool1[t.y]; }
        case 2u: { return svm_pool2[t.y]; }
        case 3u: { return svm_pool3[t.y]; }
        case 4u: { return svm_coherent[t.y]; }
        default: { return 0u; }
    }
}

fn svm_pool_write(t: vec2<u32>, v: u32) {
    switch (t.x) {
        case 0u: { svm_pool0[t.y] = v; }
        case 1u: { svm_pool1[t.y] = v; }
        case 2u: { svm_pool2[t.y] = v; }
        case 3u: { svm_pool3[t.y] = v; }
        case 4u: { svm_coherent[t.y] = v; }
        default: { }
    }
}

// --- the kernel-facing API ---

/// Load a u32 through a managed pointer (0 and an error if refused).
fn svm_load_u32(p: vec2<u32>) -> u32 {
    return svm_pool_read(svm_translate(p, false));
}
/// Store a u32 through a managed pointer (nothing and an error if refused).
fn svm_store_u32(p: vec2<u32>, v: u32) {
    svm_pool_write(svm_translate(p, true), v);
}
fn svm_load_f32(p: vec2<u32>) -> f32 {
    return bitcast<f32>(svm_load_u32(p));
}
fn svm_store_f32(p: vec2<u32>, v: f32) {
    svm_store_u32(p, bitcast<u32>(v));
}
fn svm_load_i32(p: vec2<u32>) -> i32 {
    return bitcast<i32>(svm_load_u32(p));
}
fn svm_store_i32(p: vec2<u32>, v: i32) {
    svm_store_u32(p, bitcast<u32>(v));
}
/// p + bytes, with carry into the high word.
fn svm_ptr_add(p: vec2<u32>, bytes: u32) -> vec2<u32> {
    let lo = p.x + bytes;
    return vec2<u32>(lo, p.y + select(0u, 1u, lo < p.x));
}
/// &p[i] for elements of `size` bytes.
fn svm_index(p: vec2<u32>, i: u32, size: u32) -> vec2<u32> {
    return svm_ptr_add(p, i * size);
}
fn svm_is_null(p: vec2<u32>) -> bool {
    return p.x == 0u && p.y == 0u;
}
/// Load a managed pointer stored in managed memory (8 bytes, little endian).
fn svm_load_ptr(p: vec2<u32>) -> vec2<u32> {
    return vec2<u32>(svm_load_u32(p), svm_load_u32(svm_ptr_add(p, 4u)));
}
fn svm_store_ptr(p: vec2<u32>, v: vec2<u32>) {
    svm_store_u32(p, v.x);
    svm_store_u32(svm_ptr_add(p, 4u), v.y);
}
/// Launch argument words, as pushed by the host (`svm::Arg`).
fn svm_arg_u32(i: u32) -> u32 {
    return svm_args.words[i];
}
fn svm_arg_f32(i: u32) -> f32 {
    return bitcast<f32>(svm_args.words[i]);
}
/// A pointer argument occupies words i (low) and i + 1 (high).
fn svm_arg_ptr(i: u32) -> vec2<u32> {
    return vec2<u32>(svm_args.words[i], svm_args.words[i + 1u]);
}
/// True once any access of this pass was refused or faulted: the results of
/// this pass will be discarded (error) or replayed (fault), so loops may stop
/// early.
fn svm_failed() -> bool {
    return atomicLoad(&svm_log[0]) != 0u || atomicLoad(&svm_log[SVM_LOG_FAULTS]) != 0u;
}
