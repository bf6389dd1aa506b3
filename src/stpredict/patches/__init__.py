"""Stage 2, patches: crop geometry, the patch stores and spot QC (rules in workflow/rules/patches.smk)."""
