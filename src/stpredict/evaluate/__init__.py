"""Stage 4, evaluation: metrics, OLS, baselines, nuclear features, latent space and attributions (rules in workflow/rules/evaluate.smk)."""
