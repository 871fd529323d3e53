//! The cross-attention blocks of `UNet2DConditionModel`: `CrossAttnDownBlock2D`,
//! `UNetMidBlock2DCrossAttn`, `CrossAttnUpBlock2D`. They are the UNet2D blocks with a spatial
//! transformer after every resnet; the plain `DownBlock2D`/`UpBlock2D` are reused as they are.

use candle_core::Tensor;

use crate::ctx::Ctx;
use crate::error::Result;
use crate::layers::LayerMut;
use crate::transformer::block::BlockSpec;
use crate::transformer::SpatialTransformer;
use crate::unet2d::blocks::{DownBlock, Downsample, UpBlock, Upsample};
use crate::unet2d::resnet::{ResnetBlock2D, ResnetSpec};
use crate::weights::WeightStore;

/// How the blocks of one model build their spatial transformers.
#[derive(Clone, Copy)]
pub struct TransformerSpec {
    pub groups: usize,
    pub layers: usize,
    pub linear_projection: bool,
    /// Block settings, `dim`/`heads`/`head_dim` filled per block by [`TransformerSpec::load`].
    pub block: BlockSpec,
}

impl TransformerSpec {
    /// A transformer over `channels` channels with `heads` heads (head dim `channels / heads`).
    pub fn load(
        &self,
        w: &WeightStore,
        path: &str,
        channels: usize,
        heads: usize,
    ) -> Result<SpatialTransformer> {
        let block = BlockSpec {
            dim: channels,
            heads,
            head_dim: channels / heads,
            ..self.block
        };
        SpatialTransformer::load(
            w,
            path,
            channels,
            self.groups,
            self.layers,
            self.linear_projection,
            block,
        )
    }
}

fn interleaved_layers_mut<'a>(
    resnets: &'a mut [ResnetBlock2D],
    attentions: &'a mut [SpatialTransformer],
    out: &mut Vec<LayerMut<'a>>,
) {
    for (r, a) in resnets.iter_mut().zip(attentions.iter_mut()) {
        r.layers_mut(out);
        a.layers_mut(out);
    }
}

/// `CrossAttnDownBlock2D`.
pub struct CrossAttnDownBlock {
    pub resnets: Vec<ResnetBlock2D>,
    pub attentions: Vec<SpatialTransformer>,
    pub downsampler: Option<Downsample>,
}

#[allow(clippy::too_many_arguments)]
impl CrossAttnDownBlock {
    pub fn load(
        w: &WeightStore,
        path: &str,
        in_c: usize,
        out_c: usize,
        layers: usize,
        heads: usize,
        add_downsample: Option<usize>,
        res: ResnetSpec,
        tf: TransformerSpec,
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
            attentions.push(tf.load(w, &format!("{path}.attentions.{i}"), out_c, heads)?);
        }
        Ok(Self {
            resnets,
            attentions,
            downsampler: match add_downsample {
                Some(padding) => Some(Downsample::load(w, path, out_c, padding)?),
                None => None,
            },
        })
    }

    pub fn layers_mut<'a>(&'a mut self, out: &mut Vec<LayerMut<'a>>) {
        interleaved_layers_mut(&mut self.resnets, &mut self.attentions, out);
        if let Some(d) = &mut self.downsampler {
            out.push(LayerMut::Conv(&mut d.conv));
        }
    }

    pub fn forward(
        &self,
        x: &Tensor,
        temb_act: &Tensor,
        context: &Tensor,
        ctx: &Ctx,
    ) -> Result<(Tensor, Vec<Tensor>)> {
        let mut h = x.clone();
        let mut states = Vec::with_capacity(self.resnets.len() + 1);
        for (resnet, attn) in self.resnets.iter().zip(&self.attentions) {
            h = resnet.forward(&h, Some(temb_act), ctx)?;
            h = attn.forward(&h, context, ctx)?;
            states.push(h.clone());
        }
        if let Some(down) = &self.downsampler {
            h = down.forward(&h, ctx)?;
            states.push(h.clone());
        }
        Ok((h, states))
    }
}

