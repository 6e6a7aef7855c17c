
// --- windows as atomics (kernels that use pointer atomics): four plain bindings (any device) ---
@group(3) @binding(3) var<storage, read_write> svm_pool0: array<atomic<u32>>;
@group(3) @binding(4) var<storage, read_write> svm_pool1: array<atomic<u32>>;
@group(3) @binding(5) var<storage, read_write> svm_pool2: array<atomic<u32>>;
@group(3) @binding(6) var<storage, read_write> svm_pool3: array<atomic<u32>>;

// Segments a runtime does not use are never read: the specialization
// constants fold these branches away.
fn svm_pool_read(t: vec2<u32>) -> u32 {
    if (SVM_SPECULATIVE_READS != 0u && SVM_SEGMENTS == 1u && !SVM_COHERENT) {
        // No masked branch: read, then keep the value only if admitted.
        var y = t.y;
        if (SVM_SPECULATIVE_READS == 2u) {
            y = select(svm_safe_word, t.y, t.x == 0u);
        }
        return select(0u, atomicLoad(&svm_pool0[y]), t.x == 0u);
    }
    if (t.x == 0u) { return atomicLoad(&svm_pool0[t.y]); }
    if (SVM_SEGMENTS > 1u && t.x == 1u) { return atomicLoad(&svm_pool1[t.y]); }
    if (SVM_SEGMENTS > 2u && t.x == 2u) { return atomicLoad(&svm_pool2[t.y]); }
    if (SVM_SEGMENTS > 3u && t.x == 3u) { return atomicLoad(&svm_pool3[t.y]); }
    if (SVM_COHERENT && t.x == SVM_SEG_COHERENT) { return atomicLoad(&svm_coherent[t.y]); }
    return 0u;
}

fn svm_pool_write(t: vec2<u32>, v: u32) {
    if (t.x == 0u) { atomicStore(&svm_pool0[t.y], v); }
    else if (SVM_SEGMENTS > 1u && t.x == 1u) { atomicStore(&svm_pool1[t.y], v); }
    else if (SVM_SEGMENTS > 2u && t.x == 2u) { atomicStore(&svm_pool2[t.y], v); }
    else if (SVM_SEGMENTS > 3u && t.x == 3u) { atomicStore(&svm_pool3[t.y], v); }
    else if (SVM_COHERENT && t.x == SVM_SEG_COHERENT) { atomicStore(&svm_coherent[t.y], v); }
}

// Host memory imported for in-place access (Advice::AccessedBy), or a
// placeholder.
@group(3) @binding(7) var<storage, read_write> svm_coherent: array<atomic<u32>>;

