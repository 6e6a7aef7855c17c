// svm WGSL prelude: managed pointers translated for the device.
//
// A managed pointer is the 64-bit address the CPU sees, carried as
// vec2<u32>(low, high). Every access subtracts the arena base (64-bit
// arithmetic in u32 pairs) and then takes one of two paths, chosen when the
// runtime specializes the kernel (pipeline-overridable constants below):
//
// * the extent path (SVM_EXTENTS > 0): the launch's mapped pages form at
//   most SVM_EXTENTS extents (runs of pages whose device words are
//   contiguous: always so in sparse mode, where page p lives at word p*1024
//   of the arena view; usually so in the software mode). The offset is
//   compared with each extent (uniform data, no memory lookup) and the word
//   follows by addition. An access no extent admits is refused; the runtime
//   tells why (outside the arena, unallocated, undeclared, read-only,
//   misaligned) from its own page table after the pass.
// * the page-table path (SVM_EXTENTS == 0: too many extents, and every
//   replayable launch): one load of `svm_pt[page]`, checks of ALLOC / VALID
//   / WRITE, the frame it names. In a replayable launch an access to an
//   allocated but unmapped page (or a write to a read-only one) is a *fault*:
//   recorded (deduplicated, bounded) in `svm_log`; the runtime migrates the
//   page and runs the kernel again.
//
// A refused access does nothing (loads yield 0): kernels never touch memory
// outside what the launch mapped. Each invocation keeps its last refused
// access in private variables, without branching, and writes it to
// `svm_log` once, when it ends: the runtime wraps every entry point
// (`svm_shaders::wrap_entry_points`) so that `svm_init()` runs before it and
// `svm_report()` after it. Keeping atomics and branches out of the access path is what makes the
// checks cheap on SIMD hardware (lavapipe executes a branch's body under a
// mask whether or not any lane takes it).
//
// The runtime's bindings are group 3 (svm_shaders::RUNTIME_GROUP); a kernel
// may declare its own storage and uniform bindings in groups 0-2 (bound
// access: the launch binds managed ranges to them directly).

// --- specialization: set by the runtime per device and per launch kind ---
// Pool (software mode) or arena-view (sparse mode) bindings in use, 1..=4.
override SVM_SEGMENTS: u32 = 4u;
// log2 of the pages per segment (segments are a power of two of pages).
override SVM_SEGMENT_PAGE_SHIFT: u32 = 15u;
// Extent slots checked per access; 0 selects the page-table path.
override SVM_EXTENTS: u32 = 0u;
// Non-resident accesses are faults recorded for replay (page-table path).
override SVM_REPLAYABLE: bool = false;
// The coherent window (binding 7) holds host memory the kernel may use.
override SVM_COHERENT: bool = false;
// With one segment, loads may read before knowing whether the access was
// admitted, dropping the value when it was not (no masked branch):
//   0: no, the segment is read under a branch;
//   1: any index may be read (the software pool, the coherent view: every
//      index lands in the buffer, clamped by the bounds checks);
//   2: refused loads read `safe_word` instead, a word of a page the launch
//      mapped, hence bound (a sparse view).
override SVM_SPECULATIVE_READS: u32 = 0u;

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
// Refused on the extent path: the runtime classifies it after the pass.
const SVM_ERR_REFUSED: u32 = 6u;
const SVM_ERR_RECORDS: u32 = 16u;

const SVM_MAX_ARG_WORDS: u32 = 64u;

const SVM_MAX_EXTENTS: u32 = 8u;

// One extent: pages [start, start + len) (byte offsets from the launch's
// base: the arena base plus the extents' 4 GiB bank, `flags` >> 8) live at
// consecutive device words from `dest` (bit 31: in the coherent window
// rather than the pool/arena view); `flags` bit 0: writable.
struct SvmExtent {
    start: u32,
    len: u32,
    dest: u32,
    flags: u32,
}

struct SvmArgs {
    // The arena base; on the extent path plus the extents' bank (bank << 32).
    base: vec2<u32>,
    // Pages of the arena, and of them the ones the page table covers (the
    // allocated high-water mark; the rest are unallocated).
    arena_pages: u32,
    table_pages: u32,
    // Capacity of the fault list, and word offsets of the read and write
    // fault bitmaps (one bit per arena page) in `svm_log`.
    fault_cap: u32,
    fault_read_bitmap: u32,
    fault_write_bitmap: u32,
    // First page of the range `svm_coherent` maps (pages with
    // SVM_PTE_COHERENT: host memory the GPU uses in place).
    coherent_page: u32,
    // A word of the view that may always be read (SVM_SPECULATIVE_READS).
    safe_word: u32,
    extents: array<SvmExtent, 8>,
    words: array<u32, 64>,
}

