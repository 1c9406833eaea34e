import math

import pytest
import torch

from sst.sparsity import Static
from sst.sparsity import distributions as dist


def test_erk_matches_hand_computed_values():
    # p_a = (10 + 20) / 200 = 0.15, p_b = (30 + 10) / 300 = 2/15; budget 0.5 * 500 = 250
    # eps * (0.15 * 200 + 2/15 * 300) = 70 eps = 250 -> eps = 25/7
    d = dist.erk({"a": (10, 20), "b": (30, 10)}, 0.5)
    assert d["a"] == pytest.approx(0.15 * 25 / 7)
    assert d["b"] == pytest.approx(2 / 15 * 25 / 7)
    assert d["a"] * 200 + d["b"] * 300 == pytest.approx(250)


def test_erk_counts_the_kernel_and_power():
    shapes = {"conv": (16, 8, 3, 3), "fc": (10, 64)}
    d = dist.erk(shapes, 0.2, power=0.5)
    p_conv = ((16 + 8 + 3 + 3) / (16 * 8 * 9)) ** 0.5
    p_fc = ((10 + 64) / 640) ** 0.5
    assert d["conv"] / d["fc"] == pytest.approx(p_conv / p_fc)
    assert d["conv"] * 1152 + d["fc"] * 640 == pytest.approx(0.2 * (1152 + 640))


def test_erk_caps_dense_layers_and_resolves():
    # the small layer's density eps * 1 would be 24.5 > 1: it goes dense, eps is solved again
    d = dist.erk({"small": (2, 2), "big": (100, 100)}, 0.5)
    assert d["small"] == 1.0
    assert d["big"] == pytest.approx((0.5 * 10004 - 4) / 10000)


def test_erk_ties_at_the_top_score_capped_together():
    shapes = {"a": (2, 2), "b": (2, 2), "c": (100, 100)}
    d = dist.erk(shapes, 0.3)
    assert d["a"] == d["b"] == 1.0
    assert d["c"] * 10000 + 8 == pytest.approx(0.3 * 10008)


def test_dense_layers_are_compensated_in_the_budget():
    shapes = {"first": (8, 3, 3, 3), "mid": (16, 8, 3, 3), "fc": (10, 16)}
    d = dist.erk(shapes, 0.3, dense=["first"])
    assert d["first"] == 1.0
    total = sum(math.prod(s) for s in shapes.values())
    realised = sum(d[n] * math.prod(s) for n, s in shapes.items())
    assert realised == pytest.approx(0.3 * total)


def test_er_ignores_the_kernel():
    shapes = {"conv": (16, 8, 3, 3), "fc": (10, 64)}
    d = dist.er(shapes, 0.2)
    assert d["conv"] / d["fc"] == pytest.approx(((16 + 8) / 128) / ((10 + 64) / 640))


def test_uniform_with_and_without_compensation():
    shapes = {"first": (10, 10), "rest": (100, 10)}
    comp = dist.uniform(shapes, 0.2, dense=["first"])
    assert comp["first"] == 1.0
    assert comp["rest"] == pytest.approx((0.2 * 1100 - 100) / 1000)
    plain = dist.uniform(shapes, 0.2, dense=["first"], compensate=False)
    assert plain == {"first": 1.0, "rest": 0.2}


def test_fixed_layers_keep_their_density():
    shapes = {"a": (10, 10), "b": (10, 10), "c": (10, 10)}
    d = dist.uniform(shapes, 0.5, fixed={"a": 0.8})
    assert d["a"] == 0.8
    assert d["b"] == d["c"] == pytest.approx((150 - 80) / 200)


def test_global_magnitude_uses_one_threshold():
    weights = {"a": torch.tensor([[1.0, 2.0], [3.0, 4.0]]), "b": torch.tensor([[0.5, 5.0]])}
    d = dist.global_magnitude(weights, 0.5)  # keep 3 of 6: 5, 4, 3
    assert d == {"a": 0.5, "b": 0.5}


@pytest.mark.parametrize("density", [0.0, -0.1, 1.5])
def test_density_out_of_range_is_rejected(density):
    with pytest.raises(ValueError, match=r"density=.* allowed values are in \(0, 1\]"):
        dist.erk({"a": (4, 4)}, density)


