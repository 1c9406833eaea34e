"""sst-table --compare and sst-plot accuracy --ci on fabricated run folders: Student's t
quantiles, paired and Welch intervals, the seeds-needed estimate, pairing on every identity
setting but KEY, unfinished runs, the output formats and bad input. Every expected number is
computed by hand below (closed forms, textbook t-table values) and, where scipy is installed,
checked against ``scipy.stats`` as well."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import pytest
from fabricated import make_run
from matplotlib.collections import PolyCollection
from tabletext import unpadded

from sst.runs.identity import IDENTITY_KEYS
from sst.study import plots
from sst.study.compare import (
    CompareSpec,
    owned_settings,
    paired_interval,
    parse_compare,
    regularized_beta,
    seeds_needed_paired,
    seeds_needed_welch,
    t_quantile,
    t_tail,
    welch_interval,
)
from sst.study.plot_cli import main as sst_plot
from sst.study.results import Run, Stat, aggregate, collect, mixed_settings
from sst.study.table_cli import main as sst_table

# Student's t quantiles from a printed table, to 10 digits: two-sided 95% and one-sided 80%
T975 = {2: 4.302652730, 4: 2.776445105, 8: 2.306004135, 9: 2.262157163, 10: 2.228138852}
T80 = {8: 0.8888895178, 9: 0.8834038597, 10: 0.8790578286}


def compare_json(root: Path, *args: str, capsys) -> dict:
    assert sst_table([str(root), "--format", "json", *args]) == 0
    return json.loads(capsys.readouterr().out)


# ----------------------------------------------------------------------------- Student's t
def test_t_quantile_matches_closed_forms_and_the_table() -> None:
    for p in (0.6, 0.8, 0.9, 0.975, 0.995, 0.999):
        # 1 dof (Cauchy): tan(pi (p - 1/2)); 2 dof: (2p - 1) / sqrt(2 p (1 - p))
        assert t_quantile(p, 1) == pytest.approx(math.tan(math.pi * (p - 0.5)), rel=1e-12)
        assert t_quantile(p, 2) == pytest.approx((2 * p - 1) / math.sqrt(2 * p * (1 - p)), 1e-12)
        assert t_quantile(1 - p, 5) == pytest.approx(-t_quantile(p, 5), rel=1e-14)
    for dof, t in T975.items():
        assert t_quantile(0.975, dof) == pytest.approx(t, rel=1e-9)
    for dof, t in T80.items():
        assert t_quantile(0.8, dof) == pytest.approx(t, rel=1e-9)
    assert t_quantile(0.5, 3) == 0.0
    assert t_quantile(0.975, 1e6) == pytest.approx(1.959966, abs=1e-5)  # -> the normal 1.96
    assert t_tail(t_quantile(0.9, 2.5), 2.5) == pytest.approx(0.1, rel=1e-13)
    with pytest.raises(ValueError, match="0 < p < 1"):
        t_quantile(1.0, 3)


def test_regularized_beta_matches_closed_forms() -> None:
    for x in (0.01, 0.2, 0.5, 0.77, 0.999):
        assert regularized_beta(x, 1, 1) == pytest.approx(x, rel=1e-14)
        assert regularized_beta(x, 3, 1) == pytest.approx(x**3, rel=1e-13)
        assert regularized_beta(x, 1, 4) == pytest.approx(1 - (1 - x) ** 4, rel=1e-13)
        arcsine = 2 / math.pi * math.asin(math.sqrt(x))
        assert regularized_beta(x, 0.5, 0.5) == pytest.approx(arcsine, rel=1e-13)
    assert (regularized_beta(0.0, 2, 3), regularized_beta(1.0, 2, 3)) == (0.0, 1.0)


def test_t_distribution_matches_scipy() -> None:
    stats = pytest.importorskip("scipy.stats")
    for dof in (1, 1.3, 2, 2.5, 3, 4, 7, 9.6, 19, 30, 99, 1000, 20000):
        for p in (0.001, 0.025, 0.2, 0.6, 0.8, 0.9, 0.95, 0.975, 0.995, 0.999):
            assert t_quantile(p, dof) == pytest.approx(stats.t.ppf(p, dof), rel=1e-10)
        for t in (0.1, 1.0, 2.5, 6.0):
            assert t_tail(t, dof) == pytest.approx(stats.t.sf(t, dof), rel=1e-11)


# ----------------------------------------------------------------------------- intervals
def test_paired_and_welch_intervals_by_hand() -> None:
    # differences 1, 2, 1.5: mean 1.5, sd 0.5, 2 dof
    paired = paired_interval([1.0, 2.0, 1.5])
    half = T975[2] * 0.5 / math.sqrt(3)  # 1.24207
    assert (paired.mean, paired.dof, paired.spread) == (1.5, 2.0, pytest.approx(0.5))
    assert (paired.low, paired.high) == (pytest.approx(1.5 - half), pytest.approx(1.5 + half))
    assert paired.resolved is True
    assert paired_interval([0.7]).low is None and paired_interval([0.7]).resolved is None
    # Welch: variances 1 and 1 over 3 runs each: SE^2 = 1/3 + 1/3,
    # dof = (2/3)^2 / ((1/3)^2 / 2 + (1/3)^2 / 2) = 4
    welch = welch_interval([90.0, 91.0, 92.0], [92.0, 93.0, 94.0])
    half = T975[4] * math.sqrt(2 / 3)  # 2.26697
    assert (welch.mean, welch.dof) == (pytest.approx(2.0), pytest.approx(4.0))
    assert (welch.low, welch.high) == (pytest.approx(2 - half), pytest.approx(2 + half))
    assert welch.resolved is False
    # unequal variances: s_a^2 = 0.5, s_b^2 = 4.5 over 2 runs: SE^2 = 2.5,
    # dof = 2.5^2 / (0.25^2 + 2.25^2) = 1.2195...
    skewed = welch_interval([50.0, 51.0], [52.0, 55.0])
    assert skewed.dof == pytest.approx(6.25 / 5.125)
    assert skewed.high - skewed.mean == pytest.approx(t_quantile(0.975, 6.25 / 5.125) * 2.5**0.5)
    assert welch_interval([1.0], [2.0, 3.0]).low is None
    flat = welch_interval([1.0, 1.0], [2.0, 2.0])  # no spread: a zero-width interval
    assert (flat.low, flat.high, flat.resolved) == (1.0, 1.0, True)


def test_intervals_match_scipy() -> None:
    stats = pytest.importorskip("scipy.stats")
    a, b = [90.1, 91.7, 89.2, 93.0], [91.0, 93.4, 90.0, 95.2]
    ours = paired_interval([y - x for x, y in zip(a, b, strict=True)])
    theirs = stats.ttest_rel(b, a).confidence_interval(0.95)
    assert (ours.low, ours.high) == (pytest.approx(theirs.low), pytest.approx(theirs.high))
    a, b = [50.0, 51.0, 49.5], [52.0, 55.0, 58.5, 51.0, 54.2]
    ours = welch_interval(a, b)
    result = stats.ttest_ind(b, a, equal_var=False)
    theirs = result.confidence_interval(0.95)
    assert (ours.low, ours.high) == (pytest.approx(theirs.low), pytest.approx(theirs.high))
    assert ours.dof == pytest.approx(result.df)
    # the Welch row of test_welch_rows_when_seeds_differ_and_the_estimate
    ours = welch_interval([91.0, 92.0], [92.0, 93.0, 94.0])
    theirs = stats.ttest_ind([92.0, 93.0, 94.0], [91.0, 92.0], equal_var=False)
    assert [ours.low, ours.high] == pytest.approx(list(theirs.confidence_interval(0.95)))


def test_seeds_needed_estimate_by_hand() -> None:
    # paired differences 0, 2, 4: mean 2, sd 2, effect 1: smallest n with
    # t_{.975,n-1} + t_{.8,n-1} <= sqrt(n); n = 9: 2.306 + 0.889 = 3.195 > 3;
    # n = 10: 2.262 + 0.883 = 3.145 <= 3.162 (the normal approximation says 8)
    assert T975[8] + T80[8] > math.sqrt(9) and T975[9] + T80[9] <= math.sqrt(10)
    assert seeds_needed_paired(2.0, 2.0) == 10
    assert seeds_needed_paired(-2.0, 2.0) == 10
    # Welch, sd 1 on both sides, difference 2: dof_n = 2 (n - 1), bound 2 / sqrt(2 / n);
    # n = 5: 2.306 + 0.889 = 3.195 > sqrt(10) = 3.162; n = 6: 2.228 + 0.879 = 3.107 <= 3.464
    assert T975[8] + T80[8] > 2 / math.sqrt(2 / 5)
    assert T975[10] + T80[10] <= 2 / math.sqrt(2 / 6)
    assert seeds_needed_welch(2.0, 1.0, 1.0) == 6
    assert seeds_needed_paired(0.0, 1.0) is None and seeds_needed_paired(1.0, 0.0) is None
    assert seeds_needed_paired(0.001, 1.0) is None  # beyond MAX_SEEDS


def test_seeds_needed_matches_the_noncentral_t_power() -> None:
    stats = pytest.importorskip("scipy.stats")

    def power(n: int, effect: float) -> float:  # two-sided paired t test at 5%
        t, shift = stats.t.ppf(0.975, n - 1), effect * math.sqrt(n)
        return stats.nct.sf(t, n - 1, shift) + stats.nct.cdf(-t, n - 1, shift)

    for effect in (3.0, 1.5, 1.0, 0.6, 0.3, 0.1):
        n = seeds_needed_paired(effect, 1.0)
        assert power(n, effect) >= 0.8 > power(n - 1, effect), effect


# ----------------------------------------------------------------------------- the option
@pytest.mark.parametrize(
    "text",
    ["method=rigl", "method", "=rigl,srigl", "method=rigl,rigl", "method=a,b,c", "method=rigl,"],
)
def test_bad_compare_fails_with_one_line(tmp_path: Path, text: str, capsys) -> None:
    make_run(tmp_path, acc=90.0)
    assert sst_table([str(tmp_path), "--compare", text]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--compare must be KEY=A,B" in err


def test_compare_refuses_the_seed_and_paper_tables(tmp_path: Path, capsys) -> None:
    make_run(tmp_path, acc=90.0)
    assert sst_table([str(tmp_path), "--compare", "seed=0,1"]) == 2
    assert "the seed pairs the runs" in capsys.readouterr().err
    assert sst_table(["--paper", "srigl-resnet18-cifar10", "--compare", "method=a,b"]) == 2
    assert "leave out --paper" in capsys.readouterr().err
    assert sst_table([str(tmp_path), "--compare", "method=set,static"]) == 1
    assert "no runs with method=set or method=static" in capsys.readouterr().err
    assert parse_compare("sparsity.gamma_sal=0, 0.3") == CompareSpec("sparsity.gamma_sal", 0, 0.3)


# ----------------------------------------------------------------------------- pairing
@pytest.fixture
def pairs(tmp_path: Path) -> Path:
    """RigL and SRigL at 90%, seeds 0-2 finished on both sides (B - A = 1, 2, 1.5); seed 3
    finished for RigL, unfinished for SRigL; seed 4 for SRigL only."""
    root = tmp_path / "runs"
    for seed, (a, b) in enumerate([(90.0, 91.0), (91.0, 93.0), (92.0, 93.5)]):
        make_run(root, method="rigl", seed=seed, acc=a, best=a + 5)
        make_run(root, method="srigl", seed=seed, acc=b, best=a + 5 + seed)
    make_run(root, method="rigl", seed=3, acc=99.0)
    make_run(root, method="srigl", seed=3, acc=None)
    make_run(root, method="srigl", seed=4, acc=50.0)
    return root


def test_paired_rows_by_hand(pairs: Path, capsys) -> None:
    data = compare_json(pairs, "--compare", "method=rigl,srigl", capsys=capsys)
    assert data["metric"] == "final"
    assert data["compare"] == {"key": "method", "a": "rigl", "b": "srigl"}
    (row,) = data["rows"]
    half = T975[2] * 0.5 / math.sqrt(3)  # differences 1, 2, 1.5: mean 1.5, sd 0.5
    assert {k: row[k] for k in ("dataset", "model", "sparsity", "distill")} == {
        "dataset": "digits",
        "model": "mlp",
        "sparsity": 0.9,
        "distill": "none",
    }
    assert "method" not in row
    assert (row["a"], row["b"], row["n_pairs"], row["paired"], row["resolved"]) == (
        "rigl",
        "srigl",
        3,
        True,
        True,
    )
    assert row["mean_diff"] == pytest.approx(1.5)
    assert row["ci95"] == [pytest.approx(1.5 - half), pytest.approx(1.5 + half)]
    assert (row["dof"], row["sd_diff"], row["seeds_needed_estimate"]) == (2.0, 0.5, None)
    assert [(p["seed"], p["diff"]) for p in row["pairs"]] == [(0, 1.0), (1, 2.0), (2, 1.5)]
    # seed 3: RigL finished, SRigL not: listed, never used (not even in the side means)
    (held,) = row["unfinished_pairs"]
    assert (held["seed"], held["a_status"], held["b_status"]) == (3, "finished", "unfinished")
    assert [Path(r).name for r in row["unpaired"]] == ["digits-mlp-srigl-erk-d0.1-g0.3-s4"]
    assert (row["final_test_acc_mean_a"], row["n_a"]) == (91.0, 3)
    assert (row["final_test_acc_mean_b"], row["n_b"]) == (pytest.approx(81.875), 4)
    assert [Path(r["run"]).name for r in data["not_finished"]] == [
        "digits-mlp-srigl-erk-d0.1-g0.3-s3"
    ]


def test_best_metric_compares_best_accuracy(pairs: Path, capsys) -> None:
    data = compare_json(pairs, "--compare", "method=rigl,srigl", "--metric", "best", capsys=capsys)
    (row,) = data["rows"]
    assert data["metric"] == "best" and "best_test_acc_mean_a" in row
    # best: RigL a + 5, SRigL a + 5 + seed: differences 0, 1, 2: mean 1, sd 1
    half = T975[2] * 1.0 / math.sqrt(3)
    assert row["ci95"] == [pytest.approx(1 - half), pytest.approx(1 + half)]
    assert row["resolved"] is False
    # effect 1: 10 pairs (test_seeds_needed_estimate_by_hand)
    assert row["seeds_needed_estimate"] == 10


def test_pairs_agree_in_every_identity_setting_but_key(tmp_path: Path, capsys) -> None:
    root = tmp_path / "runs"
    for seed in range(3):
        make_run(root, method="rigl", seed=seed, acc=90.0 + seed)
    make_run(root, method="srigl", seed=0, acc=92.0)
    make_run(root, method="srigl", seed=2, acc=93.0)
    make_run(root, method="srigl", seed=1, acc=99.0, epochs=4)  # another trainer.epochs
    make_run(root / "uniform", method="srigl", seed=1, acc=98.0, distribution="uniform")
    data = compare_json(root, "--compare", "method=rigl,srigl", capsys=capsys)
    (row,) = data["rows"]
    # seed 1 has no SRigL partner that agrees in trainer.epochs and sparsity.distribution
    assert [(p["seed"], p["diff"]) for p in row["pairs"]] == [(0, 2.0), (2, 1.0)]
    # differences 2 and 1: mean 1.5, sd sqrt(0.5), 1 dof: t_{.975,1} = tan(0.475 pi)
    half = math.tan(math.pi * 0.475) * math.sqrt(0.5) / math.sqrt(2)
    assert row["ci95"] == [pytest.approx(1.5 - half), pytest.approx(1.5 + half)]
    assert row["differ"] == ["sparsity.distribution", "trainer.epochs"]
    assert len(row["unpaired"]) == 3
    # the seed pairs runs: two runs of different seeds never form a pair
    shifted = tmp_path / "shifted"
    make_run(shifted, method="rigl", seed=0, acc=90.0)
    make_run(shifted, method="srigl", seed=1, acc=91.0)
    (row,) = compare_json(shifted, "--compare", "method=rigl,srigl", capsys=capsys)["rows"]
    assert (row["n_pairs"], row["paired"], row["ci95"]) == (0, False, None)
    assert row["mean_diff"] == 1.0  # Welch needs two runs a side for an interval


def test_pairs_follow_the_folder_identity_rules(tmp_path: Path, capsys) -> None:
    """Runs that the folder hash calls the same are paired as the same: runs that wrote
    their data root the same way (the ``identity`` sst-train records) although it resolved
    to other paths on other machines; and an older run without a later-added setting is
    not "mixed" with a newer one at the setting's neutral value."""
    root = tmp_path / "runs"
    for seed in range(3):
        make_run(root, method="rigl", seed=seed, acc=90.0 + seed, settings={"dataset.root": "/a"})
        make_run(root, method="srigl", seed=seed, acc=92.0 + seed, settings={"dataset.root": "/b"})
    unrecorded = compare_json(root, "--compare", "method=rigl,srigl", capsys=capsys)["rows"][0]
    assert unrecorded["n_pairs"] == 0  # resolved roots differ: no pair without the record
    for folder in root.iterdir():  # what sst-train records: the canonical identity
        config = json.loads((folder / "config.json").read_text())
        identity = [config.get(key) for key in IDENTITY_KEYS]
        identity[IDENTITY_KEYS.index("dataset")] = {**config["dataset"], "root": "${oc.env:D}"}
        (folder / "config.json").write_text(json.dumps({**config, "identity": identity}))
    (row,) = compare_json(root, "--compare", "method=rigl,srigl", capsys=capsys)["rows"]
    assert (row["n_pairs"], row["mean_diff"]) == (3, 2.0)

    def srigl_run(seed: int, **settings) -> Run:
        folder = make_run(tmp_path / "old", method="srigl", seed=seed, settings=settings)
        return Run(str(folder), "finished", json.loads((folder / "config.json").read_text()))

    runs = [srigl_run(0), srigl_run(1, **{"sparsity.grow_ties": "index"})]
    assert mixed_settings(runs) == []
    runs.append(srigl_run(2, **{"sparsity.grow_ties": "random"}))
    assert mixed_settings(runs) == ["sparsity.grow_ties"]


