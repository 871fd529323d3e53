//! `.npz` files as numpy, pytorch-fid and the ADM evaluator write them: FID statistics
//! (`mu` [d], `sigma` [d,d], and ADM's `mu_s`/`sigma_s`) and uint8 sample batches (`arr_0`).
//!
//! An `.npz` is a zip archive of `.npy` members (`<key>.npy`); `np.savez_compressed` deflates
//! them, `np.savez` stores them. Reading uses the `zip` crate (deflate via flate2/zlib-rs) and
//! a small `.npy` header parser of our own (format versions 1–3, little/big endian, C or
//! Fortran order for up to 2-d arrays), streaming the data so a multi-GB `arr_0` is never held
//! twice. `candle_core::npy` is not used: candle builds `zip` without deflate, so it cannot open
//! `np.savez_compressed` files, and it materialises whole tensors.
//!
//! Writing produces what `np.savez_compressed(path, mu=mu, sigma=sigma)` produces: deflated
//! members `mu.npy` (`<f8`, [d]) and `sigma.npy` (`<f8`, [d,d]), npy format 1.0 with numpy's
//! 64-byte header alignment, plus, when the sample count is known, `count.npy` (`<i8`, shape
//! `()`), and for sets of no more samples than dimensions `sigma_factor.npy` (`<f8`, [d,n]: the
//! thin covariance factor, so FID against such a file needs no eigendecomposition of it): extra
//! keys that pytorch-fid, clean-fid and the ADM evaluator ignore. The archive is
//! written to a temporary name in the same folder, synced and renamed into place.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use image::RgbImage;

use crate::stats::{FeatureStats, FidError, LowRankFactor, Result};

type Archive = zip::ZipArchive<BufReader<File>>;

fn npz_err(path: &Path, key: Option<&str>, message: impl Into<String>) -> FidError {
    FidError::Npz {
        path: path.display().to_string(),
        key: key.map(str::to_owned),
        message: message.into(),
    }
}

// ------------------------------------------------------------------------------------------
// .npy header
// ------------------------------------------------------------------------------------------

const NPY_MAGIC: &[u8] = b"\x93NUMPY";

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Float,
    Int,
    UInt,
    Bool,
}

#[derive(Debug, Clone, PartialEq)]
struct NpyHeader {
    kind: Kind,
    /// Bytes per element.
    size: usize,
    big_endian: bool,
    fortran_order: bool,
    shape: Vec<usize>,
    descr: String,
}

impl NpyHeader {
    fn elem_count(&self) -> std::result::Result<usize, String> {
        self.shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or_else(|| format!("shape {:?} overflows", self.shape))
    }
}

