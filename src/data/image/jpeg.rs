//! JPEG decoding through libjpeg (the `mozjpeg` crate, which builds the
//! libjpeg-turbo decoder from vendored C), so pixels match PIL exactly: PIL
//! also uses libjpeg-turbo with the ISLOW IDCT, fancy upsampling and the same
//! YCbCr tables. Pure-Rust decoders differ by a level or two.

use std::panic::{catch_unwind, AssertUnwindSafe};

use ::image::metadata::Orientation;
use ::image::RgbImage;
use mozjpeg::{DctMethod, Decompress, Format, Marker};

use super::{DecodeLimits, ImageError};

/// Decode to RGB as PIL's `Image.open(..).convert('RGB')` does, returning
/// the EXIF orientation alongside (not yet applied).
pub(super) fn decode(
    bytes: &[u8],
    limits: &DecodeLimits,
) -> Result<(RgbImage, Orientation), ImageError> {
    check_complete(bytes)?;
    // libjpeg reports fatal errors by unwinding out of the C code (the
    // crate resumes an unwind without running the panic hook); catch it here.
    match catch_unwind(AssertUnwindSafe(|| decode_inner(bytes, limits))) {
        Ok(r) => r,
        Err(payload) => {
            let msg = payload
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| payload.downcast_ref::<&str>().copied())
                .unwrap_or("libjpeg error");
            Err(ImageError::Corrupt(msg.to_owned()))
        }
    }
}

fn decode_inner(
    bytes: &[u8],
    limits: &DecodeLimits,
) -> Result<(RgbImage, Orientation), ImageError> {
    // Reads the header only; nothing image-sized is allocated yet.
    let mut dec = Decompress::builder()
        .with_markers(&[Marker::APP(1)])
        .from_mem(bytes)
        .map_err(corrupt)?;
    let (w, h) = dec.size();
    let (w, h) = (
        u32::try_from(w).unwrap_or(u32::MAX),
        u32::try_from(h).unwrap_or(u32::MAX),
    );
    limits.check(w, h)?;
    let orientation = dec
        .markers()
        .filter_map(|m| m.data.strip_prefix(b"Exif\0\0"))
        .find_map(Orientation::from_exif_chunk)
        .unwrap_or(Orientation::NoTransforms);

    // PIL's settings (also libjpeg's defaults): accurate integer IDCT and
    // triangle-filter chroma upsampling.
    dec.dct_method(DctMethod::IntegerSlow);
    dec.do_fancy_upsampling(true);

    let rgb: Vec<u8> = match dec.image().map_err(corrupt)? {
        Format::RGB(mut s) => {
            let px = s.read_scanlines::<u8>().map_err(corrupt)?;
            s.finish().map_err(corrupt)?;
            px
        }
        Format::Gray(mut s) => {
            let px = s.read_scanlines::<u8>().map_err(corrupt)?;
            s.finish().map_err(corrupt)?;
            px.iter().flat_map(|&g| [g, g, g]).collect()
        }
        Format::CMYK(mut s) => {
            let px = s.read_scanlines::<u8>().map_err(corrupt)?;
            s.finish().map_err(corrupt)?;
            px.chunks_exact(4).flat_map(cmyk_to_rgb_pil).collect()
        }
    };
    let img = RgbImage::from_raw(w, h, rgb)
        .ok_or_else(|| ImageError::Corrupt("JPEG decoded to a short buffer".into()))?;
    Ok((img, orientation))
}

/// PIL reads every CMYK JPEG as Adobe-inverted ("CMYK;I") and converts with
/// `cmyk2rgb`: `R = clip(nk - nk*C/255)`, `nk = 255 - K`, integer-rounded
/// exactly as its MULDIV255 macro.
fn cmyk_to_rgb_pil(raw: &[u8]) -> [u8; 3] {
    let inv = |v: u8| i32::from(255 - v);
    let nk = 255 - inv(raw[3]);
    let muldiv255 = |a: i32, b: i32| {
        let t = a * b + 128;
        ((t >> 8) + t) >> 8
    };
    let ch = |c: u8| (nk - muldiv255(inv(c), nk)).clamp(0, 255) as u8;
    [ch(raw[0]), ch(raw[1]), ch(raw[2])]
}

fn corrupt(e: std::io::Error) -> ImageError {
    ImageError::Corrupt(format!("JPEG: {e}"))
}

/// A JPEG cut short must fail as PIL does ("image file is truncated");
/// libjpeg itself only warns and pads the rest with grey.
fn check_complete(bytes: &[u8]) -> Result<(), ImageError> {
    let truncated = || ImageError::Corrupt("JPEG is truncated (no end-of-image marker)".into());
    // Walk the header segments by their lengths up to the first SOS, so an
    // EXIF thumbnail (a whole JPEG inside APP1) is skipped, not searched.
    let mut i = 2;
    loop {
        // Fill bytes (FF FF ...) may pad between segments.
        while bytes.get(i) == Some(&0xFF) && bytes.get(i + 1) == Some(&0xFF) {
            i += 1;
        }
        match (bytes.get(i), bytes.get(i + 1)) {
            (Some(0xFF), Some(&m)) => {
                let len = match (bytes.get(i + 2), bytes.get(i + 3)) {
                    (Some(&hi), Some(&lo)) => usize::from(u16::from_be_bytes([hi, lo])),
                    _ => return Err(truncated()),
                };
                i += 2 + len;
                if m == 0xDA {
                    break;
                }
            }
            (Some(_), Some(_)) => {
                return Err(ImageError::Corrupt("JPEG header is malformed".into()))
            }
            _ => return Err(truncated()),
        }
    }
    // In entropy-coded data every FF is stuffed (FF 00) or a marker, so an
    // FF D9 after the first SOS is the real end of image.
    let rest = bytes.get(i..).unwrap_or(&[]);
    if rest.windows(2).any(|w| w == [0xFF, 0xD9]) {
        Ok(())
    } else {
        Err(truncated())
    }
}