def test_a_list_valued_by_key_groups_rows(tmp_path: Path, capsys) -> None:
    root = tmp_path / "runs"
    for seed in range(2):
        for method in ("rigl", "srigl"):
            make_run(root, method=method, seed=seed, settings={"sparsity.layer_types": ["Linear"]})
    args = ("--compare", "method=rigl,srigl", "--by", "sparsity.layer_types")
    (row,) = compare_json(root, *args, capsys=capsys)["rows"]
    assert row["n_pairs"] == 2 and row["sparsity.layer_types"] == ["Linear"]


def test_settings_the_method_option_sets_are_left_out_of_pairing() -> None:
    owned = owned_settings(CompareSpec("method", "rigl", "srigl"), [])
    for path in ("sparsity._target_", "sparsity.structure", "sparsity.n", "sparsity.gamma_sal"):
        assert owned(path), path
    for path in ("sparsity.density", "sparsity.delta_t", "sparsity.distribution", "seed"):
        assert not owned(path), path
    assert owned_settings(CompareSpec("sparsity.gamma_sal", 0, 0.3), [])("sparsity.gamma_sal")
    density = owned_settings(CompareSpec("sparsity", 0.9, 0.99), [])
    assert density("sparsity.density") and not density("sparsity.gamma_sal")


def test_welch_rows_when_seeds_differ_and_the_estimate(tmp_path: Path, capsys) -> None:
    root = tmp_path / "runs"
    for seed, acc in enumerate([90.0, 91.0, 92.0]):
        make_run(root, method="rigl", seed=seed, acc=acc, density=0.05)
        make_run(root, method="srigl", seed=seed + 3, acc=acc + 2, density=0.05)
    make_run(root, method="srigl", seed=0, acc=None, density=0.05)  # unfinished partner
    (row,) = compare_json(root, "--compare", "method=rigl,srigl", capsys=capsys)["rows"]
    assert (row["paired"], row["n_pairs"], row["sparsity"]) == (False, 0, 0.95)
    # RigL seed 0's partner is unfinished: never used, so Welch sees RigL 91, 92 against
    # SRigL 92, 93, 94: means 91.5 and 93, variances 0.5 and 1:
    # SE^2 = 0.25 + 1/3, dof = SE^4 / (0.25^2 / 1 + (1/3)^2 / 2)
    se2 = 0.25 + 1 / 3
    dof = se2**2 / (0.25**2 + (1 / 3) ** 2 / 2)
    half = t_quantile(0.975, dof) * math.sqrt(se2)
    assert row["mean_diff"] == pytest.approx(1.5) and row["dof"] == pytest.approx(dof)
    assert row["ci95"] == [pytest.approx(1.5 - half), pytest.approx(1.5 + half)]
    assert row["resolved"] is False
    assert row["seeds_needed_estimate"] == seeds_needed_welch(1.5, 0.5**0.5, 1.0)
    assert [p["seed"] for p in row["unfinished_pairs"]] == [0]