/// Parses numpy's header dict, e.g. `{'descr': '<f8', 'fortran_order': False, 'shape': (64, 64), }`.
fn parse_header_dict(text: &str) -> std::result::Result<NpyHeader, String> {
    let body = text.trim().trim_end_matches('\n').trim();
    let body = body
        .strip_prefix('{')
        .and_then(|b| b.strip_suffix('}'))
        .ok_or_else(|| format!("npy header is not a dict: {text:?}"))?;
    let value_of = |key: &str| -> std::result::Result<&str, String> {
        let pos = ["'", "\""]
            .iter()
            .find_map(|q| body.find(&format!("{q}{key}{q}")))
            .ok_or_else(|| format!("npy header has no '{key}': {text:?}"))?;
        let rest = &body[pos + key.len() + 2..];
        let rest = rest
            .trim_start()
            .strip_prefix(':')
            .ok_or_else(|| format!("npy header: no ':' after '{key}': {text:?}"))?
            .trim_start();
        let end = match rest.chars().next() {
            Some(q @ ('\'' | '"')) => rest[1..].find(q).map(|e| e + 2),
            Some('(') => rest.find(')').map(|e| e + 1),
            Some('[') => {
                return Err(format!(
                    "structured dtypes are not supported (descr {rest:?})"
                ))
            }
            _ => Some(rest.find([',', '}']).unwrap_or(rest.len())),
        }
        .ok_or_else(|| format!("npy header: unterminated value for '{key}': {text:?}"))?;
        Ok(rest[..end].trim())
    };

    let descr = value_of("descr")?
        .trim_matches(|c| c == '\'' || c == '"')
        .to_owned();
    let (big_endian, code) = match descr.chars().next() {
        Some('<') | Some('|') | Some('=') => (false, &descr[1..]),
        Some('>') => (true, &descr[1..]),
        _ => (false, descr.as_str()),
    };
    let (kind, size) = match code {
        "f8" | "d" => (Kind::Float, 8),
        "f4" | "f" => (Kind::Float, 4),
        "f2" | "e" => (Kind::Float, 2),
        "u1" | "B" => (Kind::UInt, 1),
        "u2" | "H" => (Kind::UInt, 2),
        "u4" | "I" => (Kind::UInt, 4),
        "u8" | "Q" => (Kind::UInt, 8),
        "i1" | "b" => (Kind::Int, 1),
        "i2" | "h" => (Kind::Int, 2),
        "i4" | "i" => (Kind::Int, 4),
        "i8" | "q" => (Kind::Int, 8),
        "b1" | "?" => (Kind::Bool, 1),
        _ => return Err(format!("unsupported dtype {descr:?}")),
    };
    let fortran_order = match value_of("fortran_order")? {
        "False" => false,
        "True" => true,
        other => return Err(format!("bad fortran_order {other:?}")),
    };
    let shape_text = value_of("shape")?;
    let inner = shape_text
        .strip_prefix('(')
        .and_then(|s| s.strip_suffix(')'))
        .ok_or_else(|| format!("bad shape {shape_text:?}"))?;
    let shape = inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.trim_end_matches('L').parse::<usize>())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| format!("bad shape {shape_text:?}: {e}"))?;
    Ok(NpyHeader {
        kind,
        size,
        big_endian,
        fortran_order,
        shape,
        descr,
    })
}

fn read_npy_header<R: Read>(r: &mut R) -> std::result::Result<NpyHeader, String> {
    let io = |e: std::io::Error| format!("cannot read the npy header: {e}");
    let mut magic = [0u8; 8];
    r.read_exact(&mut magic).map_err(io)?;
    if &magic[..6] != NPY_MAGIC {
        return Err("not an .npy array (bad magic bytes)".into());
    }
    let len = match magic[6] {
        1 => {
            let mut b = [0u8; 2];
            r.read_exact(&mut b).map_err(io)?;
            u16::from_le_bytes(b) as usize
        }
        2 | 3 => {
            let mut b = [0u8; 4];
            r.read_exact(&mut b).map_err(io)?;
            u32::from_le_bytes(b) as usize
        }
        v => return Err(format!("unsupported npy format version {v}.{}", magic[7])),
    };
    if len > 1 << 20 {
        return Err(format!("implausible npy header length {len}"));
    }
    let mut text = vec![0u8; len];
    r.read_exact(&mut text).map_err(io)?;
    parse_header_dict(&String::from_utf8_lossy(&text))
}

/// Header for a C-order array, numpy's layout: format 1.0, total header size a multiple of 64.
fn npy_header_bytes(descr: &str, shape: &[usize]) -> Vec<u8> {
    let shape_text = match shape {
        [] => "()".to_owned(),
        [d] => format!("({d},)"),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut dict =
        format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_text}, }}");
    let unpadded = NPY_MAGIC.len() + 4 + dict.len() + 1;
    dict.extend(std::iter::repeat_n(' ', (64 - unpadded % 64) % 64));
    dict.push('\n');
    let mut out = Vec::with_capacity(10 + dict.len());
    out.extend_from_slice(NPY_MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(dict.len() as u16).to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    out
}

// ------------------------------------------------------------------------------------------
// reading
// ------------------------------------------------------------------------------------------

fn open_archive(path: &Path) -> Result<Archive> {
    let file = File::open(path).map_err(|source| FidError::Io {
        path: path.display().to_string(),
        source,
    })?;
    zip::ZipArchive::new(BufReader::new(file)).map_err(|e| {
        npz_err(
            path,
            None,
            format!("not a readable .npz (zip) archive, truncated or corrupt? ({e})"),
        )
    })
}

