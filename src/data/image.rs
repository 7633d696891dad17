//! Image decoding and Keras-exact preprocessing.
//!
//! Keras' `load_img(path, target_size, interpolation='bilinear')` decodes with
//! PIL, converts to RGB and calls `Image.resize(size, BILINEAR)`. This module
//! reproduces that bit for bit: [`decode`] (format sniffing, size limits
//! before any pixel buffer exists, EXIF orientation, conversion to 8-bit RGB;
//! JPEG through libjpeg-turbo's decoder as in PIL) and [`resize_bilinear_pil`]
//! (a port of Pillow's resampler).
//!
//! One deliberate difference: Keras' `load_img` ignores EXIF orientation;
//! [`decode`] applies it, so a rotated phone photo reaches the model upright.

mod jpeg;
mod resize;

use std::io::Cursor;
use std::path::{Path, PathBuf};

use ::image::codecs::{bmp::BmpDecoder, gif::GifDecoder};
use ::image::codecs::{png::PngDecoder, webp::WebPDecoder};
use ::image::{DynamicImage, ImageDecoder, Limits};
use rayon::prelude::*;

pub use ::image::RgbImage;
pub use resize::{resize_bilinear_pil, resize_bilinear_pil_ordered, PassOrder};

/// Why an input could not be turned into pixels.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The bytes are not an image at all (text, HTML, a zip, ...).
    #[error("not an image: the data looks like {detected}")]
    NotAnImage { detected: String },
    /// A real image format that this service does not decode.
    #[error("unsupported image format: {0}")]
    Unsupported(String),
    /// The header declares more pixels (or a longer side) than allowed.
    #[error("image too large: {width}x{height} exceeds the limit of {max_pixels} pixels or {max_dimension} per side")]
    TooLarge {
        width: u32,
        height: u32,
        max_pixels: u64,
        max_dimension: u32,
    },
    /// Truncated or malformed data.
    #[error("corrupt image: {0}")]
    Corrupt(String),
    /// Reading the file failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

/// Bounds checked against the header before decoding allocates pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Maximum `width * height`.
    pub max_pixels: u64,
    /// Maximum width and maximum height.
    pub max_dimension: u32,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self {
            max_pixels: 64 * 1024 * 1024,
            max_dimension: 32_768,
        }
    }
}

impl DecodeLimits {
    pub fn check(&self, width: u32, height: u32) -> Result<(), ImageError> {
        let too_large = width > self.max_dimension
            || height > self.max_dimension
            || u64::from(width) * u64::from(height) > self.max_pixels;
        if too_large {
            return Err(ImageError::TooLarge {
                width,
                height,
                max_pixels: self.max_pixels,
                max_dimension: self.max_dimension,
            });
        }
        if width == 0 || height == 0 {
            return Err(ImageError::Corrupt(format!("empty image {width}x{height}")));
        }
        Ok(())
    }

    /// The same bounds handed to the `image` decoders, as a second line of
    /// defence for allocations they make beyond the declared size (e.g. GIF
    /// frames larger than the screen).
    fn as_image_limits(&self) -> Limits {
        let mut l = Limits::default();
        l.max_image_width = Some(self.max_dimension);
        l.max_image_height = Some(self.max_dimension);
        // RGBA16 output plus decoder scratch.
        l.max_alloc = Some(self.max_pixels.saturating_mul(8).saturating_add(64 << 20));
        l
    }
}

/// Formats recognised by their magic bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Jpeg,
    Png,
    WebP,
    Bmp,
    Gif,
}

