"""Comparing two values of one setting over seeds: paired differences, 95% confidence
intervals, and the seeds a difference would need.

``sst-table PATH --compare KEY=A,B`` (for example ``method=rigl,srigl`` or
``sparsity.gamma_sal=0,0.3``) sets the runs with ``KEY == A`` against those with ``KEY == B``
in every group (row) of the table.

**Pairing.** A run of A and a run of B form a pair when they agree in every identity setting
(``sst.runs.identity``: the result-changing settings, ``NOT_IDENTITY`` left out) but the ones
KEY itself sets, the seed included: the seed is what pairs them. The settings KEY sets are

- for ``method``, ``dataset``, ``model`` and ``distill`` (config-group options): the group's
  ``_target_``, the settings whose defaults differ between the two options' config files
  (``conf/<group>/<A>.yaml`` and ``<B>.yaml``: RigL's ``structure: unstructured`` against
  SRigL's ``constant_fanin``) and the settings of that group only one side's runs have
  (SRigL's ``gamma_sal``);
- for ``sparsity`` and ``density``: ``sparsity.density``; for ``distribution`` and
  ``structure``: ``sparsity.distribution``, ``sparsity.structure``;
- for a dotted path (``sparsity.gamma_sal``): that setting.

Any other difference (``sparsity.delta_t``, ``trainer.epochs``, ...) prevents a pair; the row
lists those settings (``differ``). A pair with one side unfinished (or without the metric) is
listed, never used.

**Paired interval** (two pairs or more). With the differences d_i = B_i - A_i of n pairs,
mean d̄ and sample standard deviation s_d (n - 1 in the denominator)::

    d̄ ± t_{0.975, n-1} · s_d / sqrt(n)

Runs left without a partner are then listed (``unpaired``) and not used.

**Welch's interval** (fewer than two pairs: seeds present on one side only). With the n_a runs
of A and n_b runs of B (both sides agreeing in every other setting), means x̄_a, x̄_b and
sample variances s_a², s_b²::

    (x̄_b - x̄_a) ± t_{0.975, df} · SE,   SE² = s_a²/n_a + s_b²/n_b,
    df = SE⁴ / ((s_a²/n_a)²/(n_a - 1) + (s_b²/n_b)²/(n_b - 1))      (Welch-Satterthwaite)

``resolved``: the interval excludes 0.

**Seeds needed (an estimate).** For an unresolved row, the smallest n >= 2 for which a true
difference equal to the observed mean would be resolved with 80% power at the 5% level, taking
the observed spread as the true one. Paired (n pairs, i.e. seeds run with both A and B)::

    t_{0.975, n-1} + t_{0.80, n-1} <= |d̄| / s_d · sqrt(n)

Welch (n seeds per side)::

    t_{0.975, df_n} + t_{0.80, df_n} <= |x̄_b - x̄_a| / sqrt((s_a² + s_b²) / n),
    df_n = (s_a² + s_b²)² (n - 1) / (s_a⁴ + s_b⁴)

This is the usual t-approximation of the power of a t test: the central t quantile
t_{0.80} stands in for the noncentral t distribution of the test statistic. For the paired
case it gives the exact noncentral-t answer at every effect |d̄| / s_d from 0.05 to 3 that
``tests/test_compare.py`` checks against ``scipy.stats.nct``; the normal approximation
n = ((z_{0.975} + z_{0.80}) · s_d / d̄)² is smaller by about two seeds. The observed spread of
a few seeds is itself uncertain, so the number is a guide, not a promise. None when there is
no spread or no difference to estimate from, or when it exceeds ``MAX_SEEDS``.

**Student's t quantiles** are computed here (scipy is not a dependency): the t distribution's
tail is P(T > t) = I_x(df/2, 1/2) / 2 with x = df / (df + t²), the regularized incomplete beta
function evaluated by its continued fraction (modified Lentz), inverted by Newton's method
kept inside a bisection bracket; the relative error stays below 1e-12 up to 10^5 degrees of
freedom (``tests/test_compare.py`` checks closed forms, a printed table and ``scipy.stats``).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .results import (
    CHOICE_GROUPS,
    METRICS,
    Run,
    Stat,
    identity_settings,
    mixed_settings,
    same_value,
    sort_key,
)

LEVEL = 0.95
POWER = 0.80
MAX_SEEDS = 10_000
COMPARE_FORM = "--compare must be KEY=A,B with two different values, e.g. method=rigl,srigl"
# keys computed from one setting: the settings they set, and the keys they move with
_SETTING_KEYS = {
    "sparsity": ("sparsity.density", ("sparsity", "density")),
    "density": ("sparsity.density", ("sparsity", "density")),
    "distribution": ("sparsity.distribution", ("distribution",)),
    "structure": ("sparsity.structure", ("structure",)),
}


# ----------------------------------------------------------------------------- Student's t
def _beta_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of I_x(a, b) (Numerical Recipes' ``betacf``, modified Lentz)."""
    tiny, eps = 1e-300, 1e-15
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 100_000):
        for aa in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < eps:
            return h
    raise ArithmeticError(f"incomplete beta fraction did not converge (a={a}, b={b}, x={x})")


