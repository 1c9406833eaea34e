"""Run records: metrics.jsonl on resume, FLOP accounting of attention."""

import json

import torch
from torch import nn

from sst.runs.runlog import RunLog
from sst.sparsity.flops import weight_layer_macs


def test_truncate_after_drops_later_records_and_a_torn_line(tmp_path):
    log = RunLog(tmp_path, config={}, kind="none")
    for step in (10, 20, 30):
        log.log({"train/loss": 1.0 / step}, step=step, epoch=step / 10)
    with open(log.metrics_path, "a") as handle:
        handle.write('{"step": 40, "train/lo')  # a hard kill mid-write
    log.truncate_after(20)
    steps = [json.loads(line)["step"] for line in log.metrics_path.read_text().splitlines()]
    assert steps == [10, 20]


def test_attention_projections_are_counted_also_when_called_with_keywords():
    class Attend(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
            self.fc = nn.Linear(16, 3)

        def forward(self, x):
            y, _ = self.attn(query=x, key=x, value=x)
            return self.fc(y.mean(1))

    macs = weight_layer_macs(Attend(), torch.zeros(2, 5, 16))
    # 5 tokens per sample through the 48x16 packed q/k/v and the 16x16 output projection
    assert macs == {"attn.in_proj_weight": 5 * 48 * 16, "attn.out_proj": 5 * 16 * 16, "fc": 48}
