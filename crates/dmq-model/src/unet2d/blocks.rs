//! The down, mid and up blocks of `UNet2DModel`. A down block returns every intermediate state
//! that the matching up block concatenates back (the skip connections).

use candle_core::Tensor;

use crate::ctx::Ctx;
use crate::error::Result;
use crate::layers::{Conv2d, LayerMut};
use crate::unet2d::attention::SpatialAttention;
use crate::unet2d::resnet::{ResnetBlock2D, ResnetSpec};
use crate::weights::WeightStore;

/// Attention settings shared by the blocks of one model.
#[derive(Clone, Copy)]
pub struct AttnSpec {
    pub head_dim: Option<usize>,
    pub groups: Option<usize>,
    pub eps: f64,
}

impl AttnSpec {
    fn load(
        &self,
        w: &WeightStore,
        path: &str,
        channels: usize,
        rescale: f64,
    ) -> Result<SpatialAttention> {
        SpatialAttention::load(
            w,
            path,
            channels,
            self.head_dim.unwrap_or(channels),
            self.groups,
            self.eps,
            rescale,
        )
    }
}

/// `Downsample2D` with a convolution: stride 2, and when `padding` is 0 diffusers pads only the
/// right and bottom edge by one pixel first.
pub struct Downsample {
    pub conv: Conv2d,
    pub pad_right_bottom: bool,
}

impl Downsample {
    /// `downsamplers.0.conv` of a block at `path` (3x3, stride 2, `padding`).
    pub fn load(w: &WeightStore, path: &str, channels: usize, padding: usize) -> Result<Self> {
        Ok(Self {
            conv: Conv2d::load(
                w,
                &format!("{path}.downsamplers.0.conv"),
                channels,
                channels,
                3,
                2,
                padding,
            )?,
            pad_right_bottom: padding == 0,
        })
    }

    pub fn forward(&self, x: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        if self.pad_right_bottom {
            let x = x.pad_with_zeros(3, 0, 1)?.pad_with_zeros(2, 0, 1)?;
            self.conv.forward(&x, ctx)
        } else {
            self.conv.forward(x, ctx)
        }
    }
}

/// `Upsample2D`: nearest-neighbour 2x, then a 3x3 convolution.
pub struct Upsample {
    pub conv: Conv2d,
}

impl Upsample {
    /// `upsamplers.0.conv` of a block at `path`.
    pub fn load(w: &WeightStore, path: &str, channels: usize) -> Result<Self> {
        Ok(Self {
            conv: Conv2d::load(
                w,
                &format!("{path}.upsamplers.0.conv"),
                channels,
                channels,
                3,
                1,
                1,
            )?,
        })
    }

    pub fn forward(&self, x: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        self.conv.forward(&x.upsample_nearest2d(2 * h, 2 * w)?, ctx)
    }
}

/// Layers of interleaved resnets and (optional) attentions, in forward order.
fn resnets_and_attentions_mut<'a>(
    resnets: &'a mut [ResnetBlock2D],
    attentions: &'a mut [SpatialAttention],
    out: &mut Vec<LayerMut<'a>>,
) {
    let mut attns = attentions.iter_mut();
    for r in resnets.iter_mut() {
        r.layers_mut(out);
        if let Some(a) = attns.next() {
            a.layers_mut(out);
        }
    }
}

/// `DownBlock2D` (no attention) or `AttnDownBlock2D`.
pub struct DownBlock {
    pub resnets: Vec<ResnetBlock2D>,
    pub attentions: Vec<SpatialAttention>,
    pub downsampler: Option<Downsample>,
}

#[allow(clippy::too_many_arguments)]
impl DownBlock {
    pub fn load(
        w: &WeightStore,
        path: &str,
        in_c: usize,
        out_c: usize,
        layers: usize,
        with_attention: bool,
        add_downsample: bool,
        downsample_padding: usize,
        res: ResnetSpec,
        attn: AttnSpec,
    ) -> Result<Self> {
        let mut resnets = Vec::new();
        let mut attentions = Vec::new();
        for i in 0..layers {
            let cin = if i == 0 { in_c } else { out_c };
            resnets.push(ResnetBlock2D::load(
                w,
                &format!("{path}.resnets.{i}"),
                cin,
                out_c,
                res,
            )?);
            if with_attention {
                attentions.push(attn.load(w, &format!("{path}.attentions.{i}"), out_c, 1.0)?);
            }
        }
        let downsampler = if add_downsample {
            Some(Downsample::load(w, path, out_c, downsample_padding)?)
        } else {
            None
        };
        Ok(Self {
            resnets,
            attentions,
            downsampler,
        })
    }

