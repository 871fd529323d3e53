//! Quantization passes reach every conv/linear layer by path and replace how it computes.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use dmq_model::ctx::Ctx;
use dmq_model::layers::{LayerExec, LayerRef};
use dmq_model::{ModelSource, Timesteps};

/// Calls the float op unchanged, counting calls and remembering the last step index.
struct Passthrough {
    calls: AtomicUsize,
    last_step: AtomicUsize,
}

impl LayerExec for Passthrough {
    fn forward(
        &self,
        layer: &LayerRef,
        x: &Tensor,
        float_op: &dyn Fn(&Tensor, &Tensor) -> dmq_model::Result<Tensor>,
        ctx: &Ctx,
    ) -> dmq_model::Result<Tensor> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.last_step
            .store(ctx.step.unwrap_or(usize::MAX), Ordering::SeqCst);
        float_op(x, layer.weight)
    }
}

/// Replaces the weight by zeros: the output becomes the bias.
struct ZeroWeight;

impl LayerExec for ZeroWeight {
    fn forward(
        &self,
        layer: &LayerRef,
        x: &Tensor,
        float_op: &dyn Fn(&Tensor, &Tensor) -> dmq_model::Result<Tensor>,
        _ctx: &Ctx,
    ) -> dmq_model::Result<Tensor> {
        float_op(x, &layer.weight.zeros_like()?)
    }
}

#[test]
fn layers_are_visited_in_forward_order_and_execs_apply() {
    let mut unet = ModelSource::Embedded
        .resolve()
        .unwrap()
        .load_unet(&Device::Cpu, DType::F32)
        .unwrap();
    let paths = unet.layer_paths();
    let traced: Vec<String> = dmq_model::inspect::inspect(&unet, None)
        .unwrap()
        .layers
        .into_iter()
        .filter(|l| l.kind != "act_matmul")
        .map(|l| l.path)
        .collect();
    assert_eq!(paths, traced, "layers_mut order must be the forward order");
    assert_eq!(paths.len(), 113);

    let x = Tensor::ones((1, 3, 32, 32), DType::F32, &Device::Cpu).unwrap();
    let reference = unet
        .forward(&x, Timesteps::Shared(10.0), None, &Ctx::inference())
        .unwrap();

    let pass = Arc::new(Passthrough {
        calls: AtomicUsize::new(0),
        last_step: AtomicUsize::new(0),
    });
    for mut l in unet.layers_mut() {
        l.set_exec(Some(pass.clone()));
    }
    let y = unet
        .forward(&x, Timesteps::Shared(10.0), None, &Ctx::at_step(7))
        .unwrap();
    assert_eq!(pass.calls.load(Ordering::SeqCst), 113);
    assert_eq!(pass.last_step.load(Ordering::SeqCst), 7);
    let diff = (&y - &reference)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert_eq!(diff, 0.0);

    for mut l in unet.layers_mut() {
        let exec: Option<Arc<dyn LayerExec>> = if l.path() == "conv_out" {
            Some(Arc::new(ZeroWeight))
        } else {
            None
        };
        l.set_exec(exec);
    }
    let y = unet
        .forward(&x, Timesteps::Shared(10.0), None, &Ctx::inference())
        .unwrap();
    let bias = unet
        .conv_out
        .bias
        .clone()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    for (c, b) in bias.iter().enumerate() {
        let ch = y
            .get(0)
            .unwrap()
            .get(c)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert!(ch.iter().all(|v| v == b), "channel {c} is not its bias");
    }
}
