"""Hard negative selection (survey 4.1): HCL, MoCHi, ..."""
