//! Image decoding and Keras-style preprocessing of untrusted bytes: sniff,
//! header-checked decode (JPEG via libjpeg, PNG, WebP, BMP, GIF), Pillow's
//! bilinear resize to a fuzzer-chosen size, scaling to network inputs.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tuneserve::data::image::{self, DecodeLimits, Scaling};

fuzz_target!(|data: &[u8]| {
    let (size, bytes) = match data {
        [w, h, rest @ ..] => ((u32::from(*w % 200) + 1, u32::from(*h % 200) + 1), rest),
        _ => return,
    };
    let limits = DecodeLimits { max_pixels: 1 << 22, max_dimension: 8192 };
    let Ok(img) = image::load_for_model(bytes, size, &limits) else { return };
    assert_eq!(img.dimensions(), size, "resize gave the wrong size");
    for scaling in [Scaling::MinusOneToOne, Scaling::ZeroToOne] {
        let x = image::to_tensor_data(std::slice::from_ref(&img), scaling);
        assert_eq!(x.len(), (size.0 * size.1 * 3) as usize);
        let (lo, hi) = match scaling {
            Scaling::MinusOneToOne => (-1.0, 1.0),
            Scaling::ZeroToOne => (0.0, 1.0),
        };
        assert!(x.iter().all(|v| (lo..=hi).contains(v)), "scaled value out of range");
    }
});