// One read-modify-write of word t (returns the old value, and 1 when the op
// ran / the compare-exchange exchanged); a refused t does nothing.
fn svm_pool_rmw(op: u32, t: vec2<u32>, v: u32, cmp: u32) -> vec2<u32> {
    if (t.x == 0u) {
        switch (op) {
            case SVM_ATOMIC_ADD: { return vec2<u32>(atomicAdd(&svm_pool0[t.y], v), 1u); }
            case SVM_ATOMIC_SUB: { return vec2<u32>(atomicSub(&svm_pool0[t.y], v), 1u); }
            case SVM_ATOMIC_MIN: { return vec2<u32>(atomicMin(&svm_pool0[t.y], v), 1u); }
            case SVM_ATOMIC_MAX: { return vec2<u32>(atomicMax(&svm_pool0[t.y], v), 1u); }
            case SVM_ATOMIC_AND: { return vec2<u32>(atomicAnd(&svm_pool0[t.y], v), 1u); }
            case SVM_ATOMIC_OR: { return vec2<u32>(atomicOr(&svm_pool0[t.y], v), 1u); }
            case SVM_ATOMIC_XOR: { return vec2<u32>(atomicXor(&svm_pool0[t.y], v), 1u); }
            case SVM_ATOMIC_EXCHANGE: { return vec2<u32>(atomicExchange(&svm_pool0[t.y], v), 1u); }
            default: { let r = atomicCompareExchangeWeak(&svm_pool0[t.y], cmp, v); return vec2<u32>(r.old_value, select(0u, 1u, r.exchanged)); }
        }
    }
    if (SVM_SEGMENTS > 1u && t.x == 1u) {
        switch (op) {
            case SVM_ATOMIC_ADD: { return vec2<u32>(atomicAdd(&svm_pool1[t.y], v), 1u); }
            case SVM_ATOMIC_SUB: { return vec2<u32>(atomicSub(&svm_pool1[t.y], v), 1u); }
            case SVM_ATOMIC_MIN: { return vec2<u32>(atomicMin(&svm_pool1[t.y], v), 1u); }
            case SVM_ATOMIC_MAX: { return vec2<u32>(atomicMax(&svm_pool1[t.y], v), 1u); }
            case SVM_ATOMIC_AND: { return vec2<u32>(atomicAnd(&svm_pool1[t.y], v), 1u); }
            case SVM_ATOMIC_OR: { return vec2<u32>(atomicOr(&svm_pool1[t.y], v), 1u); }
            case SVM_ATOMIC_XOR: { return vec2<u32>(atomicXor(&svm_pool1[t.y], v), 1u); }
            case SVM_ATOMIC_EXCHANGE: { return vec2<u32>(atomicExchange(&svm_pool1[t.y], v), 1u); }
            default: { let r = atomicCompareExchangeWeak(&svm_pool1[t.y], cmp, v); return vec2<u32>(r.old_value, select(0u, 1u, r.exchanged)); }
        }
    }
    if (SVM_SEGMENTS > 2u && t.x == 2u) {
        switch (op) {
            case SVM_ATOMIC_ADD: { return vec2<u32>(atomicAdd(&svm_pool2[t.y], v), 1u); }
            case SVM_ATOMIC_SUB: { return vec2<u32>(atomicSub(&svm_pool2[t.y], v), 1u); }
            case SVM_ATOMIC_MIN: { return vec2<u32>(atomicMin(&svm_pool2[t.y], v), 1u); }
            case SVM_ATOMIC_MAX: { return vec2<u32>(atomicMax(&svm_pool2[t.y], v), 1u); }
            case SVM_ATOMIC_AND: { return vec2<u32>(atomicAnd(&svm_pool2[t.y], v), 1u); }
            case SVM_ATOMIC_OR: { return vec2<u32>(atomicOr(&svm_pool2[t.y], v), 1u); }
            case SVM_ATOMIC_XOR: { return vec2<u32>(atomicXor(&svm_pool2[t.y], v), 1u); }
            case SVM_ATOMIC_EXCHANGE: { return vec2<u32>(atomicExchange(&svm_pool2[t.y], v), 1u); }
            default: { let r = atomicCompareExchangeWeak(&svm_pool2[t.y], cmp, v); return vec2<u32>(r.old_value, select(0u, 1u, r.exchanged)); }
        }
    }
    if (SVM_SEGMENTS > 3u && t.x == 3u) {
        switch (op) {
            case SVM_ATOMIC_ADD: { return vec2<u32>(atomicAdd(&svm_pool3[t.y], v), 1u); }
            case SVM_ATOMIC_SUB: { return vec2<u32>(atomicSub(&svm_pool3[t.y], v), 1u); }
            case SVM_ATOMIC_MIN: { return vec2<u32>(atomicMin(&svm_pool3[t.y], v), 1u); }
            case SVM_ATOMIC_MAX: { return vec2<u32>(atomicMax(&svm_pool3[t.y], v), 1u); }
            case SVM_ATOMIC_AND: { return vec2<u32>(atomicAnd(&svm_pool3[t.y], v), 1u); }
            case SVM_ATOMIC_OR: { return vec2<u32>(atomicOr(&svm_pool3[t.y], v), 1u); }
            case SVM_ATOMIC_XOR: { return vec2<u32>(atomicXor(&svm_pool3[t.y], v), 1u); }
            case SVM_ATOMIC_EXCHANGE: { return vec2<u32>(atomicExchange(&svm_pool3[t.y], v), 1u); }
            default: { let r = atomicCompareExchangeWeak(&svm_pool3[t.y], cmp, v); return vec2<u32>(r.old_value, select(0u, 1u, r.exchanged)); }
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
