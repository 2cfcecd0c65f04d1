"""The training engine behind the entry scripts: entry scripts -> engine -> dataset, network, utils.

- ``cli``: the command line, validation before anything is written, one process or many;
- ``launch``: ``--nproc-per-node`` through torch.distributed's elastic launcher;
- ``config``: the strict YAML schema and overrides;
- ``data``: the dataset registry, datasets of a config, loaders;
- ``run``: the ``Run`` (networks, prototypes, optimiser) built from a config;
- ``checkpoints``: the checkpoint of a run, and trained checkpoints for the tools (ours or
  the paper code's);
- ``resume``: the resume policy (which keys may change), its refusals;
- ``step``: the method, one training step;
- ``loop``: the training loop, stop requests, metrics, evaluation schedule, final report;
- ``evaluation``: confusion matrix and the validation protocols.
"""
