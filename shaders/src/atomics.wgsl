// svm WGSL prelude, atomics through managed pointers: appended (with the
// atomic windows) only to kernels that use them, since atomic windows make
// every pointer access an atomic load or store.
// --- atomics through managed pointers (checked like stores) ---
const SVM_ATOMIC_ADD: u32 = 0u;
const SVM_ATOMIC_SUB: u32 = 1u;
const SVM_ATOMIC_MIN: u32 = 2u;
const SVM_ATOMIC_MAX: u32 = 3u;
const SVM_ATOMIC_AND: u32 = 4u;
const SVM_ATOMIC_OR: u32 = 5u;
const SVM_ATOMIC_XOR: u32 = 6u;
const SVM_ATOMIC_EXCHANGE: u32 = 7u;
const SVM_ATOMIC_COMPARE_EXCHANGE: u32 = 8u;

/// The result of svm_atomic_compare_exchange_*: the old value, and whether
/// it equalled `cmp` and was replaced (never spuriously false).
struct SvmCas {
    old_value: u32,
    exchanged: bool,
}
struct SvmCasI32 {
    old_value: i32,
    exchanged: bool,
}

// One checked read-modify-write; a refused access does nothing and yields 0.
fn svm_atomic(op: u32, p: vec2<u32>, v: u32, cmp: u32) -> vec2<u32> {
    return svm_pool_rmw(op, svm_translate(p, true), v, cmp);
}
fn svm_atomic_add_u32(p: vec2<u32>, v: u32) -> u32 { return svm_atomic(SVM_ATOMIC_ADD, p, v, 0u).x; }
fn svm_atomic_sub_u32(p: vec2<u32>, v: u32) -> u32 { return svm_atomic(SVM_ATOMIC_SUB, p, v, 0u).x; }
fn svm_atomic_min_u32(p: vec2<u32>, v: u32) -> u32 { return svm_atomic(SVM_ATOMIC_MIN, p, v, 0u).x; }
fn svm_atomic_max_u32(p: vec2<u32>, v: u32) -> u32 { return svm_atomic(SVM_ATOMIC_MAX, p, v, 0u).x; }
fn svm_atomic_and_u32(p: vec2<u32>, v: u32) -> u32 { return svm_atomic(SVM_ATOMIC_AND, p, v, 0u).x; }
fn svm_atomic_or_u32(p: vec2<u32>, v: u32) -> u32 { return svm_atomic(SVM_ATOMIC_OR, p, v, 0u).x; }
fn svm_atomic_xor_u32(p: vec2<u32>, v: u32) -> u32 { return svm_atomic(SVM_ATOMIC_XOR, p, v, 0u).x; }
fn svm_atomic_exchange_u32(p: vec2<u32>, v: u32) -> u32 { return svm_atomic(SVM_ATOMIC_EXCHANGE, p, v, 0u).x; }
/// Strong compare-exchange (retries the weak one while it fails spuriously).
/// A refused access never exchanges: a CAS loop must also stop on
/// `svm_failed()`, or it spins forever.
fn svm_atomic_compare_exchange_u32(p: vec2<u32>, cmp: u32, v: u32) -> SvmCas {
    let t = svm_translate(p, true);
    loop {
        let r = svm_pool_rmw(SVM_ATOMIC_COMPARE_EXCHANGE, t, v, cmp);
        if (r.y == 1u || r.x != cmp || t.x == SVM_SEG_NONE) {
            return SvmCas(r.x, r.y == 1u);
        }
    }
    return SvmCas(0u, false);
}
fn svm_atomic_add_i32(p: vec2<u32>, v: i32) -> i32 { return bitcast<i32>(svm_atomic_add_u32(p, bitcast<u32>(v))); }
fn svm_atomic_sub_i32(p: vec2<u32>, v: i32) -> i32 { return bitcast<i32>(svm_atomic_sub_u32(p, bitcast<u32>(v))); }
fn svm_atomic_and_i32(p: vec2<u32>, v: i32) -> i32 { return bitcast<i32>(svm_atomic_and_u32(p, bitcast<u32>(v))); }
fn svm_atomic_or_i32(p: vec2<u32>, v: i32) -> i32 { return bitcast<i32>(svm_atomic_or_u32(p, bitcast<u32>(v))); }
fn svm_atomic_xor_i32(p: vec2<u32>, v: i32) -> i32 { return bitcast<i32>(svm_atomic_xor_u32(p, bitcast<u32>(v))); }
fn svm_atomic_exchange_i32(p: vec2<u32>, v: i32) -> i32 {
    return bitcast<i32>(svm_atomic_exchange_u32(p, bitcast<u32>(v)));
}
fn svm_atomic_compare_exchange_i32(p: vec2<u32>, cmp: i32, v: i32) -> SvmCasI32 {
    let r = svm_atomic_compare_exchange_u32(p, bitcast<u32>(cmp), bitcast<u32>(v));
    return SvmCasI32(bitcast<i32>(r.old_value), r.exchanged);
}
// Signed min / max: a compare-exchange loop on the word's bits.
fn svm_atomic_minmax_i32(p: vec2<u32>, v: i32, take_max: bool) -> i32 {
    let t = svm_translate(p, true);
    if (t.x == SVM_SEG_NONE) { return 0; }
    var old = svm_pool_rmw(SVM_ATOMIC_OR, t, 0u, 0u).x;
    loop {
        let o = bitcast<i32>(old);
        let want = select(min(o, v), max(o, v), take_max);
        if (want == o) { return o; }
        let r = svm_pool_rmw(SVM_ATOMIC_COMPARE_EXCHANGE, t, bitcast<u32>(want), old);
        if (r.y == 1u) { return o; }
        old = r.x;
    }
    return 0;
}
fn svm_atomic_min_i32(p: vec2<u32>, v: i32) -> i32 { return svm_atomic_minmax_i32(p, v, false); }
fn svm_atomic_max_i32(p: vec2<u32>, v: i32) -> i32 { return svm_atomic_minmax_i32(p, v, true); }