def _log_gamma_ratio(a: float, b: float) -> float:
    """log Γ(a + b) - log Γ(a) for a >= b > 0 without the cancellation of two large
    ``lgamma``: for a > 20, Stirling's series, (a - 1/2) log1p(b/a) + b log(a + b) - b +
    S(a + b) - S(a) with S(z) = 1/(12z) - 1/(360z³) + 1/(1260z⁵) - 1/(1680z⁷) + 1/(1188z⁹)
    (the terms left out change the result by less than 1e-16)."""
    if a <= 20:
        return math.lgamma(a + b) - math.lgamma(a)

    def series(z: float) -> float:
        w = 1 / (z * z)
        return (1 / 12 - w * (1 / 360 - w * (1 / 1260 - w * (1 / 1680 - w / 1188)))) / z

    return (a - 0.5) * math.log1p(b / a) + b * math.log(a + b) - b + series(a + b) - series(a)


def _beta(a: float, b: float, x: float, y: float) -> float:
    """I_x(a, b) with y = 1 - x given apart (so that x near 1 keeps its precision)."""
    if x <= 0.0:
        return 0.0
    if y <= 0.0:
        return 1.0
    big, small = max(a, b), min(a, b)
    log_x = math.log1p(-y) if y < 0.5 else math.log(x)
    log_y = math.log1p(-x) if x < 0.5 else math.log(y)
    log_front = _log_gamma_ratio(big, small) - math.lgamma(small) + a * log_x + b * log_y
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_fraction(b, a, y) / b


def regularized_beta(x: float, a: float, b: float) -> float:
    """I_x(a, b) = B(x; a, b) / B(a, b), the regularized incomplete beta function, for
    0 <= x <= 1 and a, b > 0: x^a (1-x)^b / (a B(a, b)) times its continued fraction where
    that converges fast (x < (a + 1) / (a + b + 2)), else 1 - I_{1-x}(b, a)."""
    return _beta(a, b, x, 1.0 - x)


def t_tail(t: float, dof: float) -> float:
    """P(T > t) for Student's t with ``dof`` degrees of freedom (any real dof > 0):
    I_{df/(df+t²)}(df/2, 1/2) / 2 for t >= 0, one minus that for t < 0."""
    x, y = dof / (dof + t * t), t * t / (dof + t * t)
    half = 0.5 * _beta(dof / 2.0, 0.5, x, y)
    return half if t >= 0 else 1.0 - half


