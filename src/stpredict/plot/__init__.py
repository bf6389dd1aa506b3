"""Figures of every stage: one style module, then QC, maps, scores and latent-space figures.

Every figure is written to a file (the Agg backend, selected here before any submodule imports
pyplot); the rules of each stage call the ``plot_*`` function of its figure.
"""

import matplotlib

matplotlib.use("Agg")
