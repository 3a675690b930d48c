//! Gradient bucket pack/unpack for the allreduce layer (Horovod's fusion buffer): many flat
//! gradient tensors into one buffer, optionally rounded to f16 for a compressed wire format,
//! and the averaged buffer back into f32 pieces.
//!
//! [`pack`] and [`unpack`] route by device: on cube devices one cubecl copy-and-convert launch
//! per piece writes straight into its place ([`BucketBackend`], `cube.rs`), so the bucket is
//! read back in one transfer of 2 or 4 bytes per value; elsewhere (flex) `reference.rs`
//! (concatenate, cast, slice).

pub mod cube;
pub mod reference;

use burn::backend::{Backend, Dispatch, backend_extension, tensor::FloatTensor};
#[cfg(feature = "fusion")]
use burn::tensor::Shape;
use burn::tensor::{DType, Tensor};
use burn_cubecl::CubeBackend;

use crate::is_cube_device;

/// Backend operations behind [`pack`] and [`unpack`]; cube backends only (the public functions
/// run the reference elsewhere).
#[backend_extension(Cube, Fusion: cfg(feature = "fusion"))]
pub trait BucketBackend: Backend {
    /// `src` converted to `bucket`'s dtype and written at `offset`; returns the bucket.
    #[fusion(dtype = bucket, shape = bucket)]
    fn bucket_write(
        bucket: FloatTensor<Self>,
        src: FloatTensor<Self>,
        offset: usize,
    ) -> FloatTensor<Self>;

    /// `len` values of `bucket` from `offset`, as a new tensor of `dtype`.
    #[fusion(dtype = *dtype, shape = Shape::new([*len]))]
    fn bucket_read(
        bucket: FloatTensor<Self>,
        offset: usize,
        len: usize,
        dtype: DType,
    ) -> FloatTensor<Self>;
}

impl BucketBackend for CubeBackend {
    fn bucket_write(
        bucket: FloatTensor<Self>,
        src: FloatTensor<Self>,
        offset: usize,
    ) -> FloatTensor<Self> {
        cube::bucket_write(bucket, src, offset)
    }

    fn bucket_read(
        bucket: FloatTensor<Self>,
        offset: usize,
        len: usize,
        dtype: DType,
    ) -> FloatTensor<Self> {
        cube::bucket_read(bucket, offset, len, dtype)
    }
}

/// `tensors` (flat, one device) end to end in one tensor of `dtype` (`DType::F32`, or
/// `DType::F16` to halve the bytes on the wire). Autodiff is stripped.
pub fn pack(tensors: &[Tensor<1>], dtype: DType) -> Tensor<1> {
    let Some(first) = tensors.first() else {
        return reference::pack(tensors, dtype);
    };
    let device = first.device();
    if !is_cube_device(&device) {
        let inner: Vec<Tensor<1>> = tensors.iter().map(|t| t.clone().inner()).collect();
        return reference::pack(&inner, dtype);
    }
    let total: usize = tensors.iter().map(|t| t.dims()[0]).sum();
    let mut bucket = Tensor::<1>::empty([total], (&device.inner(), dtype)).into_dispatch();
    let mut offset = 0;
    for t in tensors {
        let len = t.dims()[0];
        bucket = <Dispatch as BucketBackend>::bucket_write(
            bucket,
            t.clone().inner().into_dispatch(),
            offset,
        );
        offset += len;
    }
    Tensor::from_dispatch(bucket)
}