def t_pdf(t: float, dof: float) -> float:
    """Student's t density: Γ((df+1)/2) / (sqrt(df·π) Γ(df/2)) · (1 + t²/df)^(-(df+1)/2)."""
    log_norm = math.lgamma((dof + 1) / 2) - math.lgamma(dof / 2) - 0.5 * math.log(dof * math.pi)
    return math.exp(log_norm - (dof + 1) / 2 * math.log1p(t * t / dof))


def t_quantile(p: float, dof: float) -> float:
    """t_{p, df}: the t with P(T <= t) = p, for 0 < p < 1 and real df > 0. Solves
    P(T > t) = 1 - p by Newton's method (derivative -pdf) inside a bracket that bisection
    takes over whenever a Newton step leaves it; the start is the Cornish-Fisher expansion
    z + (z³ + z) / (4 df) around the normal quantile z."""
    if not 0.0 < p < 1.0 or not dof > 0:
        raise ValueError(f"t_quantile needs 0 < p < 1 and dof > 0, got p={p}, dof={dof}")
    if p < 0.5:
        return -t_quantile(1.0 - p, dof)
    if p == 0.5:
        return 0.0
    tail = 1.0 - p
    z = statistics.NormalDist().inv_cdf(p)
    t = z + (z**3 + z) / (4 * dof)
    low, high = 0.0, max(t, 1.0)
    while t_tail(high, dof) > tail:
        low, high = high, 2 * high
    t = min(max(t, low), high)
    for _ in range(200):
        excess = t_tail(t, dof) - tail  # > 0: t is too small
        if excess > 0:
            low = t
        else:
            high = t
        step = excess / max(t_pdf(t, dof), 1e-300)
        new = t + step if low < t + step < high else (low + high) / 2
        if abs(new - t) <= 1e-13 * max(1.0, abs(t)) or high - low <= 1e-13 * max(1.0, high):
            return new
        t = new
    return t


# ----------------------------------------------------------------------------- intervals
@dataclass
class Interval:
    """A difference B - A with its 95% interval (``low``, ``high``; None where it cannot be
    computed), its degrees of freedom and the spread it came from (``spread``: the standard
    deviation of the paired differences, or ``(s_a, s_b)`` for Welch)."""

    mean: float
    low: float | None
    high: float | None
    dof: float | None
    spread: Any

    @property
    def resolved(self) -> bool | None:
        """Whether the interval excludes 0 (None without an interval)."""
        if self.low is None or self.high is None:
            return None
        return self.low > 0 or self.high < 0


def paired_interval(diffs: Sequence[float], level: float = LEVEL) -> Interval:
    """d̄ ± t_{(1+level)/2, n-1} · s_d / sqrt(n) over the paired differences ``diffs``
    (no interval for one pair)."""
    n = len(diffs)
    if n == 0:
        raise ValueError("paired_interval needs at least one difference")
    mean = statistics.fmean(diffs)
    if n == 1:
        return Interval(mean, None, None, None, None)
    sd = statistics.stdev(diffs)
    half = t_quantile((1 + level) / 2, n - 1) * sd / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, float(n - 1), sd)


def welch_interval(a: Sequence[float], b: Sequence[float], level: float = LEVEL) -> Interval:
    """(x̄_b - x̄_a) ± t_{(1+level)/2, df} · SE with SE² = s_a²/n_a + s_b²/n_b and the
    Welch-Satterthwaite df (module docstring); no interval with fewer than two runs on a side,
    a zero-width one when both sides have no spread."""
    if not a or not b:
        raise ValueError("welch_interval needs runs on both sides")
    mean = statistics.fmean(b) - statistics.fmean(a)
    if len(a) < 2 or len(b) < 2:
        return Interval(mean, None, None, None, None)
    sa, sb = statistics.stdev(a), statistics.stdev(b)
    va, vb = sa * sa / len(a), sb * sb / len(b)
    se2 = va + vb
    if se2 == 0:
        return Interval(mean, mean, mean, None, (sa, sb))
    dof = se2 * se2 / (va * va / (len(a) - 1) + vb * vb / (len(b) - 1))
    half = t_quantile((1 + level) / 2, dof) * math.sqrt(se2)
    return Interval(mean, mean - half, mean + half, dof, (sa, sb))


