"""Model loading (HF dirs, GGUF, bundled packages, import paths) and standardized names."""
