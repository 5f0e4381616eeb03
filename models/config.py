"""The ``[faces]`` config section (to be wired into GatewayConfig; not yet read by the daemon)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from gateway.types import StrictModel

# Mirrors models.faces constants without importing it, so config checks work without the vision extra.
DEFAULT_MATCH_THRESHOLD = 0.40


class FacesConfig(StrictModel):
    enabled: bool = Field(default=False, description="Run face recognition on the configured cameras.")
    threshold: float = Field(
        default=DEFAULT_MATCH_THRESHOLD, ge=0.2, le=0.95,
        description="Cosine similarity at or above which a face is an enrolled person (0.40 measured; see "
                    "models/README.md). Lower = more matches and more false matches.",
    )
    embedder: Literal["opencv", "onnxruntime"] = Field(
        default="opencv", description="Runtime for SFace; both give the same vectors, opencv is faster on x86.",
    )
    key_file: Path | None = Field(
        default=None,
        description="Gallery key (32 bytes, mode 0600). Default: the systemd credential faces-key. "
                    "The key itself never goes in this file.",
    )
    min_face_px: int = Field(default=48, ge=16, le=1000, description="Smallest face side accepted for enrolment.")
    min_sharpness: float = Field(
        default=60.0, ge=0, description="Laplacian variance of the aligned face below which enrolment is refused.",
    )
