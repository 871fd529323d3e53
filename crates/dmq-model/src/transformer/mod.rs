//! The transformer pieces shared by the UNet's spatial transformer (`Transformer2DModel`), DiT
//! and PixArt: diffusers' `Attention`, `FeedForward`, the adaptive norms and
//! `BasicTransformerBlock`.

pub mod attention;
pub mod block;
pub mod feed_forward;
pub mod norms;
pub mod spatial;

pub use attention::Attention;
pub use block::{BasicTransformerBlock, BlockCond, BlockNorm};
pub use feed_forward::{Activation, FeedForward};
pub use spatial::SpatialTransformer;