def _smallest_n(enough: Callable[[int], bool], cap: int) -> int | None:
    """The smallest n in [2, cap] with ``enough(n)`` (``enough`` must be monotone in n)."""
    if not enough(cap):
        return None
    low, high = 2, cap
    while low < high:
        middle = (low + high) // 2
        if enough(middle):
            high = middle
        else:
            low = middle + 1
    return low


def seeds_needed_paired(
    mean: float, sd: float, *, level: float = LEVEL, power: float = POWER, cap: int = MAX_SEEDS
) -> int | None:
    """An estimate: the smallest number of pairs n >= 2 with
    t_{(1+level)/2, n-1} + t_{power, n-1} <= |mean| / sd · sqrt(n); None where ``mean`` or
    ``sd`` is 0 or n would exceed ``cap``."""
    if mean == 0 or not sd > 0:
        return None
    effect = abs(mean) / sd

    def enough(n: int) -> bool:
        dof = n - 1
        return t_quantile((1 + level) / 2, dof) + t_quantile(power, dof) <= effect * math.sqrt(n)

    return _smallest_n(enough, cap)


def seeds_needed_welch(
    mean: float,
    sd_a: float,
    sd_b: float,
    *,
    level: float = LEVEL,
    power: float = POWER,
    cap: int = MAX_SEEDS,
) -> int | None:
    """An estimate: the smallest number of seeds per side n >= 2 with
    t_{(1+level)/2, df_n} + t_{power, df_n} <= |mean| / sqrt((sd_a² + sd_b²) / n),
    df_n = (sd_a² + sd_b²)² (n - 1) / (sd_a⁴ + sd_b⁴); None where there is no difference or
    spread, or n would exceed ``cap``."""
    va, vb = sd_a * sd_a, sd_b * sd_b
    if mean == 0 or not va + vb > 0:
        return None

    def enough(n: int) -> bool:
        dof = (va + vb) ** 2 * (n - 1) / (va * va + vb * vb)
        needed = t_quantile((1 + level) / 2, dof) + t_quantile(power, dof)
        return needed <= abs(mean) / math.sqrt((va + vb) / n)

    return _smallest_n(enough, cap)


# ----------------------------------------------------------------------------- the option
@dataclass(frozen=True)
class CompareSpec:
    """``--compare KEY=A,B``: the key and its two values (read as YAML scalars)."""

    key: str
    a: Any
    b: Any


def parse_compare(text: str) -> CompareSpec:
    """``"method=rigl,srigl"`` -> ``CompareSpec("method", "rigl", "srigl")``; anything else
    (no ``=``, not two values, two equal values, the seed) raises ValueError with a one-line
    message naming the option and its form."""
    import yaml

    key, sep, values = text.partition("=")
    parts = [p.strip() for p in values.split(",")]
    key = key.strip()
    if not sep or not key or len(parts) != 2 or not all(parts):
        raise ValueError(f"{COMPARE_FORM}; got {text!r}")
    if key == "seed":
        raise ValueError(f"{COMPARE_FORM}; the seed pairs the runs, it cannot be KEY")
    try:
        a, b = (yaml.safe_load(p) for p in parts)
    except yaml.YAMLError:
        raise ValueError(f"{COMPARE_FORM}; got {text!r}") from None
    if same_value(a, b):
        raise ValueError(f"{COMPARE_FORM}; got the same value twice in {text!r}")
    return CompareSpec(key, a, b)


# ----------------------------------------------------------------------------- pairing
def _option_defaults(group: str, option: Any) -> dict[str, str] | None:
    """The flattened settings of ``conf/<group>/<option>.yaml`` (None if there is none)."""
    import yaml

    from sst.config.directory import CONFIG_DIR

    path = Path(CONFIG_DIR) / group / f"{option}.yaml"
    if not path.is_file():
        return None
    loaded = yaml.safe_load(path.read_text()) or {}
    loaded.pop("defaults", None)
    return identity_settings(Run(str(path), "", {group: loaded}))