/// The array keys in an archive (member names without `.npy`).
fn keys(archive: &Archive) -> Vec<String> {
    archive
        .file_names()
        .filter_map(|n| n.ok())
        .map(|n| n.strip_suffix(".npy").unwrap_or(&n).to_owned())
        .collect()
}

/// The array names in an `.npz` file (member names without `.npy`).
pub fn npz_keys(path: impl AsRef<Path>) -> Result<Vec<String>> {
    Ok(keys(&open_archive(path.as_ref())?))
}

fn has_key(archive: &Archive, key: &str) -> bool {
    archive.index_for_name(&format!("{key}.npy")).is_some()
}

/// Opens member `<key>.npy` and parses its header; the reader is positioned at the data.
fn open_member<'a>(
    archive: &'a mut Archive,
    path: &Path,
    key: &str,
) -> Result<(zip::read::ZipFile<'a, BufReader<File>>, NpyHeader)> {
    if !has_key(archive, key) {
        let have = keys(archive).join(", ");
        return Err(npz_err(
            path,
            Some(key),
            format!("not in the archive (it holds: {have})"),
        ));
    }
    let mut member = archive
        .by_name(&format!("{key}.npy"))
        .map_err(|e| npz_err(path, Some(key), format!("cannot open member: {e}")))?;
    let header = read_npy_header(&mut member).map_err(|m| npz_err(path, Some(key), m))?;
    Ok((member, header))
}

/// Reads exactly `buf.len()` bytes of array data, naming truncation clearly.
fn read_data<R: Read>(r: &mut R, buf: &mut [u8], path: &Path, key: &str) -> Result<()> {
    r.read_exact(buf).map_err(|e| {
        let what = if e.kind() == std::io::ErrorKind::UnexpectedEof {
            "array data is truncated (fewer bytes than its shape needs)".to_owned()
        } else {
            format!("cannot read the array data: {e}")
        };
        npz_err(path, Some(key), what)
    })
}

/// After the data: the member must end here. Reading to the end also makes the zip reader
/// verify the member's CRC-32.
fn expect_end<R: Read>(r: &mut R, path: &Path, key: &str) -> Result<()> {
    let mut extra = [0u8; 1];
    match r.read(&mut extra) {
        Ok(0) => Ok(()),
        Ok(_) => Err(npz_err(
            path,
            Some(key),
            "more bytes than its shape needs (corrupt .npy)",
        )),
        Err(e) => Err(npz_err(path, Some(key), format!("corrupt member: {e}"))),
    }
}

/// Reads a float (or integer) array as f64 in C order, returning (shape, values).
fn read_f64_array(archive: &mut Archive, path: &Path, key: &str) -> Result<(Vec<usize>, Vec<f64>)> {
    let (mut member, h) = open_member(archive, path, key)?;
    let err = |m: String| npz_err(path, Some(key), m);
    if h.kind == Kind::Bool || (h.kind == Kind::Float && h.size == 2) {
        return Err(err(format!(
            "dtype {:?} is not a float32/float64 array",
            h.descr
        )));
    }
    if h.fortran_order && h.shape.len() > 2 {
        return Err(err(format!(
            "Fortran-order arrays with {} dimensions are not supported",
            h.shape.len()
        )));
    }
    let n = h.elem_count().map_err(err)?;
    let mut values = Vec::with_capacity(n);
    let mut buf = vec![0u8; 1 << 16];
    let mut left = n;
    while left > 0 {
        let take = left.min(buf.len() / h.size);
        let bytes = &mut buf[..take * h.size];
        read_data(&mut member, bytes, path, key)?;
        for c in bytes.chunks_exact(h.size) {
            let mut b = [0u8; 8];
            b[..h.size].copy_from_slice(c);
            if h.big_endian {
                b[..h.size].reverse();
            }
            values.push(match (h.kind, h.size) {
                (Kind::Float, 8) => f64::from_le_bytes(b),
                (Kind::Float, _) => f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64,
                (Kind::Int, s) => {
                    let shift = 64 - 8 * s as u32;
                    ((i64::from_le_bytes(b) << shift) >> shift) as f64
                }
                (_, _) => u64::from_le_bytes(b) as f64,
            });
        }
        left -= take;
    }
    expect_end(&mut member, path, key)?;
    if h.fortran_order && h.shape.len() == 2 {
        let (rows, cols) = (h.shape[0], h.shape[1]);
        let mut c_order = vec![0.0; n];
        for (k, v) in values.iter().enumerate() {
            c_order[(k % rows) * cols + k / rows] = *v;
        }
        values = c_order;
    }
    Ok((h.shape, values))
}

