
// --- windows: four plain bindings (any device) ---
@group(3) @binding(3) var<storage, read_write> svm_pool0: array<u32>;
@group(3) @binding(4) var<storage, read_write> svm_pool1: array<u32>;
@group(3) @binding(5) var<storage, read_write> svm_pool2: array<u32>;
@group(3) @binding(6) var<storage, read_write> svm_pool3: array<u32>;

// Segments a runtime does not use are never read: the specialization
// constants fold these branches away.
fn svm_pool_read(t: vec2<u32>) -> u32 {
    if (SVM_SPECULATIVE_READS != 0u && SVM_SEGMENTS == 1u && !SVM_COHERENT) {
        // No masked branch: read, then keep the value only if admitted.
        var y = t.y;
        if (SVM_SPECULATIVE_READS == 2u) {
            y = select(svm_safe_word, t.y, t.x == 0u);
        }
        return select(0u, svm_pool0[y], t.x == 0u);
    }
    if (t.x == 0u) { return svm_pool0[t.y]; }
    if (SVM_SEGMENTS > 1u && t.x == 1u) { return svm_pool1[t.y]; }
    if (SVM_SEGMENTS > 2u && t.x == 2u) { return svm_pool2[t.y]; }
    if (SVM_SEGMENTS > 3u && t.x == 3u) { return svm_pool3[t.y]; }
    if (SVM_COHERENT && t.x == SVM_SEG_COHERENT) { return svm_coherent[t.y]; }
    return 0u;
}

fn svm_pool_write(t: vec2<u32>, v: u32) {
    if (t.x == 0u) { svm_pool0[t.y] = v; }
    else if (SVM_SEGMENTS > 1u && t.x == 1u) { svm_pool1[t.y] = v; }
    else if (SVM_SEGMENTS > 2u && t.x == 2u) { svm_pool2[t.y] = v; }
    else if (SVM_SEGMENTS > 3u && t.x == 3u) { svm_pool3[t.y] = v; }
    else if (SVM_COHERENT && t.x == SVM_SEG_COHERENT) { svm_coherent[t.y] = v; }
}

// Host memory imported for in-place access (Advice::AccessedBy), or a
// placeholder.
@group(3) @binding(7) var<storage, read_write> svm_coherent: array<u32>;
