"""Deterministic demo-cohort generator (true file formats, planted morphology-expression link)."""

from __future__ import annotations

from stpredict.demo.cohort import demo_outputs, demo_sheet, demo_slides, make_demo

__all__ = ["make_demo", "demo_sheet", "demo_outputs", "demo_slides"]