/// pytorch-fid statistics: `mu` [d] and `sigma` [d,d], float64 or float32 (see
/// [`load_npz_stats_named`]).
pub fn load_stats_npz(path: impl AsRef<Path>) -> Result<FeatureStats> {
    load_npz_stats_named(path, "mu", "sigma")
}

/// Statistics stored under any pair of keys, e.g. ADM's sFID statistics `mu_s` [2023] /
/// `sigma_s` [2023,2023]. `mu` must be 1-d [d] and `sigma` [d,d]; float64 or float32 (converted
/// exactly to f64); all values finite. The sample count is read from a `count` member if there is
/// one (files written by [`save_stats_npz`]) and is 0 (unknown) otherwise.
pub fn load_npz_stats_named(
    path: impl AsRef<Path>,
    mu_key: &str,
    sigma_key: &str,
) -> Result<FeatureStats> {
    let path = path.as_ref();
    let mut archive = open_archive(path)?;
    // Check both keys before reading anything large.
    for key in [mu_key, sigma_key] {
        if !has_key(&archive, key) {
            let have = keys(&archive).join(", ");
            return Err(npz_err(
                path,
                Some(key),
                format!("not in the archive (it holds: {have})"),
            ));
        }
    }
    let finite = |key: &str, v: &[f64], cols: usize| match v.iter().position(|x| !x.is_finite()) {
        None => Ok(()),
        Some(i) => {
            let at = if cols > 1 {
                format!("[{}, {}]", i / cols, i % cols)
            } else {
                format!("[{i}]")
            };
            Err(npz_err(
                path,
                Some(key),
                format!("value at {at} is not finite ({})", v[i]),
            ))
        }
    };
    let (mu_shape, mu) = read_f64_array(&mut archive, path, mu_key)?;
    let [d] = mu_shape[..] else {
        return Err(npz_err(
            path,
            Some(mu_key),
            format!("expected a 1-d mean vector, got shape {mu_shape:?}"),
        ));
    };
    let (sigma_shape, sigma) = read_f64_array(&mut archive, path, sigma_key)?;
    if sigma_shape != [d, d] {
        return Err(npz_err(
            path,
            Some(sigma_key),
            format!("expected shape [{d}, {d}] to match `{mu_key}` [{d}], got {sigma_shape:?}"),
        ));
    }
    finite(mu_key, &mu, 1)?;
    finite(sigma_key, &sigma, d)?;
    let count = if has_key(&archive, "count") {
        let (shape, v) = read_f64_array(&mut archive, path, "count")?;
        match v[..] {
            [c] if c >= 0.0 && c.fract() == 0.0 && shape.len() <= 1 => c as usize,
            _ => {
                return Err(npz_err(
                    path,
                    Some("count"),
                    format!("expected one non-negative integer, got shape {shape:?}"),
                ))
            }
        }
    } else {
        0
    };
    if d == 0 {
        return Err(npz_err(path, Some(mu_key), "empty mean vector"));
    }
    let stats = FeatureStats {
        mu,
        sigma,
        dim: d,
        count,
        factor: None,
    };
    let factor_key = format!("{sigma_key}_factor");
    if !has_key(&archive, &factor_key) {
        return Ok(stats);
    }
    let (shape, data) = read_f64_array(&mut archive, path, &factor_key)?;
    let cols = match shape[..] {
        [rows, cols] if rows == d => cols,
        _ => {
            return Err(npz_err(
                path,
                Some(&factor_key),
                format!("expected shape [{d}, k] to match `{sigma_key}`, got {shape:?}"),
            ))
        }
    };
    stats
        .with_factor(LowRankFactor { cols, data })
        .map_err(|e| npz_err(path, Some(&factor_key), e.to_string()))
}

