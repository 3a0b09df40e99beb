"""Stable Diffusion models: the loaded model (sd_model), loading checkpoints and folders (loading, sdxl_loading,
checkpoint_convert, hash_cache), the embedded demo, SDXL conditioning inputs, and weight precision."""
