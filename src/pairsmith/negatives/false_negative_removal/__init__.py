"""False-negative removal (survey 4.2): FNC, DCL, ..."""