    /// Its conv and linear layers in forward order.
    pub fn layers_mut<'a>(&'a mut self, out: &mut Vec<LayerMut<'a>>) {
        resnets_and_attentions_mut(&mut self.resnets, &mut self.attentions, out);
        if let Some(d) = &mut self.downsampler {
            out.push(LayerMut::Conv(&mut d.conv));
        }
    }

    /// Returns the block output and the states it hands to the up path, in order.
    pub fn forward(
        &self,
        x: &Tensor,
        temb_act: Option<&Tensor>,
        ctx: &Ctx,
    ) -> Result<(Tensor, Vec<Tensor>)> {
        let mut h = x.clone();
        let mut states = Vec::with_capacity(self.resnets.len() + 1);
        for (i, resnet) in self.resnets.iter().enumerate() {
            h = resnet.forward(&h, temb_act, ctx)?;
            if let Some(attn) = self.attentions.get(i) {
                h = attn.forward(&h, ctx)?;
            }
            states.push(h.clone());
        }
        if let Some(down) = &self.downsampler {
            h = down.forward(&h, ctx)?;
            states.push(h.clone());
        }
        Ok((h, states))
    }
}

/// `UNetMidBlock2D` with one attention layer: resnet, attention, resnet.
pub struct MidBlock {
    pub resnets: Vec<ResnetBlock2D>,
    pub attention: Option<SpatialAttention>,
}

impl MidBlock {
    pub fn load(
        w: &WeightStore,
        path: &str,
        c: usize,
        add_attention: bool,
        res: ResnetSpec,
        attn: AttnSpec,
    ) -> Result<Self> {
        let resnets = vec![
            ResnetBlock2D::load(w, &format!("{path}.resnets.0"), c, c, res)?,
            ResnetBlock2D::load(w, &format!("{path}.resnets.1"), c, c, res)?,
        ];
        let attention = if add_attention {
            Some(attn.load(
                w,
                &format!("{path}.attentions.0"),
                c,
                res.output_scale_factor,
            )?)
        } else {
            None
        };
        Ok(Self { resnets, attention })
    }

    /// Its conv and linear layers in forward order.
    pub fn layers_mut<'a>(&'a mut self, out: &mut Vec<LayerMut<'a>>) {
        let (first, rest) = self.resnets.split_at_mut(1);
        first[0].layers_mut(out);
        if let Some(a) = &mut self.attention {
            a.layers_mut(out);
        }
        rest[0].layers_mut(out);
    }

    pub fn forward(&self, x: &Tensor, temb_act: Option<&Tensor>, ctx: &Ctx) -> Result<Tensor> {
        let mut h = self.resnets[0].forward(x, temb_act, ctx)?;
        if let Some(attn) = &self.attention {
            h = attn.forward(&h, ctx)?;
        }
        self.resnets[1].forward(&h, temb_act, ctx)
    }
}

/// `UpBlock2D` or `AttnUpBlock2D`: each resnet first concatenates one skip state on the channels.
pub struct UpBlock {
    pub resnets: Vec<ResnetBlock2D>,
    pub attentions: Vec<SpatialAttention>,
    pub upsampler: Option<Upsample>,
}

#[allow(clippy::too_many_arguments)]
impl UpBlock {
    pub fn load(
        w: &WeightStore,
        path: &str,
        in_c: usize,
        prev_out_c: usize,
        out_c: usize,
        layers: usize,
        with_attention: bool,
        add_upsample: bool,
        res: ResnetSpec,
        attn: AttnSpec,
    ) -> Result<Self> {
        let mut resnets = Vec::new();
        let mut attentions = Vec::new();
        for i in 0..layers {
            let skip_c = if i == layers - 1 { in_c } else { out_c };
            let cin = if i == 0 { prev_out_c } else { out_c };
            let mut resnet =
                ResnetBlock2D::load(w, &format!("{path}.resnets.{i}"), cin + skip_c, out_c, res)?;
            resnet.input_split = Some(cin);
            resnets.push(resnet);
            if with_attention {
                attentions.push(attn.load(w, &format!("{path}.attentions.{i}"), out_c, 1.0)?);
            }
        }
        let upsampler = if add_upsample {
            Some(Upsample::load(w, path, out_c)?)
        } else {
            None
        };
        Ok(Self {
            resnets,
            attentions,
            upsampler,
        })
    }

    /// Its conv and linear layers in forward order.
    pub fn layers_mut<'a>(&'a mut self, out: &mut Vec<LayerMut<'a>>) {
        resnets_and_attentions_mut(&mut self.resnets, &mut self.attentions, out);
        if let Some(u) = &mut self.upsampler {
            out.push(LayerMut::Conv(&mut u.conv));
        }
    }

    /// `skips` holds this block's skip states, consumed from the back.
    pub fn forward(
        &self,
        x: &Tensor,
        skips: &mut Vec<Tensor>,
        temb_act: Option<&Tensor>,
        ctx: &Ctx,
    ) -> Result<Tensor> {
        let mut h = x.clone();
        for (i, resnet) in self.resnets.iter().enumerate() {
            let skip = skips
                .pop()
                .expect("the UNet hands every up block one skip per resnet");
            h = Tensor::cat(&[&h, &skip], 1)?;
            h = resnet.forward(&h, temb_act, ctx)?;
            if let Some(attn) = self.attentions.get(i) {
                h = attn.forward(&h, ctx)?;
            }
        }
        if let Some(up) = &self.upsampler {
            h = up.forward(&h, ctx)?;
        }
        Ok(h)
    }
}