def test_compare_a_config_setting_and_variants(tmp_path: Path, capsys) -> None:
    root = tmp_path / "runs"
    for seed in range(3):
        make_run(root, method="rigl", seed=seed, acc=90.0)
        make_run(root, method="srigl", seed=seed, gamma_sal=0.0, acc=91.0 + seed)
        make_run(root, method="srigl", seed=seed, gamma_sal=0.3, acc=91.0 + 2 * seed)
    data = compare_json(root, "--compare", "sparsity.gamma_sal=0,0.3", capsys=capsys)
    (row,) = data["rows"]  # RigL has no gamma_sal: on neither side
    assert row["method"] == "srigl" and "sparsity.gamma_sal" not in row
    assert [p["diff"] for p in row["pairs"]] == [0.0, 1.0, 2.0]
    # --by a setting the method option sets: each SRigL variant against RigL
    by = ["--compare", "method=rigl,srigl", "--by", "sparsity.gamma_sal"]
    rows = compare_json(root, *by, capsys=capsys)["rows"]
    assert [r["sparsity.gamma_sal"] for r in rows] == [{"a": None, "b": 0}, {"a": None, "b": 0.3}]
    assert [r["mean_diff"] for r in rows] == [pytest.approx(2.0), pytest.approx(3.0)]
    assert all(r["mixed"] == [] for r in rows)
    # without it, the SRigL side mixes both: no pair, flagged
    (mixed,) = compare_json(root, "--compare", "method=rigl,srigl", capsys=capsys)["rows"]
    assert mixed["mixed"] == ["seed (repeated)", "sparsity.gamma_sal"]
    assert mixed["n_pairs"] == 0