def _side(run: Run, spec: CompareSpec) -> str | None:
    value = run.value(spec.key)
    if value is None:
        return None
    if same_value(value, spec.a):
        return "a"
    return "b" if same_value(value, spec.b) else None


def owned_settings(spec: CompareSpec, runs: Iterable[Run]) -> Callable[[str], bool]:
    """Which identity settings KEY sets (module docstring): a test on a dotted path."""
    if spec.key in _SETTING_KEYS:
        exact = {_SETTING_KEYS[spec.key][0]}
        return lambda path: path in exact
    group = CHOICE_GROUPS.get(spec.key)
    if group is None:
        return lambda path: path == spec.key or path.startswith(spec.key + ".")
    present: dict[str, set[str]] = {"a": set(), "b": set()}
    for run in runs:
        side = _side(run, spec)
        if side is not None:
            present[side] |= set(identity_settings(run))
    owned = (present["a"] ^ present["b"]) | {f"{group}._target_"}
    defaults = [_option_defaults(group, spec.a), _option_defaults(group, spec.b)]
    if defaults[0] is not None and defaults[1] is not None:
        paths = set(defaults[0]) | set(defaults[1])
        owned |= {p for p in paths if defaults[0].get(p) != defaults[1].get(p)}
    owned = {p for p in owned if p.startswith(group + ".")}
    return lambda path: path in owned


def _setting_of(key: str) -> str | None:
    """The identity setting a grouping key reads (None for the option keys and the seed)."""
    if key in _SETTING_KEYS:
        return _SETTING_KEYS[key][0]
    return key if "." in key else None


def row_keys(keys: Sequence[str], spec: CompareSpec, owned: Callable[[str], bool]) -> list[str]:
    """The table's grouping keys less KEY and the keys KEY moves (``sparsity`` with
    ``density``; a dotted path KEY sets). For an option KEY (``method``), a key reading a
    setting the option sets (``--by sparsity.gamma_sal``; ``sparsity`` for ``dense``
    against ``rigl``) stays: it splits each side into variants, and every variant of A meets
    every variant of B (``variant_keys``)."""
    moved = set(_SETTING_KEYS[spec.key][1]) if spec.key in _SETTING_KEYS else set()
    drop = {spec.key, *moved}
    if spec.key not in CHOICE_GROUPS:
        drop |= {k for k in keys if (s := _setting_of(k)) is not None and owned(s)}
    return [k for k in dict.fromkeys(keys) if k not in drop]


def variant_keys(keys: Sequence[str], spec: CompareSpec, owned: Callable[[str], bool]) -> list[str]:
    """The row keys that read a setting an option KEY sets (see ``row_keys``)."""
    if spec.key not in CHOICE_GROUPS:
        return []
    return [k for k in keys if (s := _setting_of(k)) is not None and owned(s)]


@dataclass
class Pair:
    """Runs of A and B that agree in every identity setting but KEY's, the seed included;
    ``diff`` = B - A of the metric, None when a side is unfinished or lacks the metric."""

    seed: Any
    a: Run
    b: Run
    diff: float | None = None


@dataclass
class Comparison:
    """One row: B against A in one group of the table (``key``: the group's own fields; a
    setting KEY sets and a ``--by`` names holds ``{"a": ..., "b": ...}`` when they differ)."""

    key: dict[str, Any]
    spec: CompareSpec
    metric: str
    acc_a: Stat
    acc_b: Stat
    pairs: list[Pair] = field(default_factory=list)
    unfinished: list[Pair] = field(default_factory=list)
    unpaired: list[Run] = field(default_factory=list)
    differ: list[str] = field(default_factory=list)
    mixed: list[str] = field(default_factory=list)
    interval: Interval | None = None
    paired: bool = False
    seeds_needed: int | None = None

    @property
    def n_pairs(self) -> int:
        return len(self.pairs)

    @property
    def mean_diff(self) -> float | None:
        return None if self.interval is None else self.interval.mean

    @property
    def ci95(self) -> list[float] | None:
        if self.interval is None or self.interval.low is None:
            return None
        return [self.interval.low, self.interval.high]

    @property
    def resolved(self) -> bool | None:
        return None if self.interval is None else self.interval.resolved


