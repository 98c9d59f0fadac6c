"""The evaluation protocols and distance precisions by name: one definition, importable without torch (the CLI's
choices come from here)."""

PROTOCOLS = ("market", "ltcc-general", "ltcc-cc", "ltcc-sc", "prcc", "celeb", "cuhk03")
PRECISIONS = ("fp32", "bf16", "fp16")