def test_dense_against_each_sparsity(tmp_path: Path, capsys) -> None:
    root = tmp_path / "runs"
    for seed in range(2):
        make_run(root, method="dense", density=1.0, seed=seed, acc=95.0 + seed)
        for density in (0.1, 0.01):
            make_run(root, method="rigl", density=density, seed=seed, acc=90.0 - 10 * seed)
    rows = compare_json(root, "--compare", "method=dense,rigl", capsys=capsys)["rows"]
    assert [r["sparsity"] for r in rows] == [{"a": 0.0, "b": 0.9}, {"a": 0.0, "b": 0.99}]
    assert [r["n_pairs"] for r in rows] == [2, 2]
    assert [r["mean_diff"] for r in rows] == [pytest.approx(-10.5)] * 2


# ----------------------------------------------------------------------------- formats
def test_markdown_latex_and_csv_show_the_numbers(pairs: Path, capsys) -> None:
    assert sst_table([str(pairs), "--compare", "method=rigl,srigl"]) == 0
    out = unpadded(capsys.readouterr().out)
    assert "| srigl - rigl | 95% CI | resolved |" in out
    assert "| digits | mlp | 90% | none | 91.00 ± 1.00 (n=3) |" in out
    assert "| 3 | +1.50 | [0.26, 2.74] | yes | paired t | - |" in out
    assert "seed 3 not used, rigl finished / srigl unfinished" in out
    assert "1 run(s) without a partner, not used" in out and "ESTIMATE" in out

    assert sst_table([str(pairs), "--compare", "method=rigl,srigl", "--format", "latex"]) == 0
    out = unpadded(capsys.readouterr().out)
    assert "\\toprule" in out and "91.00 $\\pm$ 1.00 (n=3) &" in out
    assert "& +1.50 & [0.26, 2.74] & yes & paired t & - \\\\" in out

    assert sst_table([str(pairs), "--compare", "method=rigl,srigl", "--format", "csv"]) == 0
    captured = capsys.readouterr()
    (header, line) = list(csv.reader(io.StringIO(captured.out)))
    row = dict(zip(header, line, strict=True))
    half = T975[2] * 0.5 / math.sqrt(3)
    assert (row["a"], row["b"], row["n_pairs"], row["paired"]) == ("rigl", "srigl", "3", "True")
    assert float(row["mean_diff"]) == pytest.approx(1.5)
    assert float(row["ci95_low"]) == pytest.approx(1.5 - half)
    assert float(row["ci95_high"]) == pytest.approx(1.5 + half)
    assert (row["resolved"], row["seeds_needed_estimate"], row["sparsity"]) == ("True", "", "0.9")
    assert "did not finish" in captured.err


