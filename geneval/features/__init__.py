"""TF-Inception features: the network (inception), preprocessing modes (resize), batched extraction (extract)."""