/// `UNetMidBlock2DCrossAttn` (one transformer): resnet, transformer, resnet.
pub struct CrossAttnMidBlock {
    pub resnets: Vec<ResnetBlock2D>,
    pub attention: SpatialTransformer,
}

impl CrossAttnMidBlock {
    pub fn load(
        w: &WeightStore,
        path: &str,
        c: usize,
        heads: usize,
        res: ResnetSpec,
        tf: TransformerSpec,
    ) -> Result<Self> {
        Ok(Self {
            resnets: vec![
                ResnetBlock2D::load(w, &format!("{path}.resnets.0"), c, c, res)?,
                ResnetBlock2D::load(w, &format!("{path}.resnets.1"), c, c, res)?,
            ],
            attention: tf.load(w, &format!("{path}.attentions.0"), c, heads)?,
        })
    }

    pub fn layers_mut<'a>(&'a mut self, out: &mut Vec<LayerMut<'a>>) {
        let (first, rest) = self.resnets.split_at_mut(1);
        first[0].layers_mut(out);
        self.attention.layers_mut(out);
        rest[0].layers_mut(out);
    }

    pub fn forward(
        &self,
        x: &Tensor,
        temb_act: &Tensor,
        context: &Tensor,
        ctx: &Ctx,
    ) -> Result<Tensor> {
        let h = self.resnets[0].forward(x, Some(temb_act), ctx)?;
        let h = self.attention.forward(&h, context, ctx)?;
        self.resnets[1].forward(&h, Some(temb_act), ctx)
    }
}

/// `CrossAttnUpBlock2D`: each resnet first concatenates one skip state on the channels.
pub struct CrossAttnUpBlock {
    pub resnets: Vec<ResnetBlock2D>,
    pub attentions: Vec<SpatialTransformer>,
    pub upsampler: Option<Upsample>,
}

#[allow(clippy::too_many_arguments)]
impl CrossAttnUpBlock {
    pub fn load(
        w: &WeightStore,
        path: &str,
        in_c: usize,
        prev_out_c: usize,
        out_c: usize,
        layers: usize,
        heads: usize,
        add_upsample: bool,
        res: ResnetSpec,
        tf: TransformerSpec,
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
            attentions.push(tf.load(w, &format!("{path}.attentions.{i}"), out_c, heads)?);
        }
        Ok(Self {
            resnets,
            attentions,
            upsampler: if add_upsample {
                Some(Upsample::load(w, path, out_c)?)
            } else {
                None
            },
        })
    }

    pub fn layers_mut<'a>(&'a mut self, out: &mut Vec<LayerMut<'a>>) {
        interleaved_layers_mut(&mut self.resnets, &mut self.attentions, out);
        if let Some(u) = &mut self.upsampler {
            out.push(LayerMut::Conv(&mut u.conv));
        }
    }

    pub fn forward(
        &self,
        x: &Tensor,
        skips: &mut Vec<Tensor>,
        temb_act: &Tensor,
        context: &Tensor,
        ctx: &Ctx,
    ) -> Result<Tensor> {
        let mut h = x.clone();
        for (resnet, attn) in self.resnets.iter().zip(&self.attentions) {
            let skip = skips
                .pop()
                .expect("the UNet hands every up block one skip per resnet");
            h = Tensor::cat(&[&h, &skip], 1)?;
            h = resnet.forward(&h, Some(temb_act), ctx)?;
            h = attn.forward(&h, context, ctx)?;
        }
        if let Some(up) = &self.upsampler {
            h = up.forward(&h, ctx)?;
        }
        Ok(h)
    }
}

/// A down block of the conditional UNet.
pub enum CondDownBlock {
    Plain(DownBlock),
    CrossAttn(CrossAttnDownBlock),
}

/// An up block of the conditional UNet.
pub enum CondUpBlock {
    Plain(UpBlock),
    CrossAttn(CrossAttnUpBlock),
}
