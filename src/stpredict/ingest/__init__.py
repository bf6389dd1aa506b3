"""Stage 1, reading: raw Space Ranger / legacy ST files and images into one section AnnData (rules in workflow/rules/ingest.smk)."""
