"""Conformance cases of optax's core algorithms that torch.optim lacks (``aliases.optax_core``,
``aliases.optax_adaptive``) and of their blocks where an alias does not exercise them fully;
``conformance.CASES`` includes them."""

from __future__ import annotations

from conformance import Case, Live, _loss_like

import functional_optim as fo

# tiny gradients, so that an eps next to a root or a norm of the gradients acts
_TINY = Live(grads_scale=1e-8)
_EPS = {"eps": _TINY}

CASES = [
    # Lion: the sign ignores a small change of β1 (at the first step x = (1-β1) g whatever β1):
    # a β1 next to 1 follows the momentum's sign instead of the gradient's
    Case("lion", lambda: fo.lion(lr=0.01, weight_decay=0.1), live={"betas.0": Live(value=0.999)}),
    Case("scale_by_lion_smooth", lambda: fo.scale_by_lion((0.8, 0.9), mode="smooth",
                                                          smooth_beta=2.0)),
    Case("sign_sgd", lambda: fo.sign_sgd(lr=0.01)),
    Case("signum", lambda: fo.signum(lr=0.01)),
    Case("lamb", lambda: fo.lamb(lr=0.01, weight_decay=0.1), live=_EPS),
    Case("lars", lambda: fo.lars(lr=0.1, weight_decay=0.01, nesterov=True)),
    # min_norm floors both norms (about 2 here): tiny gradients make it act
    Case("fromage", lambda: fo.fromage(lr=0.05), live={"min_norm": _TINY}),
    Case("scale_by_param_block_norm", lambda: fo.scale_by_param_block_norm(),
         live={"min_scale": Live(params_scale=1e-4)}),
    Case("scale_by_param_block_rms", lambda: fo.scale_by_param_block_rms(),
         live={"min_scale": Live(params_scale=1e-4)}),
    Case("noisy_sgd", lambda: fo.noisy_sgd(lr=0.1, seed=3)),
    # the step min((f - f*) / (η²|g|² + ε), γ): with f = |g|² (the suite's value) the gap term
    # is 1/η² = 4 below γ = 10; a γ of 3 takes the cap
    Case("polyak_sgd", lambda: fo.polyak_sgd(lr=0.5, max_lr=10.0), extra=_loss_like,
         live={"max_lr": Live(value=3.0)}),
    Case("optimistic_gradient_descent",
         lambda: fo.optimistic_gradient_descent(lr=0.1, alpha=0.7, beta=0.4)),
    Case("adabelief", lambda: fo.adabelief(lr=0.01),
         live={"eps": Live(grads_scale=1e-14, others={"eps_root": 0.0}),
               "eps_root": _TINY}),
    Case("yogi", lambda: fo.yogi(lr=0.01), live={"eps": Live(grads_scale=1e-3)}),
    Case("scale_by_yogi", lambda: fo.scale_by_yogi((0.8, 0.95), eps=1e-4, eps_root=1e-6,
                                                   initial_accumulator_value=0.1),
         live={"eps": Live(grads_scale=1e-4), "eps_root": Live(grads_scale=1e-3)}),
    Case("novograd", lambda: fo.novograd(lr=0.01, weight_decay=0.1),
         live={"eps": Live(grads_scale=1e-6)}),
    Case("adan", lambda: fo.adan(lr=0.01, weight_decay=0.1),
         live={"eps": Live(grads_scale=1e-8, others={"eps_root": 0.0}),
               "eps_root": Live(grads_scale=1e-4)}),
    Case("sm3", lambda: fo.sm3(lr=0.01), complex=False),
    Case("scale_by_sm3", lambda: fo.scale_by_sm3((0.8, 0.95), eps=1e-6), complex=False,
         live={"eps": Live(grads_scale=1e-3)}),
    Case("optimistic_adam", lambda: fo.optimistic_adam(lr=0.01, alpha=0.7, beta=0.4),
         live=_EPS),
    Case("adamaxw", lambda: fo.adamaxw(lr=0.01, weight_decay=0.1), live=_EPS),
    Case("nadamw", lambda: fo.nadamw(lr=0.01, weight_decay=0.1), live=_EPS),
]