/// Identify the format from magic bytes; the file name is never trusted.
pub fn sniff(bytes: &[u8]) -> Result<Format, ImageError> {
    let starts = |m: &[u8]| bytes.starts_with(m);
    if starts(&[0xFF, 0xD8, 0xFF]) {
        return Ok(Format::Jpeg);
    }
    if starts(b"\x89PNG\r\n\x1a\n") {
        return Ok(Format::Png);
    }
    if bytes.len() >= 12 && starts(b"RIFF") && &bytes[8..12] == b"WEBP" {
        return Ok(Format::WebP);
    }
    if starts(b"GIF87a") || starts(b"GIF89a") {
        return Ok(Format::Gif);
    }
    // "BM" alone would match text starting with "BM"; also require the
    // reserved header words to be zero.
    if bytes.len() >= 14 && starts(b"BM") && bytes[6..10] == [0, 0, 0, 0] {
        return Ok(Format::Bmp);
    }
    if let Some(name) = known_unsupported(bytes) {
        return Err(ImageError::Unsupported(name.to_owned()));
    }
    Err(ImageError::NotAnImage {
        detected: describe_non_image(bytes),
    })
}

fn known_unsupported(bytes: &[u8]) -> Option<&'static str> {
    let starts = |m: &[u8]| bytes.starts_with(m);
    if starts(b"II*\0") || starts(b"MM\0*") {
        return Some("TIFF");
    }
    if bytes.len() >= 12 && &bytes[4..8] == b"ftyp" {
        return Some(match &bytes[8..12] {
            b"avif" | b"avis" => "AVIF",
            b"heic" | b"heix" | b"mif1" | b"msf1" => "HEIF/HEIC",
            _ => "ISO media (ftyp)",
        });
    }
    if starts(&[0xFF, 0x0A]) || starts(b"\0\0\0\x0cJXL \r\n\x87\n") {
        return Some("JPEG XL");
    }
    if starts(b"8BPS") {
        return Some("Photoshop PSD");
    }
    if starts(&[0, 0, 1, 0]) {
        return Some("ICO");
    }
    if starts(b"qoif") {
        return Some("QOI");
    }
    None
}

fn describe_non_image(bytes: &[u8]) -> String {
    let starts = |m: &[u8]| bytes.starts_with(m);
    if bytes.is_empty() {
        return "empty input".into();
    }
    if starts(b"%PDF") {
        return "a PDF document".into();
    }
    if starts(b"PK\x03\x04") {
        return "a zip archive".into();
    }
    let head = &bytes[..bytes.len().min(512)];
    let texty = head
        .iter()
        .all(|&b| b == b'\n' || b == b'\r' || b == b'\t' || (0x20..0x7f).contains(&b) || b >= 0x80);
    if texty {
        let t = String::from_utf8_lossy(head)
            .trim_start()
            .to_ascii_lowercase();
        if t.starts_with("<svg") || (t.starts_with("<?xml") && t.contains("<svg")) {
            return "an SVG document (vector images are not supported)".into();
        }
        if t.starts_with('<') {
            return "HTML/XML text".into();
        }
        return "text".into();
    }
    let hex: Vec<String> = bytes.iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!("unknown binary data (starts with {})", hex.join(" "))
}

/// Width and height from the header alone (no pixels are decoded).
pub fn dimensions(bytes: &[u8]) -> Result<(u32, u32), ImageError> {
    sniff(bytes)?;
    ::image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| ImageError::Corrupt(e.to_string()))?
        .into_dimensions()
        .map_err(corrupt)
}

/// Decode an encoded image into 8-bit RGB, upright per its EXIF orientation.
///
/// Errors: [`ImageError::NotAnImage`] / [`ImageError::Unsupported`] from the
/// magic bytes, [`ImageError::TooLarge`] from the header (before pixels are
/// allocated), [`ImageError::Corrupt`] for truncated or malformed data.
pub fn decode(bytes: &[u8], limits: &DecodeLimits) -> Result<RgbImage, ImageError> {
    let format = sniff(bytes)?;
    let cur = Cursor::new(bytes);
    match format {
        Format::Jpeg => {
            let (img, orientation) = jpeg::decode(bytes, limits)?;
            let mut img = DynamicImage::ImageRgb8(img);
            img.apply_orientation(orientation);
            Ok(img.into_rgb8())
        }
        Format::Png => finish(PngDecoder::new(cur).map_err(corrupt)?, limits),
        Format::WebP => finish(WebPDecoder::new(cur).map_err(corrupt)?, limits),
        Format::Bmp => finish(BmpDecoder::new(cur).map_err(corrupt)?, limits),
        // The ImageDecoder view of a GIF is its first frame on the canvas.
        Format::Gif => finish(GifDecoder::new(cur).map_err(corrupt)?, limits),
    }
}