def metric_value(run: Run, metric: str) -> float | None:
    """The run's ``final`` or ``best`` test accuracy; None if unfinished or missing."""
    value = (run.summary or {}).get(METRICS[metric]) if run.finished else None
    if value is None or not math.isfinite(float(value)):
        return None
    return float(value)


def _cell(run: Run, owned: Callable[[str], bool]) -> tuple:
    """The run's identity settings but KEY's (the seed is not among them)."""
    return tuple(sorted((p, v) for p, v in identity_settings(run).items() if not owned(p)))


def _differ(cells_a: set[tuple], cells_b: set[tuple]) -> list[str]:
    """The settings whose values on the A side are not those on the B side."""
    values: dict[str, list[set[str]]] = {}
    for i, cells in enumerate((cells_a, cells_b)):
        for cell in cells:
            for path, value in cell:
                values.setdefault(path, [set(), set()])[i].add(value)
    return sorted(p for p, (a, b) in values.items() if a != b)


def _match(
    runs_a: Sequence[Run], runs_b: Sequence[Run], metric: str, owned: Callable[[str], bool]
) -> tuple[list[Pair], list[Pair], set[int]]:
    """Pairs (one run per side with the same settings but KEY's and the same seed, both with
    the metric), pairs with a side unfinished, and the ids of the runs in either."""
    sides: list[dict[tuple, list[Run]]] = [{}, {}]
    for side, runs in zip(sides, (runs_a, runs_b), strict=True):
        for run in runs:
            side.setdefault((_cell(run, owned), repr(run.value("seed"))), []).append(run)
    pairs, unfinished = [], []
    for key in sides[0].keys() & sides[1].keys():
        if len(sides[0][key]) != 1 or len(sides[1][key]) != 1:
            continue  # a seed repeated on a side: flagged in ``mixed``, not paired
        a, b = sides[0][key][0], sides[1][key][0]
        va, vb = metric_value(a, metric), metric_value(b, metric)
        if va is None or vb is None:
            unfinished.append(Pair(a.value("seed"), a, b))
        else:
            pairs.append(Pair(a.value("seed"), a, b, vb - va))
    order = lambda p: sort_key(p.seed)  # noqa: E731
    used = {id(r) for p in pairs + unfinished for r in (p.a, p.b)}
    return sorted(pairs, key=order), sorted(unfinished, key=order), used


