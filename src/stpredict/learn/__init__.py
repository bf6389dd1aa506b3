"""Stage 3, learning: targets, splits, models, augmentation, training, prediction and the per-fold jobs (rules in workflow/rules/learn.smk)."""
