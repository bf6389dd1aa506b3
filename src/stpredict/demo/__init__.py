"""Deterministic demo-cohort generator (true file formats, planted morphology-expression link)."""

from __future__ import annotations

__all__: list[str] = []