@group(3) @binding(0) var<storage, read> svm_pt: array<u32>;
@group(3) @binding(1) var<storage, read> svm_args: SvmArgs;
// The launch log, one buffer:
//   [0]                   count of invocations with a refused access, then
//                         SVM_ERR_RECORDS records of 4 words (kind, address
//                         low, address high, 1 for a write);
//   [SVM_LOG_FAULTS]      faults recorded (may exceed fault_cap), then
//                         fault_cap entries page | (write << 31);
//   then the read and write fault bitmaps (offsets in svm_args).
@group(3) @binding(2) var<storage, read_write> svm_log: array<atomic<u32>>;
// Binding 3 on: the windows of the pool / arena view, with
// svm_pool_read() and svm_pool_write(): four plain bindings
// (windows_fixed.wgsl) or one binding array (windows_array.wgsl), appended
// to this file by `svm_shaders::prelude`.
// Binding 7: the coherent window (svm_coherent), declared with the windows.

const SVM_LOG_FAULTS: u32 = 65u;
const SVM_SEG_COHERENT: u32 = 0xfffffffeu;
const SVM_SEG_NONE: u32 = 0xffffffffu;
const SVM_WORD_COHERENT: u32 = 0x80000000u;

// This invocation's last refused access: its address, and its kind with
// SVM_ERR_WRITE set for a store (0: none). Two plain selects per access, no
// dependency on earlier values: keeping the *first* one instead (compare
// with the stored kind) costs lavapipe 15 % of vadd's time.
var<private> svm_err_addr: vec2<u32>;
var<private> svm_err_code: u32;
const SVM_ERR_WRITE: u32 = 0x80000000u;
// The launch constants every access uses, copied once per invocation by
// svm_init(): in private variables the compiler keeps them in registers
// instead of reloading them from a storage buffer after every store (which
// might alias it).
var<private> svm_base: vec2<u32>;
var<private> svm_arena_pages: u32;
var<private> svm_table_pages: u32;
var<private> svm_ext: array<SvmExtent, 8>;
var<private> svm_coherent_page: u32;
var<private> svm_safe_word: u32;

/// Runs once before each invocation (the runtime calls it from the wrapper
/// entry point).
fn svm_init() {
    svm_base = svm_args.base;
    svm_arena_pages = svm_args.arena_pages;
    svm_table_pages = svm_args.table_pages;
    svm_coherent_page = svm_args.coherent_page;
    svm_safe_word = svm_args.safe_word;
    for (var k = 0u; k < SVM_EXTENTS; k++) {
        svm_ext[k] = svm_args.extents[k];
    }
}
// This invocation recorded a GPU fault (replayable launches).
var<private> svm_faulted: bool;

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

// Keep a refused access of this invocation (no branch).
fn svm_refuse(kind: u32, p: vec2<u32>, write: bool, refused: bool) {
    svm_err_addr = select(svm_err_addr, p, refused);
    svm_err_code = select(svm_err_code, kind | select(0u, SVM_ERR_WRITE, write), refused);
}

/// Runs once after each invocation (the runtime calls it from the wrapper
/// entry point): publishes the invocation's refused access, if any.
fn svm_report() {
    if (svm_err_code != 0u) {
        let i = atomicAdd(&svm_log[0], 1u);
        if (i < SVM_ERR_RECORDS) {
            atomicStore(&svm_log[1u + i * 4u], svm_err_code & ~SVM_ERR_WRITE);
            atomicStore(&svm_log[2u + i * 4u], svm_err_addr.x);
            atomicStore(&svm_log[3u + i * 4u], svm_err_addr.y);
            atomicStore(&svm_log[4u + i * 4u], svm_err_code >> 31u);
        }
    }
}

// Byte offset of p from the base (64 bits: x low word, y high word; p below
// the base wraps to a huge offset).
fn svm_offset(p: vec2<u32>) -> vec2<u32> {
    let base = svm_base;
    return vec2<u32>(p.x - base.x, p.y - base.y - select(0u, 1u, p.x < base.x));
}

