"""Drawing images: txt2img with the reference sampler names (txt2img, samplers)."""
