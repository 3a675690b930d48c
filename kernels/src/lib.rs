//! kiln's own kernels, one folder each: the public function, the plain-burn reference it must
//! match, and a cubecl version used on cube devices. The kernels issue fills the folders
//! (`sgd_update/`, `preprocess/`, `bucket/`, `cross_entropy/`); today the crate holds the test
//! device helpers every crate shares.

pub mod testing;
