"""Conformance cases of optax.contrib's parameter-free and schedule-free optimizers
(``aliases.contrib_free``) and of the blocks no alias exercises fully; ``conformance.CASES``
includes them."""

from __future__ import annotations

import torch
from conformance import Case, Live, _loss_like

import functional_optim as fo
from functional_optim import schedules


def _started_elsewhere(make, moved):
    """``make()`` whose ``init`` state is ``moved(state, params)``: the suite updates at the
    parameters ``init`` saw (it never applies the updates), where COCOB's reward
    :math:`\\max(R - g(x - x_0), 0)` and Mechanic's :math:`\\max(r, 0)` sit on their kinks
    (:math:`x = x_0`); finite differences need a point off them."""

    def made():
        tx = make()
        return fo.Transform(lambda params: moved(tx.init(params), params), tx.update,
                            tx.hparams)

    return made


def _shifted(params):
    return fo.tree.map(lambda p: 0.9 * p + 0.1, params)


def _cocob_elsewhere(state, params):
    return {**state, "cocob": state["cocob"]._replace(init_particles=_shifted(params))}


def _mechanic_elsewhere(state, params):  # (a count of 1: the first update keeps x_0)
    return state._replace(step=state.step + 1, x0=_shifted(params))


def _positive(g):
    """Gradients of one sign per element: the steps go one way, so Prodigy's estimate of the
    distance grows within a few steps (random gradients keep its numerator negative)."""
    return torch.view_as_complex(torch.view_as_real(g).abs()) if g.is_complex() else g.abs()


# the estimate first exceeds d0 at the fourth step, where d_coef scales it
_PRODIGY = {"d_coef": Live(steps=4)}
# a growing learning rate: the averaging weights' power matters (a constant one gives 1/t);
# large steps: the update is the difference of recomputed parameters, so its rounding is the
# parameters' (an update much smaller than them would magnify it)
_GROWING = schedules.linear(0.5, 1.0, 10)

CASES = [
    Case("schedule_free_sgd", lambda: fo.schedule_free_sgd(lr=_GROWING, weight_decay=0.01),
         float64_scalars=True),
    Case("schedule_free_adamw",
         lambda: fo.schedule_free_adamw(lr=_GROWING, weight_decay=0.01), float64_scalars=True),
    Case("prodigy", lambda: fo.prodigy(weight_decay=0.01), float64_scalars=True,
         grads=_positive, live=_PRODIGY),
    Case("dadapt_adamw", lambda: fo.dadapt_adamw(weight_decay=0.01), float64_scalars=True),
    Case("dog", lambda: fo.dog(weight_decay=0.01), float64_scalars=True),
    Case("dowg", lambda: fo.dowg(init_estim_sq_dist=0.01, weight_decay=0.01),
         float64_scalars=True),
    # (eps floors the scale max|g|: tiny gradients, without the decay's p, make it act)
    Case("cocob", _started_elsewhere(lambda: fo.cocob(weight_decay=0.01), _cocob_elsewhere),
         live={"eps": Live(grads_scale=1e-9, others={"weight_decay": 0.0})}),
    Case("momo", lambda: fo.momo(lower_bound=0.1, weight_decay=0.01), extra=_loss_like,
         float64_scalars=True),
    Case("momo_adam",
         lambda: fo.momo_adam(lower_bound=0.1, weight_decay=0.01, adapt_lower_bound=True),
         extra=_loss_like, float64_scalars=True,
         # (a large lr: the Polyak step, where the bound is read, is the smaller one)
         live={"lower_bound": Live(others={"lr": 10.0})}),
    Case("mechanic_adam", _started_elsewhere(fo.mechanic_adam, _mechanic_elsewhere),
         float64_scalars=True),
    # blocks that no alias runs: layer-wise DoG; DoG's learning-rate start; a schedule inside
    # a block (Prodigy's)
    Case("scale_by_distance_over_gradients",
         lambda: fo.scale_by_distance_over_gradients(reps_rel=1e-3, global_scale=-1.0),
         float64_scalars=True),
    Case("scale_by_dog_learning_rate",
         lambda: fo.scale_by_dog(0.01, init_step_type="learning_rate"), float64_scalars=True),
    Case("scale_by_prodigy_schedule",
         lambda: fo.scale_by_prodigy(schedules.linear(1.0, 0.5, 10), safeguard_warmup=True),
         # (safeguard_warmup makes the denominator larger: a larger d_coef reaches d0)
         float64_scalars=True, grads=_positive, live={"d_coef": Live(value=5.0, steps=4)}),
]