def test_unknown_dense_layer_is_rejected():
    with pytest.raises(ValueError, match="'nope' is not among the layers"):
        dist.uniform({"a": (4, 4)}, 0.5, dense=["nope"])


def test_dense_layers_larger_than_budget_are_rejected():
    with pytest.raises(ValueError, match="no budget"):
        dist.erk({"big": (100, 100), "small": (2, 2)}, 0.1, dense=["big"])


# ----------------------------------------------------------------------------- the registry
WEIGHTS = {"a": torch.randn(10, 20), "b": torch.randn(30, 10), "c": torch.randn(8, 4, 3, 3)}


def test_the_registry_dispatches_to_the_distribution_functions():
    shapes = {n: tuple(w.shape) for n, w in WEIGHTS.items()}
    kw = {"dense": ["a"], "fixed": {"c": 0.5}}
    expected = {
        "uniform": dist.uniform(shapes, 0.6, **kw),
        "uniform_uncompensated": dist.uniform(shapes, 0.6, compensate=False, **kw),
        "erk": dist.erk(shapes, 0.6, power=0.5, **kw),
        "er": dist.er(shapes, 0.6, power=0.5, **kw),
        "global_magnitude": dist.global_magnitude(WEIGHTS, 0.6, **kw),
        "explicit": {"a": 1.0, "b": 0.3, "c": 0.5},
    }
    assert set(expected) == set(dist.DISTRIBUTIONS)
    for name, densities in expected.items():
        fixed = {"b": 0.3, "c": 0.5} if name == "explicit" else kw["fixed"]
        got = dist.layer_densities(name, WEIGHTS, 0.6, dense=["a"], fixed=fixed, power=0.5)
        assert got == densities, name


def test_an_unknown_distribution_lists_the_registry():
    with pytest.raises(ValueError, match="distribution='erx' is unknown") as error:
        dist.layer_densities("erx", WEIGHTS, 0.4)
    for name in dist.DISTRIBUTIONS:
        assert repr(name) in str(error.value), name
    dist.DISTRIBUTIONS["custom"] = dist.DISTRIBUTIONS["uniform"]  # one list for both uses
    try:
        with pytest.raises(ValueError, match="'custom'"):
            dist.check_distribution("erx")
        assert dist.layer_densities("custom", WEIGHTS, 0.4)["b"] == pytest.approx(0.4)
    finally:
        del dist.DISTRIBUTIONS["custom"]


def test_a_method_rejects_an_unknown_distribution_under_every_structure():
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 4))
    for structure in ("unstructured", "nm"):
        with pytest.raises(ValueError, match=r"allowed values are .*'global_magnitude'"):
            Static(model, density=0.5, distribution="erx", structure=structure)


def test_explicit_needs_every_layer():
    with pytest.raises(ValueError, match=r"missing \['b'\]"):
        dist.explicit({"a": (4, 4), "b": (4, 4)}, 0.5, fixed={"a": 0.5})


def test_an_explicit_run_is_labelled_by_the_density_it_trains_at(tmp_path):
    """distribution=explicit does not use sparsity.density: the summary's density and
    sst-table's sparsity column come from the per-layer densities it trains at."""
    from runs import compose_run

    from sst.launch.run import run
    from sst.study.results import collect

    overrides = [
        "sparsity=rigl",
        "sparsity.distribution=explicit",
        "sparsity.densities={1:0.2,3:0.3,5:0.5}",
        "trainer.epochs=1",
        "trainer.batch_size=128",
        "trainer.progress_bar=false",
        "logger=none",
    ]
    cfg, run_dir, choices = compose_run(overrides, tmp_path)
    summary = run(cfg, run_dir, choices)
    # 64x256 at 0.2, 256x256 at 0.3 and 256x10 at 0.5 (whole weights per layer)
    expected = (0.2 * 64 * 256 + 0.3 * 256 * 256 + 0.5 * 256 * 10) / (64 * 256 + 256 * 256 + 2560)
    assert summary["density"] == pytest.approx(expected, abs=1e-3)
    assert summary["density"] == pytest.approx(1 - summary["sparsity_masked_layers"], abs=1e-6)
    assert summary["density_setting"] == cfg.sparsity.density == 0.1
    (found,) = collect([tmp_path / "runs"]).runs
    assert found.value("sparsity") == pytest.approx(1 - expected, abs=1e-3)  # not 0.9