// Location of device word `w` (pool/arena view, or coherent window with
// SVM_WORD_COHERENT): x = segment (SVM_SEG_NONE when refused), y = word
// inside it. The extent path's: its words are below 2^31 (8 GiB; the
// runtime takes the page table beyond).
fn svm_locate(w: u32, ok: bool) -> vec2<u32> {
    if (SVM_SEGMENTS == 1u && !SVM_COHERENT) {
        // Every admitted word is in segment 0.
        return vec2<u32>(select(SVM_SEG_NONE, 0u, ok), w);
    }
    let in_window = w >= SVM_WORD_COHERENT;
    let shift = SVM_SEGMENT_PAGE_SHIFT + 10u;
    let seg = select(w >> shift, SVM_SEG_COHERENT, in_window);
    let word = select(w & ((1u << shift) - 1u), w & ~SVM_WORD_COHERENT, in_window);
    return vec2<u32>(select(SVM_SEG_NONE, seg, ok), word);
}

// Location of word `wip` of device page `frame` of the pool / arena view,
// or (`in_window`) of page `frame` of the coherent window: x = segment
// (SVM_SEG_NONE when refused), y = word inside it. The page-table path's:
// the segment comes from the frame, so the pool and views may exceed the
// 2^31 words of a flat index (up to the PTE's frame field: 64 GiB).
fn svm_locate_page(frame: u32, wip: u32, in_window: bool, ok: bool) -> vec2<u32> {
    if (SVM_SEGMENTS == 1u && !SVM_COHERENT) {
        // Every admitted page is in segment 0.
        return vec2<u32>(select(SVM_SEG_NONE, 0u, ok), frame * SVM_PAGE_WORDS + wip);
    }
    let shift = SVM_SEGMENT_PAGE_SHIFT;
    let seg = select(frame >> shift, SVM_SEG_COHERENT, in_window);
    let inside = select(frame & ((1u << shift) - 1u), frame, in_window);
    return vec2<u32>(select(SVM_SEG_NONE, seg, ok), inside * SVM_PAGE_WORDS + wip);
}

fn svm_translate_extents(p: vec2<u32>, write: bool) -> vec2<u32> {
    let o = svm_offset(p);
    var w = 0xffffffffu;
    for (var k = 0u; k < SVM_EXTENTS; k++) {
        let e = svm_ext[k];
        let admitted = o.x - e.start < e.len && (!write || (e.flags & 1u) != 0u);
        w = select(w, e.dest + ((o.x - e.start) >> 2u), admitted);
    }
    let ok = o.y == 0u && (o.x & 3u) == 0u && w != 0xffffffffu;
    svm_refuse(SVM_ERR_REFUSED, p, write, !ok);
    return svm_locate(w, ok);
}

// On the page-table path the launch's extents list the byte ranges it may
// write in pages mapped read-only (sub-page blocks), each in its bank
// (flags >> 8, the offset's high word); empty slots admit nothing.
fn svm_in_write_ranges(o: vec2<u32>) -> bool {
    var ok = false;
    for (var k = 0u; k < 8u; k++) {
        let e = svm_args.extents[k];
        ok = ok || ((e.flags & 1u) != 0u && o.y == (e.flags >> 8u) && o.x - e.start < e.len);
    }
    return ok;
}

fn svm_translate_table(p: vec2<u32>, write: bool) -> vec2<u32> {
    let o = svm_offset(p);
    // Page index of a 64-bit offset (offsets below 2^44: page < 2^32).
    let page = (o.y << (32u - SVM_PAGE_SHIFT)) | (o.x >> SVM_PAGE_SHIFT);
    let inside = o.y < (1u << 12u) && page < svm_arena_pages;
    let aligned = (o.x & 3u) == 0u;
    // Pages above the table's high-water mark were never allocated.
    let in_table = inside && page < svm_table_pages;
    let pte = select(0u, svm_pt[select(0u, page, in_table)], in_table);
    let allocated = (pte & SVM_PTE_ALLOC) != 0u;
    var writable = (pte & SVM_PTE_WRITE) != 0u;
    if (write && !writable && (pte & SVM_PTE_VALID) != 0u) {
        // A page shared by several owners' blocks (a slab) is mapped
        // read-only; the bytes the launch may write are listed, byte-exact.
        writable = svm_in_write_ranges(o);
    }
    let mapped = (pte & SVM_PTE_VALID) != 0u && (!write || writable);
    var kind = 0u;
    kind = select(kind, SVM_ERR_READ_ONLY, write && !writable);
    kind = select(kind, SVM_ERR_NOT_DECLARED, (pte & SVM_PTE_VALID) == 0u);
    kind = select(kind, SVM_ERR_UNALLOCATED, !allocated);
    kind = select(kind, SVM_ERR_MISALIGNED, !aligned);
    kind = select(kind, SVM_ERR_OUT_OF_ARENA, !inside);
    if (SVM_REPLAYABLE) {
        // An allocated page not mapped for this access is a fault, not an
        // error (only replayable kernels pay for this branch).
        let fault = inside && aligned && allocated && !mapped;
        if (fault) {
            svm_record_fault(page, write);
            svm_faulted = true;
        }
        kind = select(kind, 0u, fault);
    }
    svm_refuse(kind, p, write, kind != 0u);
    let in_window = (pte & SVM_PTE_COHERENT) != 0u;
    let frame = select(pte >> SVM_PTE_FRAME_SHIFT, page - svm_coherent_page, in_window);
    return svm_locate_page(frame, (o.x & 4095u) >> 2u, in_window, inside && aligned && mapped);
}

