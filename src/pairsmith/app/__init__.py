"""The training application: YAML configs, a Lightning trainer around a Method, the CLI.

Sits on top of the library (which never imports it); Lightning, kornia, PyYAML and matplotlib
are needed here only (``pip install 'pairsmith[train]'``). Entry point: ``pairsmith`` =
:func:`pairsmith.app.cli.main`.

Modules:
    config: typed sections, YAML files and ``key.sub=value`` overrides.
    datamodule: in-memory splits and the deterministic sharded batch sampler.
    module: the LightningModule and the builders of backbone, method and views.
    callbacks: online kNN, step timing.
    train: ``pairsmith train``; evaluate: kNN / linear probe / baselines; report: plots.
"""
