"""The command-line tools people run every day, each installed as a console script by ``pip install -e .``:

=====================  ==========================================  ============================
console script         module                                      what it does
=====================  ==========================================  ============================
``lit-imit``           :mod:`lit_imit.cli`                         fit / validate / test (LightningCLI)
``lit-imit-record``    :mod:`lit_imit.tools.record_demos`          record teacher or robot demos
``lit-imit-visualize`` :mod:`lit_imit.tools.visualize_episodes`    plot and film recorded episodes
``lit-imit-import``    :mod:`lit_imit.tools.import_episodes`       copy original-ACT episodes into a store
``lit-imit-convert``   :mod:`lit_imit.tools.convert`               LeRobot datasets in and out, robomimic in
``lit-imit-export``    :mod:`lit_imit.tools.export_policy`         checkpoint -> policy directory
``lit-imit-deploy``    :mod:`lit_imit.tools.deploy`                run a policy on the twin or the arm
``lit-imit-reproduce`` :mod:`lit_imit.tools.reproduce`             run recipes, append results rows
``lit-imit-benchmark`` :mod:`lit_imit.tools.benchmark`             throughput rows
=====================  ==========================================  ============================

Each ``scripts/<module>.py`` in a checkout runs the same ``main``. The logic each tool drives lives in the
library (``lit_imit.data``, ``lit_imit.policies``, ``lit_imit.recipes``, ...); these modules parse arguments
and report errors.
"""
