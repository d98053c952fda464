"""The cursor of a management list page (engage.listing), shared by the lists' response models."""
from __future__ import annotations

from pydantic import BaseModel, Field


class ListCursor(BaseModel):
    has_more: bool = Field(description="true when another page follows")
    next: str = Field(description="pass as `next` for the following page (empty on the last)")
    limit: int
