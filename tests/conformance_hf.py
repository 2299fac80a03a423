"""Conformance cases of HuggingFace's optimizers (``aliases.huggingface``) and of the native
block options they are built from; ``conformance.CASES`` includes them."""

from __future__ import annotations

from conformance import Case, Live, _loss_like, _warmup_cosine

import functional_optim as fo

# eps2 floors the parameters' RMS (about 1 here): tiny parameters make it act; eps1 is added to
# the squared gradients: gradients of 1e-16 (squares of 1e-32) make an eps1 of 1e-30 count
_HF_FLOORS = {"eps.0": Live(grads_scale=1e-16), "eps.1": Live(params_scale=1e-6),
              "eps1": Live(grads_scale=1e-16), "eps2": Live(params_scale=1e-6),
              # the update's RMS is about 1: 0.8 clips every step, away from the kink
              "clip_threshold": Live(value=0.8), "d": Live(value=0.8)}
# without scale_parameter (structural) the step is not relative to the parameters' RMS, so
# eps2, the floor of that RMS, is not read
_UNSCALED = (("other_value", "scale_parameter=False (structural): no parameter scale, so its "
                             "floor eps2 is unused, as in HuggingFace's Adafactor"),)
_HF_UNSCALED = {**_HF_FLOORS, "eps.1": Live(excluded=_UNSCALED), "eps2": Live(excluded=_UNSCALED)}
# Keras's clipping thresholds: below the gradients' norms (~2 per leaf, ~6 in all)
_CLIPS = {"clipnorm": Live(value=0.5), "global_clipnorm": Live(value=1.5),
          "max_norm": Live(value=0.5)}

def _greedy():
    return fo.transforms.scale_by_greedy_lr(lr=0.1, factor=0.5, patience=0, min_lr=1e-3,
                                            max_lr=0.5, smooth=True, window_size=2)


# GreedyLR's decisions: a first value (better than inf: the lr doubles), then rising values
# (each a plateau: the lr halves), or falling ones (each an improvement: it doubles, up to max_lr)
_RISING, _FALLING = (1.0, 2.0, 3.0, 4.0), (1.0, 0.9, 0.8, 0.7)
_GREEDY = {"min_lr": Live(value=0.06, steps=4, values=_RISING),
           "eps": Live(value=0.06, steps=4, values=_RISING),
           "max_lr": Live(steps=4, values=_FALLING),
           "threshold": Live(value=0.08, steps=4, values=_FALLING)}

CASES = [
    Case("scale_by_adam_step_size",
         lambda: fo.scale_by_adam(betas=(0.8, 0.99), eps=1e-6, eps_root=1e-8, amsgrad=True,
                                  bias_correction="step_size")),
    Case("scale_by_adam_no_correction", lambda: fo.scale_by_adam(bias_correction="none")),
    Case("add_decayed_weights_after_step",
         lambda: fo.chain(fo.scale_by_learning_rate(0.1),
                          fo.add_decayed_weights(0.01, after_step=True))),
    Case("clip_by_norm_tensorflow", lambda: fo.clip_by_norm(1.0, formula="tensorflow"),
         live=_CLIPS),
    Case("clip_by_global_norm_tensorflow",
         lambda: fo.clip_by_global_norm(3.0, formula="tensorflow"), live=_CLIPS),
    Case("scale_by_factored_rms_huggingface",
         lambda: fo.scale_by_factored_rms(lr=0.05, eps=(1e-30, 1e-3), weight_decay=0.1,
                                          variant="huggingface", beta1=0.9),
         complex=False, live=_HF_FLOORS, half_in_float32=True),
    Case("scale_by_factored_rms_torch_momentum_fixed_step",
         lambda: fo.scale_by_factored_rms(lr=0.05, relative_step=False,
                                          scale_parameter=False, beta1=0.8),
         complex=False, live=_HF_UNSCALED),
    Case("scale_by_greedy_lr", _greedy, extra=_loss_like, float64_scalars=True, live=_GREEDY),
    Case("multi_steps_sum", lambda: fo.multi_steps(fo.adam(lr=0.01), 2, reduction="sum")),
    Case("huggingface_adamw", lambda: fo.huggingface_adamw(lr=0.01, weight_decay=0.1)),
    Case("huggingface_adamw_no_correction",
         lambda: fo.huggingface_adamw(lr=0.01, weight_decay=0.1, correct_bias=False)),
    Case("huggingface_adafactor", lambda: fo.huggingface_adafactor(), complex=False,
         live=_HF_FLOORS, half_in_float32=True),
    Case("huggingface_adafactor_warmup_init_momentum",
         lambda: fo.huggingface_adafactor(warmup_init=True, beta1=0.9, weight_decay=0.1),
         complex=False, live=_HF_FLOORS, half_in_float32=True),
    Case("huggingface_adafactor_external_lr",
         lambda: fo.huggingface_adafactor(lr=0.01, relative_step=False, scale_parameter=False,
                                          weight_decay=0.1),
         complex=False, live=_HF_UNSCALED, half_in_float32=True),
    Case("adam_weight_decay",
         lambda: fo.adam_weight_decay(lr=0.01, weight_decay=0.1, clipnorm=1.0, clipvalue=1.0,
                                      exclude_from_weight_decay=["bias"]),
         complex=False, live=_CLIPS),
    Case("adam_weight_decay_global_clip_amsgrad_schedule",
         lambda: fo.adam_weight_decay(lr=_warmup_cosine(), weight_decay=0.1, amsgrad=True,
                                      global_clipnorm=3.0,
                                      include_in_weight_decay=[r"^linear\.bias$"],
                                      exclude_from_weight_decay=["bias", "blocks"]),
         live={**_CLIPS, "*lr.end_value": Live(steps=5), "*lr.exponent": Live(steps=5)}),
]
