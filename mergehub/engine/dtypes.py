"""The safetensors dtype table and conversions to torch."""

import torch

from .errors import ConfigError

# safetensors header dtype -> (torch dtype, bytes per element)
SAFETENSORS_DTYPES: dict[str, tuple[torch.dtype, int]] = {
    "F64": (torch.float64, 8),
    "F32": (torch.float32, 4),
    "F16": (torch.float16, 2),
    "BF16": (torch.bfloat16, 2),
    "I64": (torch.int64, 8),
    "I32": (torch.int32, 4),
    "I16": (torch.int16, 2),
    "I8": (torch.int8, 1),
    "U8": (torch.uint8, 1),
    "BOOL": (torch.bool, 1),
}

TORCH_TO_SAFETENSORS = {t: name for name, (t, _) in SAFETENSORS_DTYPES.items()}

# Names accepted in configs (mergekit spelling and short forms).
CONFIG_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float64": torch.float64, "fp64": torch.float64,
}

CONFIG_NAME = {torch.float32: "float32", torch.float16: "float16",
               torch.bfloat16: "bfloat16", torch.float64: "float64"}


def element_size(st_dtype: str) -> int:
    return SAFETENSORS_DTYPES[st_dtype][1]


def torch_dtype(st_dtype: str) -> torch.dtype:
    return SAFETENSORS_DTYPES[st_dtype][0]


def parse_config_dtype(name: str | None, what: str = "dtype") -> torch.dtype | None:
    if name is None:
        return None
    try:
        return CONFIG_DTYPES[str(name).lower()]
    except KeyError:
        known = ", ".join(sorted({"float32", "float16", "bfloat16", "float64"}))
        raise ConfigError(f"unknown {what} {name!r}: use one of {known}") from None


def is_float(st_dtype: str) -> bool:
    return st_dtype in ("F64", "F32", "F16", "BF16")