/// The pieces of `flat` with lengths `lens` (summing to its length), each as f32.
///
/// # Panics
/// When the lengths do not add up to the bucket's.
pub fn unpack(flat: Tensor<1>, lens: &[usize]) -> Vec<Tensor<1>> {
    let flat = flat.inner();
    if !is_cube_device(&flat.device()) {
        return reference::unpack(flat, lens);
    }
    assert_eq!(
        lens.iter().sum::<usize>(),
        flat.dims()[0],
        "unpack: the lengths do not add up to the bucket"
    );
    let mut offset = 0;
    lens.iter()
        .map(|&len| {
            let piece = <Dispatch as BucketBackend>::bucket_read(
                flat.clone().into_dispatch(),
                offset,
                len,
                DType::F32,
            );
            offset += len;
            Tensor::from_dispatch(piece)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData};

    /// Pieces of the given lengths with distinct values, some with NaN and infinities.
    fn pieces(lens: &[usize], special: bool, device: &Device) -> Vec<Tensor<1>> {
        let mut k = 0;
        lens.iter()
            .map(|&len| {
                let values: Vec<f32> = (0..len)
                    .map(|i| {
                        k += 1;
                        match k % 101 {
                            3 if special => f32::NAN,
                            5 if special => f32::INFINITY,
                            7 if special => f32::NEG_INFINITY,
                            // Beyond f16's range (65504): becomes inf in f16.
                            11 if special => 1e6,
                            _ => ((k as f32) * 0.37).sin() * (1 + i % 7) as f32,
                        }
                    })
                    .collect();
                Tensor::from_data(TensorData::new(values, [len]), device)
            })
            .collect()
    }

    fn values(t: Tensor<1>) -> Vec<f32> {
        t.cast(DType::F32).into_data().try_to_vec::<f32>().unwrap()
    }

    /// Bitwise equal, NaN where the other has NaN.
    fn identical(got: &[f32], want: &[f32], what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: lengths");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                (g.is_nan() && w.is_nan()) || g.to_bits() == w.to_bits(),
                "{what}: element {i}: kernel {g}, reference {w}"
            );
        }
    }

    // Sizes: no pieces, empty pieces, one value, lengths that are not a multiple of any
    // workgroup, and a large piece (2^20 + 3); f32 and f16, with and without NaN/inf.
    crate::test_device!(pack_and_unpack_match_the_reference, |device: Device| {
        let cases: [&[usize]; 5] = [
            &[],
            &[0, 0],
            &[1],
            &[3, 0, 1031, 64, 7],
            &[(1 << 20) + 3, 5],
        ];
        for lens in cases {
            for special in [false, true] {
                for dtype in [DType::F32, DType::F16] {
                    let what = format!("{lens:?} {dtype:?} special {special}");
                    let ts = pieces(lens, special, &device);
                    let packed = pack(&ts, dtype);
                    assert_eq!(packed.dtype(), dtype, "{what}");
                    let want = reference::pack(&ts, dtype);
                    identical(&values(packed.clone()), &values(want.clone()), &what);
                    let got = unpack(packed, lens);
                    let want = reference::unpack(want, lens);
                    assert_eq!(got.len(), lens.len());
                    for (g, w) in got.into_iter().zip(want) {
                        assert_eq!(g.dtype(), DType::F32);
                        identical(&values(g), &values(w), &what);
                    }
                }
            }
        }
    });

    // f32 round trip is exact; f16 round trip is within f16's half-ulp (2^-11 relative) for
    // normal values and out-of-range values become infinities of the same sign.
    crate::test_device!(round_trip_error_bounds, |device: Device| {
        let lens = [1000usize, 17, 4096];
        let ts = pieces(&lens, false, &device);
        let originals: Vec<Vec<f32>> = ts.iter().map(|t| values(t.clone())).collect();
        let back = unpack(pack(&ts, DType::F32), &lens);
        for (b, o) in back.into_iter().zip(&originals) {
            identical(&values(b), o, "f32 round trip");
        }
        let back = unpack(pack(&ts, DType::F16), &lens);
        for (b, o) in back.into_iter().zip(&originals) {
            for (g, w) in values(b).iter().zip(o) {
                let bound = w.abs() * 2f32.powi(-11) + 2f32.powi(-24);
                assert!((g - w).abs() <= bound, "f16 round trip: {g} from {w}");
            }
        }
        let big = Tensor::<1>::from_floats([1e6f32, -1e6, 65504.0], &device);
        let back = values(unpack(pack(&[big], DType::F16), &[3]).remove(0));
        assert_eq!(back, vec![f32::INFINITY, f32::NEG_INFINITY, 65504.0]);
    });

    crate::test_device!(autodiff_pieces_are_accepted, |device: Device| {
        let ts = pieces(&[5, 3], false, &device.clone().autodiff());
        let packed = pack(&ts, DType::F32);
        assert!(!packed.is_autodiff());
        let want = reference::pack(&pieces(&[5, 3], false, &device), DType::F32);
        identical(&values(packed), &values(want), "autodiff pieces");
    });
}