fn svm_translate(p: vec2<u32>, write: bool) -> vec2<u32> {
    if (SVM_EXTENTS > 0u) {
        return svm_translate_extents(p, write);
    }
    return svm_translate_table(p, write);
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
// Several words with one check: `p` aligned to `bytes` (8 or 16) keeps them
// in one page, which the check of the first word admits whole (extents and
// PTEs are page-granular). Misaligned: refused, nothing read or written.
// A write checks its last word too: extents of sub-page (slab) blocks are
// byte-exact, and the block past the end may be another owner's.
fn svm_translate_wide(p: vec2<u32>, write: bool, bytes: u32) -> vec2<u32> {
    let t = svm_translate(p, write);
    let aligned = (p.x & (bytes - 1u)) == 0u;
    svm_refuse(SVM_ERR_MISALIGNED, p, write, !aligned);
    var ok = aligned;
    if (write) {
        let last = svm_translate(svm_ptr_add(p, bytes - 4u), true);
        ok = ok && last.x != SVM_SEG_NONE;
    }
    return vec2<u32>(select(SVM_SEG_NONE, t.x, ok), t.y);
}
fn svm_word_after(t: vec2<u32>, k: u32) -> vec2<u32> {
    return vec2<u32>(t.x, t.y + k);
}
/// 16 bytes through a managed pointer aligned to 16, one check.
fn svm_load_vec4u(p: vec2<u32>) -> vec4<u32> {
    let t = svm_translate_wide(p, false, 16u);
    return vec4<u32>(svm_pool_read(t), svm_pool_read(svm_word_after(t, 1u)),
                     svm_pool_read(svm_word_after(t, 2u)), svm_pool_read(svm_word_after(t, 3u)));
}
fn svm_store_vec4u(p: vec2<u32>, v: vec4<u32>) {
    let t = svm_translate_wide(p, true, 16u);
    svm_pool_write(t, v.x);
    svm_pool_write(svm_word_after(t, 1u), v.y);
    svm_pool_write(svm_word_after(t, 2u), v.z);
    svm_pool_write(svm_word_after(t, 3u), v.w);
}
fn svm_load_vec4f(p: vec2<u32>) -> vec4<f32> {
    return bitcast<vec4<f32>>(svm_load_vec4u(p));
}
fn svm_store_vec4f(p: vec2<u32>, v: vec4<f32>) {
    svm_store_vec4u(p, bitcast<vec4<u32>>(v));
}
/// A u64 (low, high words) through a managed pointer aligned to 8, one check.
fn svm_load_u64(p: vec2<u32>) -> vec2<u32> {
    let t = svm_translate_wide(p, false, 8u);
    return vec2<u32>(svm_pool_read(t), svm_pool_read(svm_word_after(t, 1u)));
}
fn svm_store_u64(p: vec2<u32>, v: vec2<u32>) {
    let t = svm_translate_wide(p, true, 8u);
    svm_pool_write(t, v.x);
    svm_pool_write(svm_word_after(t, 1u), v.y);
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
/// True once an access of this invocation was refused or faulted, or one of
/// an invocation already finished: the results of this pass will be
/// discarded (error) or replayed (fault), so loops may stop early.
fn svm_failed() -> bool {
    return svm_err_code != 0u || svm_faulted || atomicLoad(&svm_log[0]) != 0u
        || atomicLoad(&svm_log[SVM_LOG_FAULTS]) != 0u;
}