def compare_row(
    key: dict[str, Any],
    runs_a: Sequence[Run],
    runs_b: Sequence[Run],
    spec: CompareSpec,
    metric: str,
    owned: Callable[[str], bool],
) -> Comparison:
    """B against A over one row's runs (finished or not): the paired interval from two
    pairs on, else Welch's over the finished runs whose settings the other side shares."""
    pairs, unfinished, used = _match(runs_a, runs_b, metric, owned)
    held = {id(r) for p in unfinished for r in (p.a, p.b)}
    done_a = [r for r in runs_a if metric_value(r, metric) is not None and id(r) not in held]
    done_b = [r for r in runs_b if metric_value(r, metric) is not None and id(r) not in held]
    cells_a = {_cell(r, owned) for r in done_a}
    cells_b = {_cell(r, owned) for r in done_b}
    row = Comparison(
        key=key,
        spec=spec,
        metric=metric,
        acc_a=Stat.of([metric_value(r, metric) for r in done_a]),
        acc_b=Stat.of([metric_value(r, metric) for r in done_b]),
        pairs=pairs,
        unfinished=unfinished,
        unpaired=[r for r in done_a + done_b if id(r) not in used],
        differ=_differ(cells_a, cells_b) if cells_a != cells_b and cells_a and cells_b else [],
        mixed=sorted(set(mixed_settings(done_a)) | set(mixed_settings(done_b))),
    )
    if len(pairs) >= 2:
        row.paired = True
        row.interval = paired_interval([p.diff for p in pairs])
        if row.interval.resolved is False:
            row.seeds_needed = seeds_needed_paired(row.interval.mean, row.interval.spread)
        return row
    shared = cells_a & cells_b
    sample_a = [metric_value(r, metric) for r in done_a if _cell(r, owned) in shared]
    sample_b = [metric_value(r, metric) for r in done_b if _cell(r, owned) in shared]
    if sample_a and sample_b:
        row.interval = welch_interval(sample_a, sample_b)
        if row.interval.resolved is False:
            row.seeds_needed = seeds_needed_welch(row.interval.mean, *row.interval.spread)
    return row


def _hashable(value: Any) -> Any:
    """A list-valued setting (``sparsity.layer_types``) as a tuple, so that it can key a row."""
    if isinstance(value, list):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _hashable(v)) for k, v in value.items()))
    return value


def _listed(value: Any) -> Any:
    """``_hashable``'s tuples as lists again, for the table."""
    return [_listed(v) for v in value] if isinstance(value, tuple) else value


def _rows(
    runs: Iterable[Run], spec: CompareSpec, shared: Sequence[str], variants: Sequence[str]
) -> dict[tuple, dict[str, dict[tuple, list[Run]]]]:
    """Runs of A and B by the values of the shared row keys, then by their variant keys."""
    rows: dict[tuple, dict[str, dict[tuple, list[Run]]]] = {}
    for run in runs:
        side = _side(run, spec)
        if side is None:
            continue
        where = tuple(_hashable(run.value(k)) for k in shared)
        variant = tuple(_hashable(run.value(k)) for k in variants)
        sides = rows.setdefault(where, {"a": {}, "b": {}})
        sides[side].setdefault(variant, []).append(run)
    return rows


def compare(
    runs: Sequence[Run],
    spec: CompareSpec,
    keys: Sequence[str],
    *,
    metric: str = "final",
    problems: Sequence[Run] = (),
) -> list[Comparison]:
    """One ``Comparison`` per group of ``keys`` (less KEY, see ``row_keys``) that has runs of
    A or B; ``runs`` are finished runs, ``problems`` unfinished ones (listed in their pairs,
    never used)."""
    if metric not in METRICS:
        raise ValueError(f"metric={metric!r} is unknown: allowed values are {sorted(METRICS)}")
    everything = [*runs, *(p for p in problems if p.config)]
    owned = owned_settings(spec, everything)
    keys = row_keys(keys, spec, owned)
    variants = variant_keys(keys, spec, owned)
    shared = [k for k in keys if k not in variants]
    found = []
    for where, sides in _rows(everything, spec, shared, variants).items():
        for va, runs_a in (sides["a"] or {(None,) * len(variants): []}).items():
            for vb, runs_b in (sides["b"] or {(None,) * len(variants): []}).items():
                key = {k: _listed(v) for k, v in zip(shared, where, strict=True)}
                for k, x, y in zip(variants, map(_listed, va), map(_listed, vb), strict=True):
                    key[k] = x if same_value(x, y) else {"a": x, "b": y}
                key = {k: key[k] for k in keys}
                found.append(compare_row(key, runs_a, runs_b, spec, metric, owned))
    return sorted(found, key=lambda c: tuple(_order(c.key[k]) for k in keys))


def _order(value: Any) -> tuple:
    if isinstance(value, dict):
        return (*sort_key(value["a"]), *sort_key(value["b"]))
    return sort_key(value)