/// An ADM-style sample batch: `key` (usually `arr_0`) uint8 [N,H,W,3] in NHWC. Grayscale
/// [N,H,W] or [N,H,W,1] is repeated to RGB, [N,H,W,4] drops alpha; other shapes or dtypes are an
/// error. Images are decoded one at a time from the (possibly deflated) member.
pub fn load_npz_images(path: impl AsRef<Path>, key: &str) -> Result<Vec<RgbImage>> {
    let path = path.as_ref();
    let mut archive = open_archive(path)?;
    let (mut member, h) = open_member(&mut archive, path, key)?;
    let err = |m: String| npz_err(path, Some(key), m);
    if h.kind != Kind::UInt || h.size != 1 {
        return Err(err(format!(
            "expected uint8 images, got dtype {:?}",
            h.descr
        )));
    }
    let (n, ht, wd, ch) = match h.shape[..] {
        [n, ht, wd] => (n, ht, wd, 1),
        [n, ht, wd, c @ (1 | 3 | 4)] => (n, ht, wd, c),
        _ => {
            return Err(err(format!(
                "expected images of shape [N,H,W,3] (or [N,H,W], [N,H,W,1], [N,H,W,4]), got {:?}",
                h.shape
            )))
        }
    };
    h.elem_count().map_err(err)?; // no overflow in the sizes below
    if h.fortran_order {
        return Err(err("Fortran-order image arrays are not supported".into()));
    }
    let (w32, h32) = match (u32::try_from(wd), u32::try_from(ht)) {
        (Ok(w), Ok(hh)) => (w, hh),
        _ => return Err(err(format!("image size {ht}x{wd} is too large"))),
    };
    let per = ht * wd * ch;
    let mut buf = vec![0u8; per];
    let mut images = Vec::with_capacity(n);
    for _ in 0..n {
        read_data(&mut member, &mut buf, path, key)?;
        let rgb: Vec<u8> = match ch {
            3 => buf.clone(),
            1 => buf.iter().flat_map(|&g| [g, g, g]).collect(),
            _ => buf
                .chunks_exact(4)
                .flat_map(|p| [p[0], p[1], p[2]])
                .collect(),
        };
        images.push(RgbImage::from_raw(w32, h32, rgb).expect("buffer size matches dimensions"));
    }
    expect_end(&mut member, path, key)?;
    Ok(images)
}

// ------------------------------------------------------------------------------------------
// writing
// ------------------------------------------------------------------------------------------

fn write_member<W: Write + Seek>(
    zip: &mut zip::ZipWriter<W>,
    name: &str,
    descr: &str,
    shape: &[usize],
    data: &[u8],
) -> zip::result::ZipResult<()> {
    let header = npy_header_bytes(descr, shape);
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .large_file(header.len() + data.len() >= u32::MAX as usize);
    zip.start_file(format!("{name}.npy"), options)?;
    zip.write_all(&header)?;
    zip.write_all(data)?;
    Ok(())
}

