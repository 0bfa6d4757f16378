"""Weight conversion between our models and diffusers / transformers (safetensors only)."""
