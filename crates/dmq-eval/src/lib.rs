//! Evaluation for dmq. For now: turning model outputs into images and writing them safely.

pub mod images;
