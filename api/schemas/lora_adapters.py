"""Bodies of vLLM's runtime LoRA endpoints (`/v1/load_lora_adapter`, `/v1/unload_lora_adapter`).

`model` is ours: which served model the adapter belongs to, needed only when
more than one is served. `lora_int_id` is vLLM's and accepted unused (adapters
are known by name here).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class LoadLoRAAdapterRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")  # as vLLM: unknown fields are ignored

    lora_name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:/@+-]*$")
    lora_path: str = Field(min_length=1)
    # Replace an adapter of this name loaded at run time (its running requests finish).
    load_inplace: bool = False
    model: str | None = None


class UnloadLoRAAdapterRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")  # as vLLM: unknown fields are ignored

    lora_name: str = Field(min_length=1)
    lora_int_id: int | None = None
    model: str | None = None