/// Header check, then decode, orient and convert to RGB.
fn finish(mut dec: impl ImageDecoder, limits: &DecodeLimits) -> Result<RgbImage, ImageError> {
    let (w, h) = dec.dimensions();
    limits.check(w, h)?;
    dec.set_limits(limits.as_image_limits()).map_err(corrupt)?;
    // A broken EXIF block must not fail an otherwise good photo.
    let orientation = dec
        .orientation()
        .unwrap_or(::image::metadata::Orientation::NoTransforms);
    let mut img = DynamicImage::from_decoder(dec).map_err(corrupt)?;
    img.apply_orientation(orientation);
    Ok(to_rgb8(img))
}

/// Convert like PIL's `convert('RGB')`: alpha is dropped (not composited),
/// gray is replicated, and 16-bit colour samples keep their high byte, as
/// PIL's `RGB;16B` unpacker does (the `image` crate would round instead).
/// 16-bit gray also keeps its high byte; PIL clips its `I;16` values to 255
/// instead, which turns most such photos white, so we do not follow it.
fn to_rgb8(img: DynamicImage) -> RgbImage {
    let high_byte = |v: &u16| (v >> 8) as u8;
    let (w, h) = (img.width(), img.height());
    let rebuild = |data: Vec<u8>| RgbImage::from_raw(w, h, data);
    let converted = match &img {
        DynamicImage::ImageRgb16(b) => rebuild(b.as_raw().iter().map(high_byte).collect()),
        DynamicImage::ImageRgba16(b) => rebuild(
            b.as_raw()
                .chunks_exact(4)
                .flat_map(|p| [high_byte(&p[0]), high_byte(&p[1]), high_byte(&p[2])])
                .collect(),
        ),
        DynamicImage::ImageLuma16(b) => {
            rebuild(b.as_raw().iter().flat_map(|v| [high_byte(v); 3]).collect())
        }
        DynamicImage::ImageLumaA16(b) => rebuild(
            b.as_raw()
                .chunks_exact(2)
                .flat_map(|p| [high_byte(&p[0]); 3])
                .collect(),
        ),
        _ => None,
    };
    converted.unwrap_or_else(|| img.into_rgb8())
}

fn corrupt(e: ::image::ImageError) -> ImageError {
    use ::image::ImageError as E;
    match e {
        E::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            ImageError::Corrupt("unexpected end of data".into())
        }
        E::IoError(io) => ImageError::Io(io),
        E::Unsupported(u) => ImageError::Unsupported(u.to_string()),
        E::Limits(l) => ImageError::Corrupt(format!("decoder limit exceeded: {l}")),
        other => ImageError::Corrupt(other.to_string()),
    }
}

/// Decode and resize to `size = (width, height)` exactly as Keras'
/// `load_img(..., target_size=(height, width), interpolation='bilinear')`.
pub fn load_for_model(
    bytes: &[u8],
    size: (u32, u32),
    limits: &DecodeLimits,
) -> Result<RgbImage, ImageError> {
    let img = decode(bytes, limits)?;
    Ok(resize_bilinear_pil(&img, size.0, size.1))
}

/// [`load_for_model`] on a file.
pub fn load_path_for_model(
    path: &Path,
    size: (u32, u32),
    limits: &DecodeLimits,
) -> Result<RgbImage, ImageError> {
    let bytes = std::fs::read(path)?;
    load_for_model(&bytes, size, limits)
}

