"""A run folder's readable name: a sweeper's long float draws are rounded, the hash keeps
the exact value apart."""

from __future__ import annotations

from sst.runs.identity import config_hash, readable_name, run_folder_name


def test_long_decimals_are_rounded_to_four_significant_digits():
    assert readable_name("digits-mlp-srigl-d0.1736677810996509-s0") == "digits-mlp-srigl-d0.1737-s0"
    assert readable_name("x-lr0.00001234567-d0.5") == "x-lr1.235e-05-d0.5"
    for kept in ("digits-mlp-srigl-d0.1-s0", "a-d0.05-gsal0.3-s12", "v1.2.3456789", "d0.1234"):
        assert readable_name(kept) == kept


def test_the_hash_keeps_draws_that_round_alike_apart():
    def cfg(density: float) -> dict:
        return {
            "name": f"digits-mlp-srigl-d{density}-s0",
            "model": {},
            "dataset": {},
            "sparsity": {"density": density},
            "distill": {},
            "optimizer": {},
            "lr_schedule": {},
            "trainer": {},
            "seed": 0,
        }

    a, b = cfg(0.17366778109965), cfg(0.17366778109966)
    assert run_folder_name(a) == f"digits-mlp-srigl-d0.1737-s0-{config_hash(a)}"
    assert run_folder_name(a) != run_folder_name(b)
