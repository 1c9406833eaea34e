"""Studies over finished runs: results (gathered from run folders or W&B), the published
tables, tables and figures, and the ``sst-table``, ``sst-plot`` and ``sst-sweep`` commands.
Reads ``sst.runs`` and ``sst.config``; never imports the training stack."""
