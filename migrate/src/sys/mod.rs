//! Operating-system code, and the only place in `svm-migrate` with `unsafe`.
//!
//! Each module opts in to unsafe code with a module-level `# Safety` note
//! explaining what its callers must uphold; every block carries a
//! `// SAFETY:` argument. Nothing above this module touches raw pointers
//! except as plain integers.

pub mod mmap;
pub mod signals;
pub mod uffd;