fn f64_bytes(v: &[f64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Writes `stats` like `np.savez_compressed(path, mu=mu, sigma=sigma)` (plus `count` when known,
/// see the module docs), atomically: a temporary file in the same folder, synced, then renamed
/// over `path`. Loading it back with [`load_stats_npz`] gives bit-identical statistics.
pub fn save_stats_npz(path: impl AsRef<Path>, stats: &FeatureStats) -> Result<()> {
    save_stats_sets_npz(path, &[("mu", "sigma", stats)])
}

/// FID statistics and, optionally, sFID statistics in one file, with ADM's key names
/// (`mu`, `sigma`, `mu_s`, `sigma_s`): pytorch-fid reads the first two and ignores the rest.
pub fn save_fid_stats_npz(
    path: impl AsRef<Path>,
    fid: &FeatureStats,
    sfid: Option<&FeatureStats>,
) -> Result<()> {
    let mut sets = vec![("mu", "sigma", fid)];
    if let Some(s) = sfid {
        sets.push(("mu_s", "sigma_s", s));
    }
    save_stats_sets_npz(path, &sets)
}

/// Writes each `(mu_key, sigma_key, stats)` set (and `count` of the first) atomically.
fn save_stats_sets_npz(path: impl AsRef<Path>, sets: &[(&str, &str, &FeatureStats)]) -> Result<()> {
    let path = path.as_ref();
    for (_, _, stats) in sets {
        stats
            .validate()
            .map_err(|e| npz_err(path, None, format!("refusing to save: {e}")))?;
    }
    let file_name = path
        .file_name()
        .ok_or_else(|| npz_err(path, None, "not a file path"))?;
    static SAVES: AtomicUsize = AtomicUsize::new(0);
    let tmp: PathBuf = path.with_file_name(format!(
        ".{}.tmp{}-{}",
        file_name.to_string_lossy(),
        std::process::id(),
        SAVES.fetch_add(1, Ordering::Relaxed)
    ));
    let io_err = |source: std::io::Error| FidError::Io {
        path: tmp.display().to_string(),
        source,
    };
    let write = || -> Result<()> {
        let file = File::create(&tmp).map_err(io_err)?;
        let mut zip = zip::ZipWriter::new(BufWriter::new(file));
        let zerr = |e: zip::result::ZipError| npz_err(&tmp, None, format!("cannot write: {e}"));
        for (mu_key, sigma_key, stats) in sets {
            write_member(&mut zip, mu_key, "<f8", &[stats.dim], &f64_bytes(&stats.mu))
                .map_err(zerr)?;
            write_member(
                &mut zip,
                sigma_key,
                "<f8",
                &[stats.dim, stats.dim],
                &f64_bytes(&stats.sigma),
            )
            .map_err(zerr)?;
            if let Some(f) = &stats.factor {
                write_member(
                    &mut zip,
                    &format!("{sigma_key}_factor"),
                    "<f8",
                    &[stats.dim, f.cols],
                    &f64_bytes(&f.data),
                )
                .map_err(zerr)?;
            }
        }
        if let Some((_, _, first)) = sets.first() {
            if first.count > 0 {
                write_member(
                    &mut zip,
                    "count",
                    "<i8",
                    &[],
                    &(first.count as i64).to_le_bytes(),
                )
                .map_err(zerr)?;
            }
        }
        let file = zip
            .finish()
            .map_err(zerr)?
            .into_inner()
            .map_err(|e| io_err(e.into_error()))?;
        file.sync_all().map_err(io_err)?;
        Ok(())
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, path).map_err(|source| {
        let _ = std::fs::remove_file(&tmp);
        FidError::Io {
            path: path.display().to_string(),
            source,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_roundtrip_and_alignment() {
        for shape in [vec![], vec![64], vec![2048, 2048], vec![3, 4, 5]] {
            let b = npy_header_bytes("<f8", &shape);
            assert_eq!(b.len() % 64, 0);
            let h = read_npy_header(&mut &b[..]).unwrap();
            assert_eq!(h.shape, shape);
            assert_eq!(
                (h.kind, h.size, h.big_endian, h.fortran_order),
                (Kind::Float, 8, false, false)
            );
        }
    }

    #[test]
    fn header_variants() {
        let h = parse_header_dict(
            "{'descr': '|u1', 'fortran_order': False, 'shape': (2, 32, 32, 3), }",
        )
        .unwrap();
        assert_eq!(
            (h.kind, h.size, h.shape.clone()),
            (Kind::UInt, 1, vec![2, 32, 32, 3])
        );
        let h =
            parse_header_dict("{'descr': '>f4', 'fortran_order': True, 'shape': (3,), }").unwrap();
        assert!(h.big_endian && h.fortran_order && h.size == 4);
        assert!(parse_header_dict(
            "{'descr': [('a', '<f8')], 'fortran_order': False, 'shape': (1,), }"
        )
        .unwrap_err()
        .contains("structured"));
        assert!(
            parse_header_dict("{'descr': '<c16', 'fortran_order': False, 'shape': (1,), }")
                .unwrap_err()
                .contains("unsupported dtype")
        );
        assert!(read_npy_header(&mut &b"\x93NUMPZ\x01\x00"[..])
            .unwrap_err()
            .contains("magic"));
    }
}
