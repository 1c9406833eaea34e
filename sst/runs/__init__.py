"""The run folder's format: what a run writes and how everything after training reads it.

- ``folder``: the layout (``RunFolder``, file names, status) and ``finished_summary``;
- ``identity``: which settings make two runs the same run, and the folder's name;
- ``checkpoint``: atomic checkpoint files with the ``prev.pt`` fallback;
- ``load``: ``load_run``, a trained model rebuilt from its folder alone;
- ``runlog``: ``metrics.jsonl``, ``summary.json`` and the W&B run;
- ``lock``: the lock held while a process trains in a folder;
- ``jsonl``, ``wandb_file``: the readers of the JSON-lines and W&B files.
"""

from .folder import RunFolder, finished_summary
from .load import LoadedRun, load_run

__all__ = ["LoadedRun", "RunFolder", "finished_summary", "load_run"]
