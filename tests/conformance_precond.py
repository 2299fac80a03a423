"""Conformance cases of the Kronecker-factored and eigenbasis preconditioners
(``aliases.preconditioned``): one case per alias (its registry case), on the suite's tiny tree
with short refresh periods, so that the decompositions happen within the checks' steps
(PSGD-Kron fits its factors at every update); ``conformance.CASES`` includes them."""

from __future__ import annotations

from conformance import Case, Live

import functional_optim as fo

_ROOTS_NOT_DIFFERENTIATED = (
    "the roots' eigenvectors are not differentiated (documented: their derivative is undefined "
    "where eigenvalues repeat, e.g. at a zero gradient); beta2 acts only through the "
    "statistics' eigendecomposition (the roots of update 3)")
_NOT_DIFFERENTIATED = (
    "the eigenbases are a choice of coordinates, not differentiated (documented: the "
    "eigenvectors' derivative is undefined where eigenvalues repeat, e.g. at a zero gradient); "
    "shampoo_beta acts only through them (their refresh at update 2)")

CASES = [
    # eps against a root of about |g|: tiny gradients make it act; shampoo_beta (given, so that
    # beta2 does not act through the bases) acts through the bases refreshed at update 2, used
    # from update 3
    Case("soap", lambda: fo.soap(lr=0.01, shampoo_beta=0.8, weight_decay=0.1,
                                 precondition_frequency=2, precond_dtype=None),
         complex=False, live={"eps": Live(grads_scale=1e-9),
                              "shampoo_beta": Live(steps=5, excluded=(
                                  ("grad", _NOT_DIFFERENTIATED),))},
         excluded=(("test_capturable_fake_cuda_trace",
                    "torch.linalg.eigh synchronizes a CUDA device with the host (torch's "
                    "documented behaviour): SOAP's eigendecomposition at update 0 cannot be "
                    "captured in a CUDA graph"),)),
    # block_size 3 merges nothing and cuts the (4, 3) leaf's first axis in two blocks; the roots
    # are recomputed at update 3 (t = 3), after the Adam graft's own step at t = 1. The alias's
    # case takes the Newton roots (matrix products: capturable, differentiated); the block's the
    # eigendecomposition
    Case("shampoo", lambda: fo.shampoo(lr=0.01, weight_decay=0.1, block_size=3,
                                       precondition_frequency=3, start_preconditioning_step=2,
                                       root_dtype=None, root_method="newton",
                                       root_iterations=6),
         complex=False, live={"eps": Live(value=0.5), "graft_eps": Live(grads_scale=1e-9)}),
    Case("scale_by_shampoo_eigh", lambda: fo.scale_by_shampoo(
        0.9, block_size=3, precondition_frequency=3, graft="adam", root_dtype=None),
         complex=False,
         live={"eps": Live(value=0.5), "graft_eps": Live(grads_scale=1e-9),
               "beta2": Live(excluded=(("grad", _ROOTS_NOT_DIFFERENTIATED),))},
         excluded=(("test_capturable_fake_cuda_trace",
                    "torch.linalg.eigh synchronizes a CUDA device with the host (torch's "
                    "documented behaviour): Shampoo's eigh roots cannot be captured in a CUDA "
                    "graph (root_method='newton' can)"),)),
    # every update fits the factors (p = 1): a tiny p (no fit in 3 updates) shows it is read
    Case("psgd_kron", lambda: fo.psgd_kron(lr=0.01, weight_decay=0.1, seed=3), complex=False,
         live={"preconditioner_update_probability": Live(value=0.01)}),
]
