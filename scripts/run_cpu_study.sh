#!/usr/bin/env bash
# The CPU study in one command: train every cell of experiment=cpu_study_digits (Static, SET,
# RigL, SRigL at 90/95/99% sparsity, 3 seeds), SRigL without ablation (gamma_sal 0), the
# pruning methods (GMP, one-shot, targeted dropout, LR rewinding) and the dense baseline, then
# write the tables to docs/study.md and the figures to docs/figures/.
# With CIFAR=1 it also runs experiment=cpu_study_cifar10 (ResNet-8 on a 5,000-image subset of
# the CIFAR-10 JPEG copy in $SST_CIFAR10_JPEG, a folder or the .tar.gz) with SRigL without
# ablation, GMP and dense, and adds its table and figure.
# Finished runs are skipped and interrupted ones resume, so it can be rerun at any time.
#   scripts/run_cpu_study.sh                 # OUT=outputs/cpu_study JOBS=2 by default
#   CIFAR=1 SST_CIFAR10_JPEG=/data/cifar10-jpeg.tar.gz scripts/run_cpu_study.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-outputs/cpu_study}
JOBS=${JOBS:-2}
RUNS="$OUT/runs"
DENSITIES=sparsity.density=0.1,0.05,0.01

grid() {  # one multirun of preset $1; the preset's sweep gives the densities and seeds
  sst-train -m "experiment=$1" "output_dir=$OUT" trainer.progress_bar=false logger=none \
    launcher=joblib "hydra.launcher.n_jobs=$JOBS" "${@:2}"
}

start=$SECONDS
grid cpu_study_digits                                        # Static, SET, RigL, SRigL
grid cpu_study_digits sparsity=srigl sparsity.gamma_sal=0 "$DENSITIES"
grid cpu_study_digits sparsity=gmp,oneshot,targeted_dropout,lr_rewinding "$DENSITIES"
grid cpu_study_digits sparsity=dense sparsity.density=1.0
echo "digits: $((SECONDS - start)) s" >&2
if [[ "${CIFAR:-0}" == 1 ]]; then
  grid cpu_study_cifar10                                     # Static, SET, RigL, SRigL
  grid cpu_study_cifar10 sparsity=srigl sparsity.gamma_sal=0 "$DENSITIES"
  grid cpu_study_cifar10 sparsity=gmp "$DENSITIES"
  grid cpu_study_cifar10 sparsity=dense sparsity.density=1.0
  echo "digits and CIFAR-10: $((SECONDS - start)) s" >&2
fi

mkdir -p docs/figures
datasets=(digits)
[[ "${CIFAR:-0}" == 1 ]] && datasets+=(cifar10_jpeg)
page=$(mktemp docs/.study.md.XXXXXX)  # docs/study.md is replaced only once the page is whole
trap 'rm -f "$page"' EXIT
{
  echo "<!-- written by scripts/run_cpu_study.sh from the runs in $RUNS; text: docs/study_notes.md -->"
  cat docs/study_notes.md
  for data in "${datasets[@]}"; do
    figure="docs/figures/study_${data}"
    sst-plot accuracy "$RUNS" --where "dataset=$data" --by sparsity.gamma_sal -o "$figure" --formats png >&2
    echo
    echo "## $data: \`sst-table $RUNS --where dataset=$data --by sparsity.gamma_sal\`"
    echo
    sst-table "$RUNS" --where "dataset=$data" --by sparsity.gamma_sal
    echo
    echo "![accuracy vs sparsity on $data](figures/study_${data}.png)"
    # the comparisons the study's text makes, stated by the tool (paired over seeds)
    compare() {  # heading, then sst-table's comparison over this data set's runs
      echo
      echo "### $data: \`sst-table $RUNS --where dataset=$data $*\`"
      echo
      sst-table "$RUNS" --where "dataset=$data" "$@"
    }
    compare --by sparsity.gamma_sal --compare method=rigl,srigl
    compare --compare sparsity.gamma_sal=0,0.3
    compare --compare method=dense,srigl
  done
  # SRigL's neuron ablation at 99% sparsity: one run's active neurons and mask
  run_99=$(python - "$RUNS" <<'PY'
import sys
from sst.study.results import collect
for run in collect([sys.argv[1]]).runs:
    cell = [run.value(k) for k in ("dataset", "method", "density", "sparsity.gamma_sal", "seed")]
    if cell == ["digits", "srigl", 0.01, 0.3, 0]:
        print(run.source)
PY
)
  sst-plot neurons "$run_99" -o docs/figures/study_neurons_srigl99 --formats png >&2
  sst-plot mask "$run_99" --layer 3 -o docs/figures/study_mask_srigl99 --formats png >&2
  echo
  echo "## SRigL at 99% sparsity on digits, seed 0: active neurons and the mask of layer 3"
  echo
  echo "![active neurons](figures/study_neurons_srigl99.png)"
  echo "![mask of layer 3](figures/study_mask_srigl99.png)"
} > "$page"
chmod 644 "$page"  # mktemp makes it private
mv "$page" docs/study.md
echo "wrote docs/study.md and docs/figures/"