def test_unresolved_rows_show_the_estimate(tmp_path: Path, capsys) -> None:
    root = tmp_path / "runs"
    for seed, (a, b) in enumerate([(90.0, 90.0), (90.0, 92.0), (90.0, 94.0)]):
        make_run(root, method="rigl", seed=seed, acc=a)
        make_run(root, method="srigl", seed=seed, acc=b)
    assert sst_table([str(root), "--compare", "method=rigl,srigl"]) == 0
    out = unpadded(capsys.readouterr().out)
    half = T975[2] * 2 / math.sqrt(3)  # differences 0, 2, 4: mean 2, sd 2 -> 10 seeds
    assert f"| +2.00 | [{2 - half:.2f}, {2 + half:.2f}] | no | paired t | 10 |" in out


# ----------------------------------------------------------------------------- the figure
def test_accuracy_figure_with_confidence_bands(tmp_path: Path) -> None:
    assert plots.band_half_width(Stat(91.0, 1.0, 3)) == 1.0
    assert plots.band_half_width(Stat(91.0, 1.0, 3), ci=True) == pytest.approx(
        T975[2] / math.sqrt(3)
    )
    assert plots.band_half_width(Stat(91.0, None, 1), ci=True) == 0.0
    root = tmp_path / "runs"
    for method, base in (("rigl", 90.0), ("srigl", 89.0)):
        for density in (0.1, 0.01):
            for seed in range(3):
                make_run(root, method=method, density=density, seed=seed, acc=base - seed)
    groups = aggregate(collect([root]).runs)
    fig = plots.accuracy_vs_sparsity(groups, ci=True)
    ax = fig.axes[0]
    assert "95% CI" in ax.get_legend().get_title().get_text()
    bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
    band = bands[0].get_paths()[0].vertices[:, 1]  # the first series' (RigL's) band
    half = T975[2] * 1.0 / math.sqrt(3)  # accuracies base, base-1, base-2: sd 1
    assert band.max() == pytest.approx(89.0 + half) and band.min() == pytest.approx(89.0 - half)
    out = tmp_path / "fig" / "acc"
    assert sst_plot(["accuracy", str(root), "--ci", "-o", str(out)]) == 0
    assert out.with_suffix(".png").stat().st_size > 5000
