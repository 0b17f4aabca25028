"""`fedvox compare`: every aggregation scheme against local-only and pooled training on
synthetic non-IID CT scenarios (or the user's own sites), through the real server and clients.

- :mod:`fedvox.compare.scenarios`: the scenarios' sites, and the pooled site
- :mod:`fedvox.compare.arms`: running each arm (a federation, local-only, pooled) with resume
- :mod:`fedvox.compare.evaluate`: each arm's final model on every site's test split
- :mod:`fedvox.compare.aggregate`: mean, std, winners and ratios across seeds
- :mod:`fedvox.compare.outputs` and :mod:`fedvox.compare.plots`: what lands under `--out`
"""
