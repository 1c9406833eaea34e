"""From a composed config to a trained run: ``run`` (finished? -> teacher first -> lock ->
build -> fit -> summary), ``build`` (config -> objects -> ``Loop``), the teacher plan, and
the device and batch placement of a run."""
