
// --- windows as atomics (kernels that use pointer atomics): one binding array (devices with storage-buffer binding
// arrays and non-uniform indexing), so that an arena view may span more
// windows than four bindings ---
struct SvmWindow {
    w: array<atomic<u32>>,
}
const SVM_MAX_WINDOWS: u32 = 32u;
@group(3) @binding(3) var<storage, read_write> svm_pool: binding_array<SvmWindow, 32>;

fn svm_pool_read(t: vec2<u32>) -> u32 {
    if (SVM_SPECULATIVE_READS != 0u && SVM_SEGMENTS == 1u && !SVM_COHERENT) {
        // No masked branch: read, then keep the value only if admitted.
        var y = t.y;
        if (SVM_SPECULATIVE_READS == 2u) {
            y = select(svm_safe_word, t.y, t.x == 0u);
        }
        return select(0u, atomicLoad(&svm_pool[0].w[y]), t.x == 0u);
    }
    if (t.x < SVM_SEGMENTS) { return atomicLoad(&svm_pool[t.x].w[t.y]); }
    if (SVM_COHERENT && t.x == SVM_SEG_COHERENT) { return atomicLoad(&svm_coherent[t.y]); }
    return 0u;
}

fn svm_pool_write(t: vec2<u32>, v: u32) {
    if (t.x < SVM_SEGMENTS) { atomicStore(&svm_pool[t.x].w[t.y], v); }
    else if (SVM_COHERENT && t.x == SVM_SEG_COHERENT) { atomicStore(&svm_coherent[t.y], v); }
}

// Host memory imported for in-place access (Advice::AccessedBy), or a
// placeholder.
@group(3) @binding(7) var<storage, read_write> svm_coherent: array<atomic<u32>>;

// One read-modify-write of word t (returns the old value, and 1 when the op
// ran / the compare-exchange exchanged); a refused t does nothing.
fn svm_pool_rmw(op: u32, t: vec2<u32>, v: u32, cmp: u32) -> vec2<u32> {
    if (t.x < SVM_SEGMENTS) {
        switch (op) {
            case SVM_ATOMIC_ADD: { return vec2<u32>(atomicAdd(&svm_pool[t.x].w[t.y], v), 1u); }
            case SVM_ATOMIC_SUB: { return vec2<u32>(atomicSub(&svm_pool[t.x].w[t.y], v), 1u); }
            case SVM_ATOMIC_MIN: { return vec2<u32>(atomicMin(&svm_pool[t.x].w[t.y], v), 1u); }
            case SVM_ATOMIC_MAX: { return vec2<u32>(atomicMax(&svm_pool[t.x].w[t.y], v), 1u); }
            case SVM_ATOMIC_AND: { return vec2<u32>(atomicAnd(&svm_pool[t.x].w[t.y], v), 1u); }
            case SVM_ATOMIC_OR: { return vec2<u32>(atomicOr(&svm_pool[t.x].w[t.y], v), 1u); }
            case SVM_ATOMIC_XOR: { return vec2<u32>(atomicXor(&svm_pool[t.x].w[t.y], v), 1u); }
            case SVM_ATOMIC_EXCHANGE: { return vec2<u32>(atomicExchange(&svm_pool[t.x].w[t.y], v), 1u); }
            default: { let r = atomicCompareExchangeWeak(&svm_pool[t.x].w[t.y], cmp, v); return vec2<u32>(r.old_value, select(0u, 1u, r.exchanged)); }
        }
    }
    if (SVM_COHERENT && t.x == SVM_SEG_COHERENT) {
        switch (op) {
            case SVM_ATOMIC_ADD: { return vec2<u32>(atomicAdd(&svm_coherent[t.y], v), 1u); }
            case SVM_ATOMIC_SUB: { return vec2<u32>(atomicSub(&svm_coherent[t.y], v), 1u); }
            case SVM_ATOMIC_MIN: { return vec2<u32>(atomicMin(&svm_coherent[t.y], v), 1u); }
            case SVM_ATOMIC_MAX: { return vec2<u32>(atomicMax(&svm_coherent[t.y], v), 1u); }
            case SVM_ATOMIC_AND: { return vec2<u32>(atomicAnd(&svm_coherent[t.y], v), 1u); }
            case SVM_ATOMIC_OR: { return vec2<u32>(atomicOr(&svm_coherent[t.y], v), 1u); }
            case SVM_ATOMIC_XOR: { return vec2<u32>(atomicXor(&svm_coherent[t.y], v), 1u); }
            case SVM_ATOMIC_EXCHANGE: { return vec2<u32>(atomicExchange(&svm_coherent[t.y], v), 1u); }
            default: { let r = atomicCompareExchangeWeak(&svm_coherent[t.y], cmp, v); return vec2<u32>(r.old_value, select(0u, 1u, r.exchanged)); }
        }
    }
    return vec2<u32>(0u, 0u);
}
