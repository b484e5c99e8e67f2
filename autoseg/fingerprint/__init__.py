"""fingerprint stage: per-case and per-channel statistics -> fingerprint.json."""
from autoseg.fingerprint.fingerprint import (
    CaseFingerprint,
    ChannelIntensity,
    Fingerprint,
    compute_fingerprint,
)

__all__ = ["CaseFingerprint", "ChannelIntensity", "Fingerprint", "compute_fingerprint"]
