//! `dmq sample` as a user runs it: same seed, same images (whatever the batch size), resume after
//! an interruption, and refusal to mix runs in one folder.

use std::path::Path;
use std::process::Command;

fn dmq(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_dmq"))
        .args(args)
        .output()
        .expect("dmq runs")
}

fn sample(out: &Path, batch: &str, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "sample", "--steps", "4", "--num", "3", "--seed", "11", "--batch", batch, "--out",
    ];
    let out = out.to_str().unwrap();
    args.push(out);
    args.extend_from_slice(extra);
    dmq(&args)
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn same_seed_same_images_any_batch_size_and_resume() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let r = sample(&a, "3", &[]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let r = sample(&b, "2", &[]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    for name in ["000000.png", "000001.png", "000002.png", "grid.png"] {
        assert_eq!(
            read(&a.join(name)),
            read(&b.join(name)),
            "{name} differs between batch sizes"
        );
    }
    // The images are real pictures, not constant.
    let img = image::open(a.join("000001.png")).unwrap().to_rgb8();
    assert_eq!(img.dimensions(), (32, 32));
    let first = img.get_pixel(0, 0);
    assert!(img.pixels().any(|p| p != first));
    // Manifest says what was run.
    let manifest: serde_json::Value =
        serde_json::from_slice(&read(&a.join("samples.json"))).unwrap();
    assert_eq!(manifest["complete"], true);
    assert_eq!(manifest["protocol"]["steps"], 4);
    assert_eq!(manifest["protocol"]["seed"], 11);

    // Interrupted run: one image missing; rerunning samples only that one, identically.
    let kept = read(&a.join("000002.png"));
    std::fs::remove_file(a.join("000002.png")).unwrap();
    let r = sample(&a, "3", &[]);
    assert!(r.status.success());
    assert!(String::from_utf8_lossy(&r.stderr).contains("resuming: 2 of 3"));
    assert_eq!(read(&a.join("000002.png")), kept);

    // A different seed in the same folder is refused, unless --overwrite.
    let r = dmq(&[
        "sample",
        "--steps",
        "4",
        "--num",
        "3",
        "--seed",
        "12",
        "--out",
        a.to_str().unwrap(),
    ]);
    assert!(!r.status.success());
    assert!(String::from_utf8_lossy(&r.stderr).contains("--overwrite"));
}

#[test]
fn different_seeds_differ_and_bad_flags_are_clear() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    assert!(sample(&a, "3", &[]).status.success());
    let r = dmq(&[
        "sample",
        "--steps",
        "4",
        "--num",
        "1",
        "--seed",
        "99",
        "--out",
        b.to_str().unwrap(),
    ]);
    assert!(r.status.success());
    assert_ne!(read(&a.join("000000.png")), read(&b.join("000000.png")));

    let r = dmq(&[
        "sample",
        "--model",
        "/no/such/model",
        "--out",
        b.to_str().unwrap(),
    ]);
    assert!(!r.status.success());
    assert!(String::from_utf8_lossy(&r.stderr).contains("no such folder"));
    let r = dmq(&[
        "sample",
        "--steps",
        "0",
        "--out",
        b.to_str().unwrap(),
        "--overwrite",
    ]);
    assert!(!r.status.success());
    let r = dmq(&["sample", "--device", "cuda", "--out", b.to_str().unwrap()]);
    assert!(!r.status.success());
    assert!(String::from_utf8_lossy(&r.stderr).contains("cuda"));
}

#[test]
fn inspect_lists_layers_by_checkpoint_path() {
    let r = dmq(&["inspect", "--json"]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let v: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    assert_eq!(v["report"]["params"], 2_245_763);
    let layers = v["report"]["layers"].as_array().unwrap();
    assert!(layers
        .iter()
        .any(|l| l["path"] == "mid_block.attentions.0.to_v"));
    assert_eq!(layers.iter().filter(|l| l["kind"] == "conv2d").count(), 65);
}