/// Where each image of a batch comes from.
pub enum Source<'a> {
    Bytes(&'a [u8]),
    Path(PathBuf),
}

/// Decode and resize many images in parallel (rayon), keeping order; each
/// image succeeds or fails on its own.
pub fn decode_and_resize_many(
    sources: &[Source<'_>],
    size: (u32, u32),
    limits: &DecodeLimits,
) -> Vec<Result<RgbImage, ImageError>> {
    sources
        .par_iter()
        .map(|s| match s {
            Source::Bytes(b) => load_for_model(b, size, limits),
            Source::Path(p) => load_path_for_model(p, size, limits),
        })
        .collect()
}

/// How pixel values map to network inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scaling {
    /// `x / 127.5 - 1` (keras.applications.xception.preprocess_input).
    MinusOneToOne,
    /// `x / 255` (TF-Hub image modules).
    ZeroToOne,
}

impl Scaling {
    /// Same float32 operations as numpy on a float32 array, so values match
    /// the golden `input` tensors bit for bit.
    #[inline]
    pub fn apply(self, v: u8) -> f32 {
        match self {
            Scaling::MinusOneToOne => f32::from(v) / 127.5 - 1.0,
            Scaling::ZeroToOne => f32::from(v) / 255.0,
        }
    }
}

/// Images straight into the network's (C,B,H,W) f32 layout, scaled: one pass,
/// no intermediate NHWC copy. All images must have the same size.
pub fn to_planar_data(imgs: &[&RgbImage], scaling: Scaling) -> Vec<f32> {
    let Some(first) = imgs.first() else { return Vec::new() };
    let plane = (first.width() * first.height()) as usize;
    let lut: Vec<f32> = (0..=255u8).map(|v| scaling.apply(v)).collect();
    let b = imgs.len();
    let mut out = vec![0f32; 3 * b * plane];
    for (i, img) in imgs.iter().enumerate() {
        assert_eq!(img.dimensions(), first.dimensions(), "to_planar_data: images of different sizes");
        for (p, px) in img.as_raw().chunks_exact(3).enumerate() {
            for (c, &v) in px.iter().enumerate() {
                out[(c * b + i) * plane + p] = lut[usize::from(v)];
            }
        }
    }
    out
}

/// Flatten images into an NHWC f32 batch. All images must have the same size.
pub fn to_tensor_data(imgs: &[RgbImage], scaling: Scaling) -> Vec<f32> {
    debug_assert!(
        imgs.windows(2)
            .all(|w| w[0].dimensions() == w[1].dimensions()),
        "to_tensor_data: images of different sizes"
    );
    let lut: Vec<f32> = (0..=255u8).map(|v| scaling.apply(v)).collect();
    let total: usize = imgs.iter().map(|i| i.as_raw().len()).sum();
    let mut out = Vec::with_capacity(total);
    for img in imgs {
        out.extend(img.as_raw().iter().map(|&v| lut[usize::from(v)]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn planar_data_is_the_nhwc_batch_transposed() {
        let imgs: Vec<RgbImage> = (0..3u32)
            .map(|k| RgbImage::from_fn(5, 4, |x, y| ::image::Rgb([(x * 50 + k) as u8, (y * 60 + k) as u8, (x * y * 7 + k * 3) as u8])))
            .collect();
        let refs: Vec<&RgbImage> = imgs.iter().collect();
        let planar = to_planar_data(&refs, Scaling::MinusOneToOne);
        let nhwc = to_tensor_data(&imgs, Scaling::MinusOneToOne);
        let (b, h, w) = (3, 4, 5);
        for i in 0..b {
            for p in 0..h * w {
                for c in 0..3 {
                    assert_eq!(planar[(c * b + i) * h * w + p], nhwc[(i * h * w + p) * 3 + c]);
                }
            }
        }
    }
}
