"""Labeling a dataset (issue #19): batch pre-labeling into a resumable manifest, and export.

`medagentseg label INPUT --target NAME [--prompts FILE] [--workers N] --out DIR` and
`medagentseg export DIR --format seg.nrrd|nifti|csv`; see `batch`, `manifest`, `export`.
"""
