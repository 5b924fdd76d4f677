"""Repo-root shim so `from metrics import f1_score` works as in the published FLIP README.

The implementation lives in open_instruct/f1.py; this file only re-exports it.
"""

from open_instruct.f1 import f1_score, normalize_answer

__all__ = ["f1_score", "normalize_answer"]
