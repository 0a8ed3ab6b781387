"""The lowest layer: torch.func primitives (func), per-layer gradient factors (factors), the gradient cache
(cache), torch.distributed sharding (distributed) and the gradient engine every method runs on (grads)."""
