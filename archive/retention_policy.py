"""storage.retention as a value: read by the configuration while the settings load, so it
imports nothing of Django's models (archive.retention applies it)."""

from dataclasses import dataclass

MODES = ("recycle", "refuse")


@dataclass(frozen=True)
class RetentionPolicy:
    """storage.retention: at least one of max_bytes and max_age_days, and a mode."""

    max_bytes: int | None = None
    max_age_days: float | None = None
    mode: str = "recycle"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode {self.mode!r}: use recycle or refuse")
        if self.max_bytes is None and self.max_age_days is None:
            raise ValueError("set max_bytes, max_age_days or both")
        if self.max_bytes is not None and self.max_bytes <= 0:
            raise ValueError(f"max_bytes {self.max_bytes}: must be positive")
        if self.max_age_days is not None and self.max_age_days <= 0:
            raise ValueError(f"max_age_days {self.max_age_days}: must be positive")
