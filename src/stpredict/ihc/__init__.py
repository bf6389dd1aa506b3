"""IHC of adjacent sections: registration to the H&E, per-spot protein measures, correlation.

Modules: ``plan`` (parse time), ``register``, ``quantify``, ``correlate``; figures in
:mod:`stpredict.plot.ihc`, rules in ``workflow/rules/ihc.smk``.
"""
