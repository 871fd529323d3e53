//! Reading image sets: folders, zips, conversions and the errors users meet.

use std::io::Write;
use std::path::Path;

use dmq_eval::imageset::{ImageSetError, ImageSource};
use image::{GrayImage, RgbImage, RgbaImage};

fn png_bytes(img: image::DynamicImage) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

fn write_zip(path: &Path, files: &[(&str, Vec<u8>)]) {
    let mut z = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    for (name, bytes) in files {
        z.start_file(*name, zip::write::SimpleFileOptions::default())
            .unwrap();
        z.write_all(bytes).unwrap();
    }
    z.finish().unwrap();
}

fn collect(src: &ImageSource, chunk: usize) -> Result<Vec<RgbImage>, ImageSetError> {
    let mut all = Vec::new();
    src.for_each_chunk(chunk, |c| {
        all.extend_from_slice(c);
        Ok(())
    })?;
    Ok(all)
}

#[test]
fn folder_and_zip_give_the_same_sorted_images() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("imgs");
    std::fs::create_dir(&dir).unwrap();
    let mut files = Vec::new();
    for i in [2u8, 0, 1] {
        let img = RgbImage::from_pixel(4, 4, image::Rgb([i * 50, 7, 9]));
        let bytes = png_bytes(img.into());
        std::fs::write(dir.join(format!("{i:03}.png")), &bytes).unwrap();
        files.push((format!("x/{i:03}.png"), bytes));
    }
    std::fs::write(dir.join("notes.txt"), "not an image").unwrap();
    let zip_path = tmp.path().join("imgs.zip");
    let named: Vec<(&str, Vec<u8>)> = files.iter().map(|(n, b)| (n.as_str(), b.clone())).collect();
    write_zip(&zip_path, &named);

    let from_dir = collect(&ImageSource::from_path(&dir).unwrap(), 2).unwrap();
    let from_zip = collect(&ImageSource::from_path(&zip_path).unwrap(), 2).unwrap();
    assert_eq!(from_dir.len(), 3);
    assert_eq!(from_dir, from_zip);
    assert_eq!(from_dir[1].get_pixel(0, 0).0, [50, 7, 9], "sorted by name");
    assert_eq!(ImageSource::from_path(&dir).unwrap().len().unwrap(), 3);
}

#[test]
fn grayscale_is_repeated_and_alpha_dropped() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("a.png"),
        png_bytes(GrayImage::from_pixel(3, 3, image::Luma([77])).into()),
    )
    .unwrap();
    std::fs::write(
        tmp.path().join("b.png"),
        png_bytes(RgbaImage::from_pixel(3, 3, image::Rgba([10, 20, 30, 0])).into()),
    )
    .unwrap();
    let imgs = collect(&ImageSource::from_path(tmp.path()).unwrap(), 8).unwrap();
    assert_eq!(imgs[0].get_pixel(1, 1).0, [77, 77, 77]);
    assert_eq!(imgs[1].get_pixel(1, 1).0, [10, 20, 30]);
}

#[test]
fn clear_errors_for_bad_sets() {
    let tmp = tempfile::tempdir().unwrap();
    // mixed sizes
    let mixed = tmp.path().join("mixed");
    std::fs::create_dir(&mixed).unwrap();
    std::fs::write(mixed.join("a.png"), png_bytes(RgbImage::new(4, 4).into())).unwrap();
    std::fs::write(mixed.join("b.png"), png_bytes(RgbImage::new(5, 4).into())).unwrap();
    let e = collect(&ImageSource::from_path(&mixed).unwrap(), 8)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("mixed image sizes") && e.contains("a.png") && e.contains("b.png"),
        "{e}"
    );
    // corrupt image
    let bad = tmp.path().join("bad");
    std::fs::create_dir(&bad).unwrap();
    std::fs::write(bad.join("broken.png"), b"\x89PNG garbage").unwrap();
    let e = collect(&ImageSource::from_path(&bad).unwrap(), 8)
        .unwrap_err()
        .to_string();
    assert!(e.contains("broken.png") && e.contains("decode"), "{e}");
    // empty folder
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let e = collect(&ImageSource::from_path(&empty).unwrap(), 8)
        .unwrap_err()
        .to_string();
    assert!(e.contains("no images"), "{e}");
    // not a zip
    let fake = tmp.path().join("fake.zip");
    std::fs::write(&fake, b"nope").unwrap();
    let e = ImageSource::from_path(&fake)
        .unwrap()
        .len()
        .unwrap_err()
        .to_string();
    assert!(e.contains("fake.zip") && e.contains("zip"), "{e}");
    // missing path
    let e = ImageSource::from_path(&tmp.path().join("nothing"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("nothing"), "{e}");
}

#[test]
fn reads_the_shared_cifar_test_zip() {
    let p = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/data/cifar10/cifar10-test.zip");
    let src = ImageSource::from_path(&p).unwrap();
    assert_eq!(src.len().unwrap(), 10_000);
    let mut first = None;
    src.for_each_chunk(64, |c| {
        if first.is_none() {
            first = Some(c[0].clone());
        }
        Err(ImageSetError::Other("stop early".into()))
    })
    .unwrap_err();
    assert_eq!(first.unwrap().dimensions(), (32, 32));
}

#[test]
fn dmq_sample_folders_skip_their_grid() {
    let tmp = tempfile::tempdir().unwrap();
    for i in 0..2 {
        std::fs::write(
            tmp.path().join(format!("{i:06}.png")),
            png_bytes(RgbImage::new(4, 4).into()),
        )
        .unwrap();
    }
    std::fs::write(
        tmp.path().join("grid.png"),
        png_bytes(RgbImage::new(8, 4).into()),
    )
    .unwrap();
    let src = ImageSource::from_path(tmp.path()).unwrap();
    assert!(
        collect(&src, 8).is_err(),
        "without samples.json the grid is an ordinary (mixed-size) image"
    );
    std::fs::write(tmp.path().join("samples.json"), "{}").unwrap();
    assert_eq!(collect(&src, 8).unwrap().len(), 2);
}
