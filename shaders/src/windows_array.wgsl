
// --- windows: one binding array (devices with storage-buffer binding
// arrays and non-uniform indexing), so that an arena view may span more
// windows than four bindings ---
struct SvmWindow {
    w: array<u32>,
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
        return select(0u, svm_pool[0].w[y], t.x == 0u);
    }
    if (t.x < SVM_SEGMENTS) { return svm_pool[t.x].w[t.y]; }
    if (SVM_COHERENT && t.x == SVM_SEG_COHERENT) { return svm_coherent[t.y]; }
    return 0u;
}

fn svm_pool_write(t: vec2<u32>, v: u32) {
    if (t.x < SVM_SEGMENTS) { svm_pool[t.x].w[t.y] = v; }
    else if (SVM_COHERENT && t.x == SVM_SEG_COHERENT) { svm_coherent[t.y] = v; }
}

// Host memory imported for in-place access (Advice::AccessedBy), or a
// placeholder.
@group(3) @binding(7) var<storage, read_write> svm_coherent: array<u32>;
