"""Pure maths: the InfoNCE family and its helpers."""

from pairsmith.functional.infonce import InfoNCEOutput, info_nce, log_weights, nt_xent

__all__ = ["InfoNCEOutput", "info_nce", "log_weights", "nt_xent"]
